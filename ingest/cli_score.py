"""`circuitshift score`: EAP / EAP-IG scores of every edge of a model's graph, written as JSON."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

import click

from analysis.errors import UserError

METHOD_NAMES = "eap, eap-ig-inputs, eap-ig-activations, clean-corrupted"


@click.command("score")
@click.option("--model", "model_path", required=True,
              help="Local model folder, .gguf file, shipped model (smollm2) or HF hub name ORG/NAME.")
@click.option("--data", "data_path", required=True, type=click.Path(path_type=Path),
              help="Dataset folder (its circuit split) or a CSV with clean,corrupted,label[,corrupted_label].")
@click.option("--method", default="eap-ig-inputs", show_default=True, help=f"One of: {METHOD_NAMES}.")
@click.option("--steps", type=int, default=None, help="IG steps m (IG methods; default 5).")
@click.option("--ig-rule", default=None,
              help="right: k = 1..m (the paper's code; the default); left: k = 0..m-1 (hannamw/EAP-IG).")
@click.option("--metric", default="kl", show_default=True, help="kl (vocabulary mean) or logit-diff.")
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--split", default="circuit", show_default=True, help="Split of a dataset folder.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", default="float32", show_default=True, help="float32, float64, float16 or bfloat16.")
@click.option("--out", "out_path", required=True, type=click.Path(path_type=Path), help="Output FILE.json.")
@click.option("--compat", default=None,
              help="hannamw: hannamw/EAP-IG 795f560's exact numbers (batch-mean metric, its IG rules and "
                   "eap-ig-activations aggregation); default: circuitshift's per-example scores.")
@click.option("--backend", default="native", show_default=True,
              help="native (hooks on the HF model) or transformer-lens (TransformerBridge hooks; also scores "
                   "qwen2 and gemma).")
@click.option("--quiet", is_flag=True, help="No memory estimate or progress bar.")
def score(model_path, data_path, method, steps, ig_rule, metric, batch_size, split, device, dtype, out_path, quiet,
          compat, backend):
    """Score every edge of MODEL's graph on DATA's prompt pairs and write FILE.json."""
    from analysis.eap import REFERENCE_IG_RULE, check_settings

    check_settings(method, metric, steps, ig_rule, batch_size, compat, backend)  # fail before loading anything
    if compat and ig_rule and method in REFERENCE_IG_RULE and ig_rule != REFERENCE_IG_RULE[method]:
        raise UserError(f"--compat {compat} uses the reference's IG rule for {method} "
                        f"({REFERENCE_IG_RULE[method]}); drop --ig-rule {ig_rule}")

    import torch

    from analysis.adapter import ModelAdapter
    from analysis.datasets import load_split
    from analysis.eap import estimate_memory, format_bytes, score as run_score
    from analysis.graph import build_graph
    from analysis.models import load_causal_lm
    from analysis.provenance import code_version, content_hash, package_versions

    if not data_path.exists():
        raise UserError(f"data {data_path} does not exist")
    pairs = load_split(data_path, split)
    if backend == "transformer-lens":
        from analysis.tl_adapter import load_tl_model

        adapter, model_info = load_tl_model(model_path, dtype=dtype, device=device)
    else:
        model, tokenizer, model_info = load_causal_lm(model_path, dtype=dtype, device=device)
        adapter = ModelAdapter(model, tokenizer, source=model_info.path)
    graph = build_graph(adapter.spec)
    enc = adapter.encode_pairs(pairs, need_corrupted_label=(metric == "logit-diff"))  # validates early
    n_pos = max(len(c) for c in enc.clean)
    if not quiet:
        est = estimate_memory(adapter, graph, min(batch_size, len(pairs)), n_pos)
        parts = ", ".join(f"{k.replace('_', ' ')} {format_bytes(v)}" for k, v in est.items() if k != "total")
        click.echo(f"{len(graph.edges):,} edges, {len(pairs)} pairs; memory estimate ~{format_bytes(est['total'])} "
                   f"({parts})", err=True)
    t0 = time.perf_counter()
    result = run_score(adapter, graph, pairs, method=method, metric=metric, steps=steps, ig_rule=ig_rule,
                       batch_size=batch_size, progress=not quiet, compat=compat)
    seconds = time.perf_counter() - t0
    data_hash = content_hash([[p.clean, p.corrupted, p.label, p.corrupted_label] for p in pairs])
    doc = {
        "format": "circuitshift-scores/1",
        "graph": {"n_layers": graph.spec.n_layers, "n_heads": graph.spec.n_heads,
                  "parallel_attn_mlp": graph.spec.parallel_attn_mlp, "n_edges": len(graph.edges)},
        "provenance": {
            "model": str(model_path),
            "model_revision": model_info.revision,
            "architecture": adapter.arch,
            "data": str(data_path),
            "split": split if data_path.is_dir() else None,
            "data_hash": data_hash,
            "settings": result.settings,
            "parity_max_abs_logit_diff": result.parity,
            "code_version": code_version(),
            "packages": package_versions(),
            "seconds": round(seconds, 3),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "torch_threads": torch.get_num_threads(),
        },
        "scores": result.to_dict(),
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(doc))
    if not quiet:
        click.echo(f"wrote {len(doc['scores']):,} edge scores to {out_path} in {seconds:.1f} s "
                   f"(HF-vs-hooked logit parity {result.parity:.2e})", err=True)
