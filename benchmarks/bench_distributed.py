"""1 vs N processes scoring one checkpoint on the CPU (issue 18 item 1): `analysis.distributed.sharded_score`
over gloo, each process with the same number of torch threads, against the same call in one process.

    .venv/bin/python benchmarks/bench_distributed.py [--shape 4x4x128] [--n-examples 64] [--batch-size 8]
        [--steps 5] [--world 2] [--threads 1] [--repeats 3]

Random-weight GPT-NeoX of shape LxHxD (the offline word tokenizer), add/sub prompt pairs, eap-ig-inputs
with KL. Prints the median seconds of the 1-process and the N-process scoring (the slowest rank, which
includes the all-reduce), their ratio, the max |difference| of the scores and the 1-minute load average:
measure when the machine is otherwise idle (N processes x --threads must fit its cores).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from analysis.datasets import PromptPair
from analysis.distributed import sharded_score
from analysis.eap import score
from analysis.graph import build_graph
from analysis.models import load_model
from analysis.tiny import build_tiny_model
from queries.server.local import free_port

PFX = "Calculate the result of the following arithmetic expression and provide only the final answer:"


def make_pairs(n: int) -> list[PromptPair]:
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(1, 50, (n, 2), generator=g).tolist()
    return [PromptPair(f"{PFX} {a} + {b} =", f"{PFX} {a} - {b} =", str(a + b), str(a - b)) for a, b in rows]


def _time(fn, repeats: int) -> tuple[float, torch.Tensor]:
    seconds, dense = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        dense = fn().dense
        seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds), dense


def _worker(rank: int, world: int, port: int, args, model_dir: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        adapter = load_model(model_dir, dtype="float32")
        graph, pairs = build_graph(adapter.spec), make_pairs(args.n_examples)
        sharded_score(adapter, graph, pairs[: args.batch_size * world], batch_size=args.batch_size)  # warm-up
        dist.barrier()
        med, dense = _time(lambda: sharded_score(adapter, graph, pairs, batch_size=args.batch_size,
                                                 steps=args.steps), args.repeats)
        slowest = torch.tensor([med], dtype=torch.float64)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        if rank == 0:
            torch.save({"seconds": float(slowest), "dense": dense}, out)
    finally:
        dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="4x4x128")
    ap.add_argument("--n-examples", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    L, H, D = (int(x) for x in args.shape.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        build_tiny_model(tmp, arch="gpt_neox", n_layers=L, n_heads=H, d_model=D, seed=0, max_number=120)
        torch.set_num_threads(args.threads)
        adapter = load_model(tmp, dtype="float32")
        graph, pairs = build_graph(adapter.spec), make_pairs(args.n_examples)
        score(adapter, graph, pairs[: args.batch_size], batch_size=args.batch_size)  # warm-up
        one, dense = _time(lambda: score(adapter, graph, pairs, batch_size=args.batch_size, steps=args.steps),
                           args.repeats)
        out = os.path.join(tmp, "sharded.pt")
        mp.spawn(_worker, args=(args.world, free_port(), args, tmp, out), nprocs=args.world, join=True)
        sharded = torch.load(out)
    print(json.dumps({
        "shape": args.shape, "n_examples": args.n_examples, "batch_size": args.batch_size, "steps": args.steps,
        "threads_per_process": args.threads, "world": args.world,
        "seconds_1_process": round(one, 3), f"seconds_{args.world}_processes": round(sharded["seconds"], 3),
        "speedup": round(one / sharded["seconds"], 2),
        "max_abs_score_difference": float((sharded["dense"] - dense).abs().max()),
        "load_average_1min": os.getloadavg()[0]}, indent=2))


if __name__ == "__main__":
    main()
