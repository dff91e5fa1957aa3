"""The score job (`circuitshift score`): EAP / EAP-IG scores of every edge of a model's graph on a
dataset's prompt pairs, written as one JSON document with its provenance."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import click
import torch

from analysis.adapter import ModelAdapter
from analysis.datasets import load_split
from analysis.eap import REFERENCE_IG_RULE, check_settings, score as run_score
from analysis.eap_memory import choose_chunk, device_budget, estimate_memory, format_bytes
from analysis.errors import UserError
from analysis.graph import build_graph
from analysis.mib import mib_curve
from analysis.models import load_causal_lm
from analysis.provenance import code_version, content_hash, package_versions


@dataclass(frozen=True)
class ScoreRequest:
    """What to score, how, and where the JSON goes (the options of `circuitshift score`)."""

    model_path: str
    data_path: Path
    out_path: Path
    method: str = "eap-ig-inputs"
    steps: int | None = None
    ig_rule: str | None = None
    metric: str = "kl"
    batch_size: int = 16
    split: str = "circuit"
    device: str = "cpu"
    dtype: str = "float32"
    quiet: bool = False
    compat: str | None = None
    backend: str = "native"
    chunk: int | None = None  # micro-batch size (None: what fits the accelerator, analysis.eap_memory)
    mib: bool = False  # also MIB's CPR / CMD of the scores


def score_to_file(req: ScoreRequest) -> dict:
    """Score and write req.out_path; returns the document written."""
    model_path, data_path, method, steps, ig_rule, metric, batch_size = (
        req.model_path, req.data_path, req.method, req.steps, req.ig_rule, req.metric, req.batch_size)
    split, device, dtype, out_path, quiet, compat, backend = (
        req.split, req.device, req.dtype, req.out_path, req.quiet, req.compat, req.backend)
    check_settings(method, metric, steps, ig_rule, batch_size, compat, backend)  # fail before loading anything
    if compat and ig_rule and method in REFERENCE_IG_RULE and ig_rule != REFERENCE_IG_RULE[method]:
        raise UserError(f"--compat {compat} uses the reference's IG rule for {method} "
                        f"({REFERENCE_IG_RULE[method]}); drop --ig-rule {ig_rule}")

    if not data_path.exists():
        raise UserError(f"data {data_path} does not exist")
    pairs = load_split(data_path, split)
    if backend == "transformer-lens":
        from analysis.tl_adapter import load_tl_model  # transformer-lens: an optional package

        adapter, model_info = load_tl_model(model_path, dtype=dtype, device=device)
    else:
        model, tokenizer, model_info = load_causal_lm(model_path, dtype=dtype, device=device)
        adapter = ModelAdapter(model, tokenizer, source=model_info.path)
    graph = build_graph(adapter.spec)
    enc = adapter.encode_pairs(pairs, need_corrupted_label=(metric == "logit-diff"))  # validates early
    n_pos = max(len(c) for c in enc.clean)
    if req.chunk is not None and req.chunk < 1:
        raise UserError(f"--chunk must be a positive number of examples, got {req.chunk}")
    if not quiet:  # the estimate of the largest batch, in the chunks it will be scored in
        full = min(batch_size, len(pairs))
        chunk = min(full, req.chunk or choose_chunk(adapter, graph, full, n_pos, device_budget(adapter)))
        est = estimate_memory(adapter, graph, chunk, n_pos)
        parts = ", ".join(f"{k.replace('_', ' ')} {format_bytes(v)}" for k, v in est.items() if k != "total")
        split = f", batches in chunks of {chunk}" if chunk < full else ""
        click.echo(f"{len(graph.edges):,} edges, {len(pairs)} pairs{split}; memory estimate "
                   f"~{format_bytes(est['total'])} ({parts})", err=True)
    t0 = time.perf_counter()
    result = run_score(adapter, graph, pairs, method=method, metric=metric, steps=steps, ig_rule=ig_rule,
                       batch_size=batch_size, progress=not quiet, compat=compat, chunk=req.chunk)
    seconds = time.perf_counter() - t0
    mib = mib_curve(adapter, result, pairs, metric, batch_size) if req.mib else None
    data_hash = content_hash([[p.clean, p.corrupted, p.label, p.corrupted_label] for p in pairs])
    doc = {
        "format": "circuitshift-scores/1",
        "graph": {"n_layers": graph.spec.n_layers, "n_heads": graph.spec.n_heads,
                  "parallel_attn_mlp": graph.spec.parallel_attn_mlp, "n_kv_heads": graph.spec.n_kv_heads,
                  "n_edges": len(graph.edges)},
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
    if mib is not None:
        doc["mib"] = mib.to_dict()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(doc))
    if not quiet:
        click.echo(f"wrote {len(doc['scores']):,} edge scores to {out_path} in {seconds:.1f} s "
                   f"(HF-vs-hooked logit parity {result.parity:.2e})", err=True)
    if mib is not None:  # printed even with --quiet: it is a result, not progress
        click.echo(f"MIB ({mib.metric}): CPR {mib.cpr:.4f}  CMD {mib.cmd:.4f}", err=True)
    return doc
