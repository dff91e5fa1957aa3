"""Benchmark circuit evaluation (faithfulness by patching) against its floor.

    .venv/bin/python benchmarks/bench_evaluate.py [--shapes 4x4x128,6x8x256] [--n-examples 64]
        [--batch-size 16] [--circuits 3] [--device cpu|cuda] [--threads 2] [--repeats 1]

For every GPT-NeoX shape LxHxD (random weights, the offline word tokenizer, add/sub prompt pairs):
* ours: ``evaluate_many`` on ``--circuits`` circuits (top 1%, 5%, 10%, ... of random scores, pruned):
  one corrupted run (storing every node output), one clean run, then one patched run per circuit;
* floor: the same number of plain HF forwards (2 + circuits) on the same batches, no hooks.
Also prints the HF-vs-our-path logit parity (every layer forced through the per-head q/k/v path).
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

PFX = "Calculate the result of the following arithmetic expression and provide only the final answer:"


def pairs(n: int):
    from analysis.datasets import PromptPair

    rng = random.Random(0)
    out = []
    while len(out) < n:
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        if a - b >= 0:
            out.append(PromptPair(f"{PFX} {a} + {b} =", f"{PFX} {a} - {b} =", str(a + b), str(a - b)))
    return out


def bench(shape: str, args) -> dict:
    import torch

    from analysis.circuit import select_circuit
    from analysis.evaluate import evaluate_many, hooked_parity
    from analysis.graph import build_graph
    from analysis.models import load_model
    from analysis.tiny import build_tiny_model

    L, H, D = (int(x) for x in shape.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        build_tiny_model(tmp, arch="gpt_neox", n_layers=L, n_heads=H, d_model=D, seed=0, max_number=200)
        adapter = load_model(tmp, device=args.device)
    data = pairs(args.n_examples)
    graph = build_graph(adapter.spec)
    rng = random.Random(1)
    scores = {e.name: rng.gauss(0, 1) for e in graph.edges}
    fracs = [0.01, 0.05, 0.10, 0.20, 0.50][: args.circuits]
    circuits = [select_circuit(scores, adapter.spec, "top_frac", f) for f in fracs]
    enc = adapter.encode_pairs(data)

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def floor():
        with torch.no_grad():
            for st in range(0, len(data), args.batch_size):
                b = adapter.make_batch(enc, range(st, min(len(data), st + args.batch_size)))
                for _ in range(2 + len(circuits)):
                    adapter.forward_logits(b.clean)
        sync()

    evaluate_many(adapter, circuits[:1], data[: args.batch_size], batch_size=args.batch_size)  # warm-up
    best_ours = best_floor = float("inf")
    for _ in range(args.repeats):
        t = time.perf_counter()
        evaluate_many(adapter, circuits, data, batch_size=args.batch_size)
        sync()
        best_ours = min(best_ours, time.perf_counter() - t)
        t = time.perf_counter()
        floor()
        best_floor = min(best_floor, time.perf_counter() - t)
    return {"shape": shape, "edges": len(graph.edges), "circuits": len(circuits), "ours": best_ours,
            "floor": best_floor, "parity": hooked_parity(adapter, data[:16], args.batch_size)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="4x4x128,6x8x256")
    ap.add_argument("--n-examples", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--circuits", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    print("| model (LxHxD) | edges | examples | circuits | ours (s) | floor (s) | ours/floor | examples/s per circuit | parity |")
    print("|---|---|---|---|---|---|---|---|---|")
    for shape in args.shapes.split(","):
        r = bench(shape, args)
        per = args.n_examples * r["circuits"] / r["ours"]
        print(f"| {r['shape']} | {r['edges']:,} | {args.n_examples} | {r['circuits']} | {r['ours']:.2f} | "
              f"{r['floor']:.2f} | {r['ours'] / r['floor']:.1f} | {per:.0f} | {r['parity']:.1e} |", flush=True)


if __name__ == "__main__":
    main()
