"""One ingest checkpoint end to end: EAP-IG scores of every edge, top-5% selection + pruning, and
faithfulness/accuracy evaluation (`analysis.checkpoint.score_checkpoint`), on a model of a given shape
with random weights. Reports the time of each part and peak GPU memory.

    python benchmarks/bench_checkpoint.py --shape pythia-1.4b --device cuda --examples 200 --batch-size 32
    python benchmarks/bench_checkpoint.py --shape 4x4x128 --examples 200 --batch-size 50   # the demo's model
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_scoring import PRESETS, build_model, make_pairs, parse_shape  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="pythia-1.4b", help="a preset (pythia-1.4b) or LxHxD")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--examples", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from analysis.checkpoint import ScoringConfig, score_checkpoint

    torch.set_num_threads(args.threads)
    shape = dict(PRESETS[args.shape]) if args.shape in PRESETS else parse_shape(args.shape)
    with tempfile.TemporaryDirectory() as tmp:
        d = build_model(Path(tmp) / "m", shape)
        model = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32).to(args.device)
        tok = AutoTokenizer.from_pretrained(str(d))
    pairs = make_pairs(args.examples)
    cfg = ScoringConfig(steps=args.steps, batch_size=args.batch_size, top_frac=0.05)
    score_checkpoint(model, tok, pairs[: args.batch_size], cfg)  # warm-up (kernels, allocator)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    res = score_checkpoint(model, tok, pairs, cfg)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    total = time.perf_counter() - t0
    m = res.metrics
    out = {"shape": args.shape, "device": args.device, "edges": len(res.names), "examples": len(pairs),
           "batch": args.batch_size, "steps": args.steps, "total_s": round(total, 3),
           "score_s": m["score_seconds"], "eval_s": m["eval_seconds"],
           "select_and_rest_s": round(total - m["score_seconds"] - m["eval_seconds"], 3),
           "circuit_edges": m["n_circuit_edges"], "parity": m["parity_max_abs_logit_diff"],
           "peak_gib": (torch.cuda.max_memory_allocated() / 2**30) if args.device.startswith("cuda") else None}
    print(json.dumps(out))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
