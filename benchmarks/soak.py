"""Soak: many checkpoints through the whole write path, watching for leaks and slow-downs.

Writes `--checkpoints` (200) checkpoints into one run, then `--runs` (20) runs of `--per-run` (10)
checkpoints each, through BackgroundWriter(SpoolingWriter(CircuitWriter)) as a fine-tuning job would,
into a server of its own. Reports, first vs last: the writer process's resident memory, the server's
JVM heap (used, committed and the G1 old generation, from its memory MXBeans via `dbms.queryJmx`) and the server process's
resident memory (first = after 10 checkpoints, when the caches are warm), and the seconds per checkpoint (mean of the first and the last 10, time from handing
a checkpoint over until the store has it, one at a time).

    .venv/bin/python benchmarks/soak.py                       # GPT-2-small shape, 32,491 edges
    .venv/bin/python benchmarks/soak.py --shape 24x16p        # Pythia-1.4B shape, 231,493 edges
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from faults import PrivateServer, run_record, server_heap, synthetic  # noqa: E402
from queries.background import BackgroundWriter  # noqa: E402
from queries.components import Architecture  # noqa: E402
from queries.spool import SpoolingWriter  # noqa: E402
from queries.writer import CircuitWriter  # noqa: E402

DB = "neo4j"
MB = 2 ** 20


def rss(pid: str = "self") -> int:
    """Resident set size in bytes (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def parse_shape(text: str) -> Architecture:
    """`12x12s` = 12 layers, 12 heads, sequential; `24x16p` parallel attention/MLP."""
    layers, rest = text.lower().split("x")
    return Architecture(int(layers), int(rest.rstrip("ps")), rest.endswith("p"))


def sample(monitor, server_pid) -> dict:
    gc.collect()
    heap = server_heap(monitor, DB)
    return {"writer_rss_mb": round(rss() / MB, 1), "heap_used_mb": round(heap["used"] / MB, 1),
            "heap_committed_mb": round(heap["committed"] / MB, 1),
            "old_gen_used_mb": round((heap["old_used"] or 0) / MB, 1),
            "server_rss_mb": round(rss(str(server_pid)) / MB, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoints", type=int, default=200, help="checkpoints in the one long run")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--per-run", type=int, default=10, help="checkpoints per short run")
    ap.add_argument("--shape", default="12x12s", help="LAYERSxHEADS[p|s] (default GPT-2 small)")
    ap.add_argument("--frac", type=float, default=0.05, help="share of edges in each circuit")
    ap.add_argument("--heap", default="1g", help="server heap")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    arch = parse_shape(args.shape)
    plan = [("long", 10 * i) for i in range(args.checkpoints)]
    plan += [(f"short{r:02d}", 10 * i) for r in range(args.runs) for i in range(args.per_run)]
    with tempfile.TemporaryDirectory(prefix="circuitshift-soak-") as tmp:
        ps = PrivateServer(Path(tmp) / "neo4j", heap=args.heap)
        ps.start()
        try:
            with ps.driver(retry_s=30) as drv, ps.driver(retry_s=30) as monitor:
                pid = ps.server.status().pid
                bw = BackgroundWriter(SpoolingWriter(CircuitWriter(drv, DB), Path(tmp) / "spool"))
                samples, seconds, runs = [{"after": 0, **sample(monitor, pid)}], [], set()
                t_all = time.perf_counter()
                for i, (run_id, step) in enumerate(plan):
                    if run_id not in runs:
                        bw.ensure_run(run_record(run_id), arch)
                        runs.add(run_id)
                    data = synthetic(arch, step, seed=len(runs), frac=args.frac)
                    t = time.perf_counter()
                    bw.write_checkpoint(run_id, arch, data)
                    bw.flush()  # one at a time, so each figure is one checkpoint's write
                    seconds.append(time.perf_counter() - t)
                    del data
                    if i + 1 == 10 or (i + 1) % 50 == 0 or i + 1 == len(plan):
                        samples.append({"after": i + 1, **sample(monitor, pid)})
                        print(f"{i + 1}/{len(plan)}: {seconds[-1]:.3f} s/checkpoint, {samples[-1]}",
                              file=sys.stderr)
                left = bw.close()
                total_s = time.perf_counter() - t_all
        finally:
            ps.stop()
    first, last = statistics.mean(seconds[:10]), statistics.mean(seconds[-10:])
    out = {"shape": arch.key, "edges_per_checkpoint": arch.n_edges("qkv"), "checkpoints": len(plan),
           "runs": len(runs), "total_s": round(total_s, 1), "s_per_checkpoint_first10": round(first, 4),
           "s_per_checkpoint_last10": round(last, 4),
           "s_per_checkpoint_median": round(statistics.median(seconds), 4), "left_spooled": len(left or []),
           "first": samples[1], "last": samples[-1], "samples": samples}
    print(f"{len(plan)} checkpoints of {arch.key} ({arch.n_edges('qkv'):,} edges each) in {len(runs)} runs, "
          f"{total_s:.0f} s\n")
    print("| figure | first | last |\n|---|---|---|")
    print(f"| s per checkpoint (mean of 10) | {first:.3f} | {last:.3f} |")
    for key in ("writer_rss_mb", "heap_used_mb", "old_gen_used_mb", "heap_committed_mb", "server_rss_mb"):
        print(f"| {key} (after {samples[1]['after']} / {samples[-1]['after']}) | {samples[1][key]} | "
              f"{samples[-1][key]} |")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0 if not left else 1


if __name__ == "__main__":
    sys.exit(main())
