"""A lab-sized store: one run's queries in a store holding many runs, and an experiment table over them.

Fills a fresh server with runs of N synthetic Pythia-1.4B-shape checkpoints (benchmarks/bench_store.py's
drifting scores, a few seeds cycled so generating them does not dominate), written through the writer
as a job would. Measures, warm (median of 3):

  * every library query on the first run, once with the store holding only that run and once full:
    the full store must not be slower than 1.2x;
  * the experiment table (queries/cypher/experiments.py EXPERIMENT_TABLE) across the first
    --experiment-runs runs, tagged into one experiment through the writer (target < 1 s);
  * disk per stored scored edge (store files flushed by a server restart, transaction logs excluded).

Filling stops at --runs runs or after --fill-minutes, whichever comes first (the figures say how many).

    .venv/bin/python benchmarks/bench_lab_store.py --runs 100 --fill-minutes 15

The fill takes a quarter of an hour, so the one-run figures (taken before it) and the full-store figures
(after it) can see different machine load. `--reuse HOME` restarts a filled store's server home (kept in
$TMPDIR/circuitshift-bench-*; its random password is gone, so it starts without auth, loopback only)
beside a fresh store holding only run lab0, and times every query on both, interleaved, --rounds times
(median per query): the side-by-side comparison.

    .venv/bin/python benchmarks/bench_lab_store.py --reuse /tmp/circuitshift-bench-XXXX --rounds 5
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time
from pathlib import Path

from bench_store import bench_queries, ingest, start_server, store_bytes, synthetic_run, timed

from queries.api import CircuitDefinition, Store
from queries.components import Architecture
from queries.connection import open_driver
from queries.writer import CircuitWriter, ExperimentRecord

SEEDS = 3  # distinct synthetic runs, cycled over the runs written


def with_accuracy(cps, run_index: int):
    """The experiment table reads each checkpoint's accuracy: give the synthetic ones one."""
    return [dataclasses.replace(cp, meta={"accuracy": 50.0 + (i * 3 + run_index) % 40})
            for i, cp in enumerate(cps)]


def tag_experiment(driver, db, runs: list[str]) -> None:
    writer = CircuitWriter(driver, db)
    labels = ["lora", "full", "circuitlora"]
    writer.write_experiment(ExperimentRecord(id="lab", task="synthetic", model="pythia-1.4b shape",
                                             seeds=list(range(len(runs))), labels=labels, settings="{}"))
    for i, run in enumerate(runs):
        writer.tag_experiment_run("lab", run, labels[i % 3], i // 3, 1_000 + i, 1_400_000_000)


class ProfilingStore(Store):
    """A Store whose every statement runs under PROFILE, recording its database hits."""

    def __init__(self, driver, database):
        super().__init__(driver, database)
        self.hits: list[tuple[str, int]] = []

    def read(self, statement: str, **params) -> list[dict]:
        from queries.params import quiet
        records, summary, _ = self.driver.execute_query("PROFILE " + statement, quiet(params),
                                                        database_=self.database, routing_="r")

        def total(plan) -> int:
            return plan.get("dbHits", 0) + sum(total(c) for c in plan.get("children", []))
        first = next(line.strip() for line in statement.strip().splitlines() if line.strip())
        self.hits.append((first[:70], total(summary.profile)))
        return [r.data() for r in records]


def profile_queries(stores: dict, run: str, n_ckpt: int) -> None:
    """Database hits per statement of the slower queries, on each store: what grows with the store."""
    d = CircuitDefinition()
    first, last = f"{run}:0", f"{run}:{(n_ckpt - 1) * 25}"
    calls = {"overlap": lambda s: s.overlap(first, last, d, [100, 500, 1000]),
             "jaccard": lambda s: s.jaccard(first, last, d),
             "diff (95th pct)": lambda s: s.diff(first, last, d),
             "union (read side)": lambda s: s.union_edges(first, last, d, None),
             "churn (top 5%, head)": lambda s: s.churn(run, CircuitDefinition("top_frac", 0.05, "head"))}
    print("\n| query | statement | db hits, 1 run | db hits, full store |\n|---|---|---|---|")
    for name, call in calls.items():
        hits = {}
        for side, (driver, db) in stores.items():
            ps = ProfilingStore(driver, db)
            call(ps)
            hits[side] = ps.hits
        for (stmt, a), (_, b) in zip(hits["alone"], hits["full"]):
            print(f"| {name} | `{stmt}` | {a:,} | {b:,} |")


def recheck(args, arch: Architecture, runs) -> None:
    """A filled store (args.reuse) against a fresh one-run store, every query interleaved."""
    from queries.server.local import LocalServer, free_port
    from queries.settings import Neo4jSettings

    full_server = LocalServer(Path(args.reuse), bolt_port=free_port(), http_port=free_port(), heap=args.heap,
                              extra_conf={"dbms.security.auth_enabled": "false"})
    status = full_server.start(timeout=300)
    alone_server, alone_settings = start_server(args.heap)
    drivers = []
    try:
        full_driver = open_driver(Neo4jSettings(uri=status.bolt_uri, password="unused"))
        alone_driver = open_driver(alone_settings)
        drivers = [full_driver, alone_driver]
        ingest(alone_driver, alone_settings.database, arch, with_accuracy(runs[0], 0), "lab0")
        stores = {"alone": Store(alone_driver, alone_settings.database), "full": Store(full_driver, "neo4j")}
        n_runs = full_driver.execute_query("MATCH (r:Run) WHERE r.id STARTS WITH 'lab' RETURN count(r) AS n",
                                           database_="neo4j").records[0]["n"]
        times = {"alone": [], "full": []}
        for _ in range(args.rounds):
            for side in ("alone", "full"):
                times[side].append(bench_queries(stores[side], "lab0", args.checkpoints)[0])
        med = {side: {k: statistics.median(t[k] for t in ts) for k in ts[0]} for side, ts in times.items()}
        print(f"\n### Lab-sized store, side by side: {n_runs} runs x {args.checkpoints} checkpoints vs lab0 alone "
              f"({args.rounds} interleaved rounds, medians; load average {os.getloadavg()[0]:.2f} at the end)\n")
        print("| query on run lab0 (warm) | store with 1 run (s) | full store (s) | ratio |")
        print("|---|---|---|---|")
        for k, v in med["alone"].items():
            print(f"| {k} | {v:.3f} | {med['full'][k]:.3f} | {med['full'][k] / v:.2f}x |")
        profile_queries({"alone": (alone_driver, alone_settings.database), "full": (full_driver, "neo4j")},
                        "lab0", args.checkpoints)
        if args.json:
            Path(args.json).write_text(json.dumps({"runs": n_runs, "rounds": args.rounds, "alone": med["alone"],
                                                   "full": med["full"], "load": os.getloadavg()}, indent=2))
    finally:
        for d in drivers:
            d.close()
        alone_server.stop()
        full_server.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--checkpoints", type=int, default=11)
    ap.add_argument("--fill-minutes", type=float, default=15.0)
    ap.add_argument("--experiment-runs", type=int, default=50)
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--heap", default="2g")
    ap.add_argument("--json", default=None)
    ap.add_argument("--reuse", default=None, help="A filled store's server home: re-time it side by side.")
    ap.add_argument("--rounds", type=int, default=5, help="With --reuse: interleaved rounds.")
    args = ap.parse_args()

    arch = Architecture(args.layers, args.heads, True)
    if args.reuse:
        return recheck(args, arch, [synthetic_run(arch, args.checkpoints, seed=0)[1]])
    runs = [synthetic_run(arch, args.checkpoints, seed=s)[1] for s in range(SEEDS)]
    server, settings = start_server(args.heap)
    empty = store_bytes(server)
    driver = open_driver(settings)
    db = settings.database
    try:
        store = Store(driver, db)
        ingest(driver, db, arch, with_accuracy(runs[0], 0), "lab0")
        alone, _ = bench_queries(store, "lab0", args.checkpoints)
        t0, written, fill = time.perf_counter(), ["lab0"], []
        while len(written) < args.runs and time.perf_counter() - t0 < args.fill_minutes * 60:
            i = len(written)
            fill += ingest(driver, db, arch, with_accuracy(runs[i % SEEDS], i), f"lab{i}")
            written.append(f"lab{i}")
        fill_s = time.perf_counter() - t0
        full, _ = bench_queries(store, "lab0", args.checkpoints)
        tagged = written[:args.experiment_runs]
        tag_experiment(driver, db, tagged)
        table_s, rows = timed(lambda: store.experiment_table_rows("lab", [], ["lora", "full", "circuitlora"]))
        edges = len(written) * args.checkpoints * arch.n_edges("qkv")
        driver.close()
        per_edge = (store_bytes(server) - empty) / edges
        print(f"\n### Lab-sized store: {len(written)} runs x {args.checkpoints} checkpoints of {arch.key} "
              f"({edges:,} stored scored edges)")
        print(f"(filled in {fill_s / 60:.1f} min, median {statistics.median(fill):.2f} s per checkpoint; "
              f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.2f} at the end)\n")
        print("| query on run lab0 (warm, median of 3) | store with 1 run (s) | full store (s) | ratio |")
        print("|---|---|---|---|")
        for k, v in alone.items():
            print(f"| {k} | {v:.3f} | {full[k]:.3f} | {full[k] / v:.2f}x |")
        print(f"\nExperiment table across {len(tagged)} runs ({sum(r['n'] for r in rows)} cells): "
              f"{table_s:.3f} s. Disk: {per_edge:.1f} bytes per stored scored edge.")
        if args.json:
            Path(args.json).write_text(json.dumps({
                "runs": len(written), "fill_s": fill_s, "fill_per_checkpoint_s": fill, "alone": alone,
                "full": full, "experiment_runs": len(tagged), "experiment_table_s": table_s,
                "bytes_per_edge": per_edge, "load": os.getloadavg()}, indent=2))
    finally:
        driver.close()
        server.stop()


if __name__ == "__main__":
    main()
