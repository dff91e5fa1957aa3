"""Training stall per checkpoint: writing to Neo4j on the training path vs off it (issue 18 item 2).

A training loop (a real torch MLP doing optimizer steps for --train-seconds between checkpoints) hands
a Pythia-1.4B-shape checkpoint (24 layers x 16 heads, parallel: 231,493 scored q/k/v edges, the top 5%
as its circuit) to the writer the ingest callback uses, in the two configurations side by side:

  on the path    SpoolingWriter(CircuitWriter): training waits for every write (the old callback)
  off the path   BackgroundWriter(SpoolingWriter(CircuitWriter)): one worker thread writes while
                 training goes on (bounded queue of 1); close() waits for the last one

The stall is the time the training thread spends inside `write_checkpoint` (plus, off the path,
the final `close()` spread over the checkpoints); the step rate shows what the worker thread costs
the training loop while it writes. Scoring is not in either figure: it needs the weights of that
step, so it stays on the path (its time is in BENCHMARKS.md's scoring tables).

    .venv/bin/python benchmarks/bench_stall.py --checkpoints 6 --train-seconds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from faults import PrivateServer, run_record, synthetic  # noqa: E402
from queries.background import BackgroundWriter  # noqa: E402
from queries.components import Architecture  # noqa: E402
from queries.spool import SpoolingWriter  # noqa: E402
from queries.writer import CircuitWriter  # noqa: E402


def train_for(seconds: float, model, opt) -> int:
    """Optimizer steps of a small MLP for `seconds` of wall time; returns the number of steps."""
    x = torch.randn(256, 512)
    steps, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    return steps


def loop(writer, run_id: str, arch, checkpoints, train_seconds: float) -> dict:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 512))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    writer.ensure_run(run_record(run_id), arch)
    stalls, steps = [], []
    t0 = time.perf_counter()
    for cp in checkpoints:
        t = time.perf_counter()
        writer.write_checkpoint(run_id, arch, cp)
        stalls.append(time.perf_counter() - t)
        steps.append(train_for(train_seconds, model, opt))
    t = time.perf_counter()
    if hasattr(writer, "close"):
        writer.close()
    else:
        writer.flush()
    closing = time.perf_counter() - t
    return {"stall_s": stalls, "close_s": closing, "train_steps": steps, "wall_s": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoints", type=int, default=6)
    ap.add_argument("--train-seconds", type=float, default=3.0, help="training time between checkpoints")
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the training loop")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    arch = Architecture(args.layers, args.heads, True)
    cps = [synthetic(arch, step, frac=0.05) for step in range(args.checkpoints)]
    server = PrivateServer(Path(tempfile.mkdtemp(prefix="circuitshift-stall-")), heap="2g")
    server.start()
    driver = server.driver(retry_s=30)
    try:
        # a warm-up write (JIT, page cache, schema) so neither configuration pays it
        warm = SpoolingWriter(CircuitWriter(driver, "neo4j"))
        warm.ensure_run(run_record("warmup"), arch)
        warm.write_checkpoint("warmup", arch, cps[0])
        results = {}
        for name, make in (("on the path", lambda: SpoolingWriter(CircuitWriter(driver, "neo4j"))),
                           ("off the path", lambda: BackgroundWriter(SpoolingWriter(CircuitWriter(driver, "neo4j"))))):
            results[name] = loop(make(), name.replace(" ", "-"), arch, cps, args.train_seconds)
    finally:
        driver.close()
        server.stop()

    e = arch.n_edges("qkv")
    print(f"\n### Training stall per checkpoint, {arch.key} ({e:,} edges per checkpoint), "
          f"{args.checkpoints} checkpoints, {args.train_seconds:g} s of training between them\n")
    print("| writes | stall per checkpoint, median (s) | max (s) | final close (s) | "
          "training steps per interval, median |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {statistics.median(r['stall_s']):.3f} | {max(r['stall_s']):.3f} | "
              f"{r['close_s']:.3f} | {statistics.median(r['train_steps']):.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"arch": arch.key, "edges": e, **results}, indent=2))


if __name__ == "__main__":
    main()
