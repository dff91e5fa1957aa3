"""`circuitshift circuit select|evaluate|curve`: circuits from scores, and how good they are.

    circuitshift circuit select SCORES.json --top-frac 0.05 [--level head] --out CIRCUIT.json
    circuitshift circuit evaluate --model PATH --data DATA --circuit CIRCUIT.json
    circuitshift circuit curve --model PATH --data DATA SCORES.json [--fracs 0.01,0.02,...]

Circuits are written as EAP-IG graph JSON (hannamw/EAP-IG ``Graph.to_json``; head level: the paper's
collapsed in-graph-only files), so ``circuitshift import eap-json`` and other tools read them.

analysis/ (torch) is imported inside each command, so `circuitshift circuit --help` stays light.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click

from analysis.errors import UserError, read_json_file
from ingest.output import rows_table

_METHOD_OPTIONS = {"top_frac": "--top-frac", "top_n": "--top-n", "threshold": "--threshold",
                   "percentile": "--percentile", "greedy": "--greedy"}


@click.group("circuit")
def circuit():
    """Select circuits from edge scores and evaluate them (faithfulness, accuracy)."""


def _read_scores(path: Path):
    """A `circuitshift score` document, a plain {edge: score} object, or an EAP-IG graph JSON
    (its scores; re-thresholding a full hannamw file or a union circuit)."""
    from analysis.graph import GraphSpec

    doc = read_json_file(path, "scores file")
    if not isinstance(doc, dict):
        raise UserError(f"{path}: expected a JSON object")
    if isinstance(doc.get("cfg"), dict) and isinstance(doc.get("edges"), dict):
        from analysis.eap_json import read_graph  # the one EAP-IG graph reader

        g = read_graph(path, what="scores file")
        return dict(zip(g.names, g.scores)), g.spec, {"source": str(path), "format": "eap-ig-json"}
    if isinstance(doc.get("scores"), dict):
        g = doc.get("graph")
        if not isinstance(g, dict):
            raise UserError(f"{path}: the scores file has no 'graph' shape (n_layers, n_heads, parallel_attn_mlp)")
        try:
            kv = g.get("n_kv_heads")  # grouped-query attention (SmolLM2, Llama 3): k/v edges per kv-head
            spec = GraphSpec(int(g["n_layers"]), int(g["n_heads"]), bool(g["parallel_attn_mlp"]),
                             None if kv is None else int(kv))
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{path}: malformed 'graph' shape") from None
        return doc["scores"], spec, {"source": str(path), **(doc.get("provenance") or {})}
    raise UserError(f"{path}: expected a `circuitshift score` file ({{'graph', 'scores'}}) or EAP-IG graph JSON")


@circuit.command("select")
@click.argument("scores_path", metavar="SCORES.json", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--top-frac", type=float, default=None, help="Keep the top fraction of all edges by |score| "
              "(the paper: 0.05). Default when no method is given.")
@click.option("--top-n", type=int, default=None, help="Keep the n edges of largest |score|.")
@click.option("--threshold", type=float, default=None, help="Keep every edge with |score| >= T.")
@click.option("--percentile", type=float, default=None, help="Keep |score| >= the P-th percentile (95 = top 5%).")
@click.option("--greedy", type=int, default=None, help="hannamw apply_greedy with n edges, grown from the logits.")
@click.option("--level", type=click.Choice(["qkv", "head"]), default="qkv", show_default=True,
              help="head: collapse q/k/v edges of a head into one (scores summed), as the paper's files.")
@click.option("--no-prune", is_flag=True, help="Keep dead nodes (no parent or no child) and their edges.")
@click.option("--signed", is_flag=True, help="Rank by signed score instead of |score|.")
@click.option("--out", "out_path", required=True, type=click.Path(path_type=Path), help="Output CIRCUIT.json.")
def select(scores_path, top_frac, top_n, threshold, percentile, greedy, level, no_prune, signed, out_path):
    """Turn SCORES.json (from `circuitshift score`, or an EAP-IG graph JSON) into a circuit file."""
    from analysis.circuit import collapse, select_circuit, to_eap_json

    given = {m: v for m, v in (("top_frac", top_frac), ("top_n", top_n), ("threshold", threshold),
                               ("percentile", percentile), ("greedy", greedy)) if v is not None}
    if len(given) > 1:
        raise UserError("give one selection method, not " + " and ".join(_METHOD_OPTIONS[m] for m in given))
    method, value = next(iter(given.items())) if given else ("top_frac", 0.05)
    scores, spec, prov = _read_scores(scores_path)
    c = select_circuit(scores, spec, method, value, prune=not no_prune, absolute=not signed)
    if not c.edges:
        raise UserError(f"the circuit is empty after pruning ({c.meta['selected_edges']} edges selected, none "
                        "on a path from input to logits); select more edges or use --no-prune")
    meta = {**c.meta, "scores": {k: prov.get(k) for k in ("source", "model", "data", "data_hash", "code_version")
                                 if prov.get(k) is not None}}
    c = dataclasses.replace(c, meta=meta)
    if level == "head":
        c = collapse(c)
    to_eap_json(c, out_path)
    click.echo(f"{method.replace('_', '-')} {value:g}: {c.meta['selected_edges']} edges selected, {c.n_edges} "
               f"{c.level}-level edges and {len(c.nodes)} nodes in the circuit -> {out_path}", err=True)


def _model_and_pairs(model_path, data_path: Path, split, device, dtype):
    from analysis.datasets import load_split
    from analysis.models import load_model

    if not data_path.exists():
        raise UserError(f"data {data_path} does not exist")
    pairs = load_split(data_path, split)
    return load_model(model_path, device=device, dtype=dtype), pairs


def _common(f):
    opts = [
        click.option("--model", "model_path", required=True, help="HF hub name or local model folder."),
        click.option("--data", "data_path", required=True, type=click.Path(path_type=Path),
                     help="Dataset folder (its held-out split) or a CSV clean,corrupted,label[,corrupted_label]."),
        click.option("--split", default="circuit", show_default=True, help="Split of a dataset folder."),
        click.option("--batch-size", type=int, default=16, show_default=True),
        click.option("--device", default="cpu", show_default=True),
        click.option("--dtype", default="float32", show_default=True),
        click.option("--quiet", is_flag=True, help="No progress bar."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


@circuit.command("evaluate")
@_common
@click.option("--circuit", "circuit_path", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="EAP-IG graph JSON (q/k/v or head level).")
@click.option("--metric", "metrics", multiple=True, type=click.Choice(["kl", "logit-diff"]),
              help="Faithfulness metric(s); default kl. logit-diff needs a corrupted_label column.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def evaluate_cmd(model_path, data_path, split, batch_size, device, dtype, quiet, circuit_path, metrics, as_json):
    """Faithfulness (method.md 2.5), circuit accuracy and model accuracy of CIRCUIT.json."""
    from analysis.circuit import from_eap_json
    from analysis.evaluate import evaluate

    from_eap_json(circuit_path)  # a bad file fails before the model loads
    adapter, pairs = _model_and_pairs(model_path, data_path, split, device, dtype)
    c = from_eap_json(circuit_path, adapter.spec)
    r = evaluate(adapter, c, pairs, metrics or ("kl",), batch_size, progress=not quiet)
    doc = {"circuit": str(circuit_path), "model": str(model_path), "data": str(data_path), **r.to_dict()}
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(f"circuit {circuit_path.name}: {r.n_edges} q/k/v-level edges (after pruning), {r.n_examples} examples")
    for m, f in r.by_metric.items():
        click.echo(f"faithfulness ({m}): {f.percent:.2f}%   F(M) = {f.f_model:.6g}   F(C) = {f.f_circuit:.6g}")
    click.echo(f"circuit accuracy: {r.circuit_accuracy:.2f}%   model accuracy: {r.model_accuracy:.2f}%")


@circuit.command("curve")
@_common
@click.argument("scores_path", metavar="SCORES.json", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--fracs", default="0.01,0.02,0.03,0.04,0.05,0.06,0.08,0.10", show_default=True,
              help="Comma-separated top fractions.")
@click.option("--metric", default="kl", type=click.Choice(["kl", "logit-diff"]), show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def curve(model_path, data_path, split, batch_size, device, dtype, quiet, scores_path, fracs, metric, as_json):
    """Faithfulness vs circuit size: the top-x% circuit of SCORES.json for every x in --fracs."""
    from analysis.evaluate import faithfulness_curve

    try:
        values = [float(x) for x in fracs.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--fracs must be comma-separated numbers, got {fracs!r}") from None
    if not values:
        raise UserError("--fracs is empty")
    scores, spec, _ = _read_scores(scores_path)
    adapter, pairs = _model_and_pairs(model_path, data_path, split, device, dtype)
    if (spec.n_layers, spec.n_heads, spec.parallel_attn_mlp) != \
            (adapter.spec.n_layers, adapter.spec.n_heads, adapter.spec.parallel_attn_mlp):
        raise UserError(f"{scores_path}: scores for {spec.n_layers} layers x {spec.n_heads} heads do not match "
                        f"the model's {adapter.n_layers} x {adapter.n_heads}")
    points = faithfulness_curve(adapter, scores, pairs, values, spec, metric, batch_size, progress=not quiet)
    rows = [{"top_frac": p.frac, "edges": p.n_edges, "faithfulness_percent": round(p.faithfulness, 2),
             "circuit_accuracy_percent": round(p.circuit_accuracy, 2)} for p in points]
    click.echo(json.dumps({"metric": metric, "points": rows}, indent=2) if as_json else rows_table(rows))
