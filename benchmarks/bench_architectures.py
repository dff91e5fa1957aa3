"""Scoring and evaluation speed per architecture on same-size tiny models (issue 7, part 3).

    .venv/bin/python benchmarks/bench_architectures.py [--shape 4x4x128] [--archs gpt_neox,gpt2,gpt_neo,opt,llama]
        [--n-examples 64] [--batch-size 16] [--threads 2] [--repeats 3] [--device cpu|cuda]

For every architecture: a random-weight model of shape LxHxD built from a config
(:func:`analysis.tiny.build_tiny_model`; the Llama has H/2 kv-heads, GPT-Neo alternates global and
local attention with window 8), the offline word tokenizer, add/sub prompt pairs, float32:

* scoring: ``analysis.eap.score`` with ``eap-ig-inputs``, m = 5, KL, right rule;
* scoring floor: (m+1) forwards + m backwards (activation gradients only) of the plain HF model;
* evaluation: ``evaluate_many`` of 3 circuits (top 1%, 5%, 10% of random scores, pruned);
* evaluation floor: 2 + 3 plain HF forwards;
* parity: max |HF logits - our per-head q/k/v path| (every layer forced through it, nothing patched).

Times are the best of ``--repeats``.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_evaluate import pairs  # noqa: E402  (the same 64 add/sub pairs as the evaluation benchmark)


def bench(arch: str, args) -> dict:
    import torch

    from analysis.circuit import select_circuit
    from analysis.eap import score
    from analysis.evaluate import evaluate_many, hooked_parity
    from analysis.graph import build_graph
    from analysis.models import load_model
    from analysis.tiny import build_tiny_model

    L, H, D = (int(x) for x in args.shape.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        build_tiny_model(tmp, arch=arch, n_layers=L, n_heads=H, d_model=D, seed=0, max_number=200)
        adapter = load_model(tmp, device=args.device)
    data = pairs(args.n_examples)
    graph = build_graph(adapter.spec)
    rng = random.Random(1)
    rand_scores = {e.name: rng.gauss(0, 1) for e in graph.edges}
    circuits = [select_circuit(rand_scores, adapter.spec, "top_frac", f) for f in (0.01, 0.05, 0.10)]
    enc = adapter.encode_pairs(data)
    bs, m = args.batch_size, 5

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def batches():
        for st in range(0, len(data), bs):
            yield adapter.make_batch(enc, range(st, min(len(data), st + bs)))

    def score_floor():
        for b in batches():
            with torch.no_grad():
                adapter.forward_logits(b.corrupted)
            for _ in range(m):
                e = adapter.embed(b.clean).requires_grad_(True)
                with adapter.hooks(embed_override=lambda out, e=e: e):
                    logits = adapter.forward_logits(b.clean)
                logits[torch.arange(len(b.last)), b.last].logsumexp(-1).sum().backward()
        sync()

    def eval_floor():
        with torch.no_grad():
            for b in batches():
                for _ in range(2 + len(circuits)):
                    adapter.forward_logits(b.clean)
        sync()

    def timed(fn):
        t = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t

    score(adapter, graph, data[:bs], steps=m, batch_size=bs, parity=False)  # warm-up
    best = {"score": float("inf"), "score_floor": float("inf"), "eval": float("inf"), "eval_floor": float("inf")}
    for _ in range(args.repeats):
        best["score"] = min(best["score"], timed(lambda: score(adapter, graph, data, method="eap-ig-inputs", steps=m,
                                                               ig_rule="right", batch_size=bs, parity=False)))
        best["score_floor"] = min(best["score_floor"], timed(score_floor))
        best["eval"] = min(best["eval"], timed(lambda: evaluate_many(adapter, circuits, data, batch_size=bs)))
        best["eval_floor"] = min(best["eval_floor"], timed(eval_floor))
    kv = adapter.spec.kv_heads
    return {"arch": arch, "edges": len(graph.edges), "kv": kv, "parity": hooked_parity(adapter, data[:bs], bs), **best}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="4x4x128")
    ap.add_argument("--archs", default="gpt_neox,gpt2,gpt_neo,opt,llama")
    ap.add_argument("--n-examples", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    print(f"shape {args.shape}, {args.n_examples} pairs, batch {args.batch_size}, {args.threads} threads, "
          f"{args.device}, best of {args.repeats}")
    print("| architecture | kv-heads | edges | scoring (s) | scoring floor (s) | scoring/floor | evaluation, 3 circuits (s) "
          "| evaluation floor (s) | evaluation/floor | parity (fp32) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for arch in args.archs.split(","):
        r = bench(arch, args)
        print(f"| {r['arch']} | {r['kv']} | {r['edges']:,} | {r['score']:.2f} | {r['score_floor']:.2f} | "
              f"{r['score'] / r['score_floor']:.1f} | {r['eval']:.2f} | {r['eval_floor']:.2f} | "
              f"{r['eval'] / r['eval_floor']:.1f} | {r['parity']:.1e} |", flush=True)


if __name__ == "__main__":
    main()
