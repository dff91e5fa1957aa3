"""Circuit store benchmark: ingest throughput, warm query latency and disk at Pythia-1.4B scale.

Synthetic scores of the Pythia-1.4B graph shape (24 layers x 16 heads, parallel: 231,493 q/k/v-level
edges per checkpoint), N checkpoints whose scores drift like a fine-tuning run's. Side by side:

  ingest   ours (rank-ordered arrays + the circuit as relationships) vs the plain design (a node per
           edge, one (:Checkpoint)-[:SCORED {score, rank}]->(:Edge) per scored edge, 20k-row UNWIND)
           vs a per-edge MERGE loop (one statement per edge; timed on a sample, it would take hours)
  queries  every library query, warm (median of 3), vs pulling the needed edges into Python and
           computing the same answer there (the two must agree)
  disk     store bytes added by the N checkpoints per stored scored edge (flushed by a server
           restart, transaction logs excluded; only with the benchmark's own server)
  before   with --before REV: REV's queries/ and analysis/ (exported with `git archive` to a temporary
           folder) ingest and answer the same run on the same server first, in a subprocess

    .venv/bin/python benchmarks/bench_store.py --checkpoints 11 --before bc70559   # starts its own server
    .venv/bin/python benchmarks/bench_store.py --checkpoints 11 --before 87832f7 --no-baselines \
        --union-shape 32x32seq --heap 3g   # + the union read at opt-6.7b shape (1,592,881 edges)
    NEO4J_URI=bolt://... NEO4J_PASSWORD=... .venv/bin/python benchmarks/bench_store.py --external

Prints a Markdown table; --json FILE also writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
if "--tree" in sys.argv:  # --before's subprocess: import another revision's queries/ and analysis/
    sys.path.insert(0, sys.argv[sys.argv.index("--tree") + 1])

from queries.api import CircuitDefinition, Store  # noqa: E402
from queries.components import Architecture  # noqa: E402
from queries.connection import open_driver, set_initial_password  # noqa: E402
from queries.settings import Neo4jSettings  # noqa: E402
from queries.prune import prune_keys  # noqa: E402
from queries.writer import CheckpointData, CircuitWriter, RunRecord  # noqa: E402


def synthetic_run(arch: Architecture, n_ckpt: int, seed: int = 0, frac: float = 0.05):
    """Heavy-tailed scores that drift from checkpoint to checkpoint; in_graph = top `frac`."""
    names = [n for n in arch.key_of if n.endswith(">") or not n.split("->")[1].startswith("a")]
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(len(names)) * np.exp(rng.standard_normal(len(names)) * 1.5)
    out = []
    scores = base
    for step in range(n_ckpt):
        if step:
            scores = scores + 0.35 * rng.standard_normal(len(names)) * np.abs(scores).mean()
        k = int(frac * len(names))
        top = np.argsort(-np.abs(scores), kind="stable")[:k]
        flags = np.zeros(len(names), dtype=bool)
        flags[top] = True
        out.append(CheckpointData(step=step * 25, names=names, scores=scores.tolist(),
                                  in_graph=flags.tolist(), level="qkv"))
    return names, out


PLAIN_SCHEMA = ["CREATE CONSTRAINT bench_edge IF NOT EXISTS FOR (e:BenchEdge) REQUIRE e.name IS UNIQUE",
                "CREATE CONSTRAINT bench_ck IF NOT EXISTS FOR (c:BenchCheckpoint) REQUIRE c.uid IS UNIQUE"]
PLAIN_EDGES = """
UNWIND $names AS name MERGE (:BenchEdge {name: name})
"""
PLAIN_WRITE = """
MATCH (c:BenchCheckpoint {uid: $uid})
UNWIND $rows AS row
MATCH (e:BenchEdge {name: row[0]})
CREATE (c)-[:SCORED {score: row[1], rank: row[2]}]->(e)
"""
MERGE_ONE = """
MERGE (e:BenchEdge {name: $name})
WITH e MATCH (c:BenchCheckpoint {uid: $uid})
MERGE (c)-[s:SCORED]->(e) SET s.score = $score, s.rank = $rank
"""


def ingest(driver, db, arch, cps, run_id: str) -> list[float]:
    """Our writer: seconds per checkpoint."""
    writer = CircuitWriter(driver, db)
    writer.ensure_run(RunRecord(id=run_id, model="synthetic pythia-1.4b shape", method="bench"), arch)
    times = []
    for cp in cps:
        t = time.perf_counter()
        writer.write_checkpoint(run_id, arch, cp)
        times.append(time.perf_counter() - t)
    return times


def bench_baselines(driver, db, names, cps) -> dict:
    """The plain design (2 checkpoints) and the per-edge merge loop (a 2,000-edge sample)."""
    for s in PLAIN_SCHEMA:
        driver.execute_query(s, database_=db)
    for i in range(0, len(names), 50_000):
        driver.execute_query(PLAIN_EDGES, names=names[i:i + 50_000], database_=db)
    plain = []
    for cp in cps[:2]:
        uid = secrets.randbits(60)
        t = time.perf_counter()
        driver.execute_query("CREATE (:BenchCheckpoint {uid: $uid})", uid=uid, database_=db)
        order = np.argsort(-np.abs(np.asarray(cp.scores)), kind="stable")
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(1, len(order) + 1)
        rows = [[n, s, int(r)] for n, s, r in zip(cp.names, cp.scores, rank)]
        for i in range(0, len(rows), 20_000):
            driver.execute_query(PLAIN_WRITE, uid=uid, rows=rows[i:i + 20_000], database_=db)
        plain.append(time.perf_counter() - t)
    sample = 2_000
    uid = secrets.randbits(60)
    driver.execute_query("CREATE (:BenchCheckpoint {uid: $uid})", uid=uid, database_=db)
    t = time.perf_counter()
    for n, s in zip(cps[0].names[:sample], cps[0].scores[:sample]):
        driver.execute_query(MERGE_ONE, name=n, uid=uid, score=s, rank=0, database_=db)
    loop = (time.perf_counter() - t) / sample * len(names)
    return {"plain_s": plain, "merge_loop_s_extrapolated": loop}


def python_side(store: Store, run: str, frac: float, arch: Architecture | None = None, level: str = "head"):
    """Pull the top-frac keys of every checkpoint and compute edge churn in Python: head level
    unpruned, or pruned (the library's vectorised rule, queries/prune.py) when `arch` is given."""
    rows = store.read("MATCH (c:Checkpoint {run: $run}) WHERE c.complete WITH c ORDER BY c.step "
                      "RETURN c.step AS step, c.keys[..toInteger(floor($f * c.n_edges))] AS keys",
                      run=run, f=frac)
    keys = [r["keys"] for r in rows]
    if arch is not None:
        keys = [[k[i] for i in prune_keys(arch, k)] for k in keys]
    sets = [set(k // 4 for k in ks) if level == "head" else set(ks) for ks in keys]
    return [len(b - a) + len(a - b) for a, b in zip(sets, sets[1:])]


def python_overlap(store: Store, a_uid, b_uid, ks):
    rows = store.read("UNWIND $uids AS u MATCH (c:Checkpoint {uid: u}) "
                      "RETURN c.keys[..c.n_in_graph * 2] AS keys, c.scores[..c.n_in_graph * 2] AS s, "
                      "c.in_graph AS g", uids=[a_uid, b_uid])
    tops = []
    for r in rows:
        agg = {}
        for rank in r["g"]:
            k, s = r["keys"][rank - 1], r["s"][rank - 1]
            agg[k // 4] = agg.get(k // 4, 0.0) + s
        tops.append([k for k, _ in sorted(agg.items(), key=lambda kv: (-abs(kv[1]), kv[0]))])
    return [len(set(tops[0][:k]) & set(tops[1][:k])) for k in ks]


def timed(fn, repeats=3):
    fn()  # warm
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


KS = [100, 500, 1000]
CHURN_PY = "churn (top 5%, head, unpruned)"  # the row Python computes too: the same keys, no pruning
PRUNED = {"churn (top 5%, head)": "head", "churn (top 5%, qkv)": "qkv"}  # Python prunes these too


def bench_queries(store: Store, run: str, n_ckpt: int, arch: Architecture | None = None):
    """Every library query on `run`, warm; returns ({query: s}, {query: s for the Python side}).
    With `arch`, Python also answers the pruned (re-selected) churn rows."""
    d = CircuitDefinition()  # the stored circuit (top 5%), head level
    top = CircuitDefinition("top_frac", 0.05, "head")
    first, last = f"{run}:0", f"{run}:{(n_ckpt - 1) * 25}"
    ra, rb = store.resolve(first), store.resolve(last)
    results = {
        "churn (in_graph, head)": timed(lambda: store.churn(run, d)),
        "churn (top 5%, head)": timed(lambda: store.churn(run, top)),
        CHURN_PY: timed(lambda: store.churn(run, CircuitDefinition("top_frac", 0.05, "head", False))),
        "churn (top 5%, qkv)": timed(lambda: store.churn(run, CircuitDefinition("top_frac", 0.05, "qkv"))),
        "change-rate": timed(lambda: store.change_rate(run, d)),
        "per-layer": timed(lambda: store.per_layer(first, last, d)),
        "diff (95th pct)": timed(lambda: store.diff(first, last, d)),
        "overlap": timed(lambda: store.overlap(first, last, d, KS)),
        "jaccard": timed(lambda: store.jaccard(first, last, d)),
        "critical-layers": timed(lambda: store.critical_layers(first, last, d)),
        "node-bound": timed(lambda: store.node_bound(first, last, d)),
        "union (read side)": timed(lambda: store.union_edges(first, last, d, None)),
    }
    py = {CHURN_PY: timed(lambda: python_side(store, run, 0.05)),
          "overlap": timed(lambda: python_overlap(store, ra.uid, rb.uid, KS))}
    if arch is not None:
        for row, level in PRUNED.items():
            py[row] = timed(lambda: python_side(store, run, 0.05, arch, level))
            cy = [t["edges_changed"] for t in results[row][1]["transitions"]]
            assert cy == py[row][1], (row, cy, py[row][1])
    for row in (CHURN_PY, "churn (in_graph, head)"):  # the stored circuit is the top 5%, unpruned
        cy_churn = [t["edges_changed"] for t in results[row][1]["transitions"]]
        assert cy_churn == py[CHURN_PY][1], (row, cy_churn, py[CHURN_PY][1])
    cy_ov = [o["overlap"] for o in results["overlap"][1]["overlap"]]
    assert cy_ov == py["overlap"][1], (cy_ov, py["overlap"][1])
    return {k: v[0] for k, v in results.items()}, {k: v[0] for k, v in py.items()}


def store_bytes(server) -> int:
    """Bytes of the server's store files, flushed: Community has no checkpoint procedure, so the server
    is stopped (a clean stop checkpoints) and started again. Transaction logs are excluded."""
    server.stop()
    size = sum(f.stat().st_size for f in (server.home / "data" / "databases").rglob("*") if f.is_file())
    server.start(timeout=180)
    return size


def start_server(heap: str):
    from queries.server.local import LocalServer, free_port
    home = Path(tempfile.mkdtemp(prefix="circuitshift-bench-"))
    server = LocalServer(home, bolt_port=free_port(), http_port=free_port(), heap=heap)
    status = server.start(timeout=180)
    password = secrets.token_urlsafe(16)
    set_initial_password(status.bolt_uri, password)
    return server, Neo4jSettings(uri=status.bolt_uri, password=password)


def measure_side(driver, db, arch, cps, run: str) -> dict:
    """Ingest `cps` as run `run` and time every query on it, with this process's queries/."""
    times = ingest(driver, db, arch, cps, run)
    queries, python = bench_queries(Store(driver, db), run, len(cps), arch)
    return {"ingest_s": times, "edges": sum(len(cp.names) for cp in cps), "queries": queries,
            "python": python}


def parse_shape(text: str) -> Architecture:
    """'32x32seq' (opt-6.7b: 32 layers, 32 heads, sequential) or '24x16' (parallel)."""
    seq = text.endswith("seq")
    layers, heads = text.removesuffix("seq").split("x")
    return Architecture(int(layers), int(heads), not seq)


def bench_union(driver, db, shape: str, run: str) -> dict:
    """Two checkpoints of `shape` written as run `run`; the union read of their stored circuits
    (head level, warm, median of 3) and the ingest seconds of each."""
    arch = parse_shape(shape)
    _, cps = synthetic_run(arch, 2, seed=1)
    times = ingest(driver, db, arch, cps, run)
    store = Store(driver, db)
    union_s, rows = timed(lambda: store.union_edges(f"{run}:0", f"{run}:25", CircuitDefinition(), None))
    return {"shape": shape, "edges": arch.n_edges("qkv"), "ingest_s": times, "union_s": union_s,
            "union_edges": len(rows[1])}


def run_before(rev: str, settings: Neo4jSettings, args, union: bool = False) -> dict:
    """REV's queries/ and analysis/ measure the same run (as run 'before') in a subprocess; with
    `union`, only the union read at --union-shape (run 'before-union')."""
    work = Path(tempfile.mkdtemp(prefix="circuitshift-before-"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "queries", "analysis"],
                             capture_output=True)
    if archive.returncode:
        raise SystemExit(f"--before {rev}: git archive failed: {archive.stderr.decode()[-500:]}")
    subprocess.run(["tar", "-x", "-C", str(work)], input=archive.stdout, check=True)
    env = {**os.environ, "NEO4J_URI": settings.uri, "NEO4J_PASSWORD": settings.resolved_password()}
    cmd = [sys.executable, __file__, "--external", "--tree", str(work), "--side-json", str(work / "side.json"),
           "--run-id", "before", "--checkpoints", str(args.checkpoints), "--layers", str(args.layers),
           "--heads", str(args.heads)] + (["--sequential"] if args.sequential else []) + (
               ["--union-shape", args.union_shape, "--union-only"] if union else [])
    subprocess.run(cmd, env=env, check=True, cwd=str(ROOT))
    return json.loads((work / "side.json").read_text())


def print_tables(arch, args, ours: dict, base: dict | None, before: dict | None) -> None:
    e = ours["edges"] // args.checkpoints
    rev = f"before ({args.before})"
    print(f"\n### Store at {arch.key} scale: {e:,} edges per checkpoint, {args.checkpoints} checkpoints")
    print(f"({os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.2f} at the end)\n")
    o = statistics.median(ours["ingest_s"][1:] or ours["ingest_s"])
    print("| ingest design | s per checkpoint (median, first excluded) | edges/s |\n|---|---|---|")
    if before:
        b = statistics.median(before["ingest_s"][1:] or before["ingest_s"])
        print(f"| circuitshift {rev} | {b:.2f} | {e / b:,.0f} |")
    print(f"| circuitshift (arrays + circuit relationships + head-level sets) | {o:.2f} | {e / o:,.0f} |")
    if base:
        p = statistics.median(base["plain_s"])
        print(f"| plain: node per edge + SCORED relationship, 20k UNWIND | {p:.2f} | {e / p:,.0f} |")
        m = base["merge_loop_s_extrapolated"]
        print(f"| per-edge merge loop (2,000-edge sample, extrapolated) | {m:.0f} | {e / m:,.0f} |")
    print(f"\nAll {args.checkpoints} checkpoints: " + ", ".join(f"{x:.2f}" for x in ours["ingest_s"]) + " s")
    head = "| query (warm, median of 3) |" + (f" {rev} (s) |" if before else "") + " Cypher (s) | pull + Python (s) |"
    print("\n" + head + "\n" + "|---" * (head.count("|") - 1) + "|")
    for k, v in ours["queries"].items():
        b = f" {before['queries'].get(k, float('nan')):.3f} |" if before else ""
        py = f"{ours['python'][k]:.3f}" if k in ours["python"] else ""
        print(f"| {k} |{b} {v:.3f} | {py} |")
    for side, fig in (("before", before), ("after", ours)):
        if fig and fig.get("bytes_per_edge") is not None:
            print(f"\nDisk ({side}): {fig['bytes_per_edge']:.1f} bytes per stored scored edge")
    if ours.get("union"):
        u = ours["union"]
        print(f"\nUnion read at {u['shape']} ({u['edges']:,} edges per checkpoint, {u['union_edges']:,} "
              "head-level edges in the union; warm, median of 3):")
        if before and before.get("union"):
            print(f"before {before['union']['union_s']:.3f} s, ingest " +
                  ", ".join(f"{x:.2f}" for x in before["union"]["ingest_s"]) + " s; ", end="")
        print(f"after {u['union_s']:.3f} s, ingest " + ", ".join(f"{x:.2f}" for x in u["ingest_s"]) + " s")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoints", type=int, default=11)
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--sequential", action="store_true", help="sequential attn/MLP (GPT-2/OPT style)")
    ap.add_argument("--external", action="store_true", help="use NEO4J_URI instead of a fresh server")
    ap.add_argument("--heap", default="2g")
    ap.add_argument("--before", default=None, metavar="REV", help="also measure REV's queries/, side by side")
    ap.add_argument("--no-baselines", action="store_true", help="skip the plain design and the merge loop")
    ap.add_argument("--union-shape", default=None, metavar="LxH[seq]",
                    help="also write 2 checkpoints of this shape and time the union read (32x32seq: opt-6.7b)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--union-only", action="store_true", help=argparse.SUPPRESS)  # --before's union side
    ap.add_argument("--run-id", default="bench", help=argparse.SUPPRESS)
    ap.add_argument("--tree", default=None, help=argparse.SUPPRESS)  # read before the imports above
    ap.add_argument("--side-json", default=None, help=argparse.SUPPRESS)  # one side only, as JSON
    args = ap.parse_args()

    arch = Architecture(args.layers, args.heads, not args.sequential)
    if args.layers * args.heads < 200:
        KS[:] = [10, 50, 100]  # small shapes have small circuits
    server, settings = (None, Neo4jSettings()) if args.external else start_server(args.heap)
    if args.side_json and args.union_only:  # --before's subprocess, union side
        with open_driver(settings) as driver:
            side = bench_union(driver, settings.database, args.union_shape, args.run_id + "-union")
        Path(args.side_json).write_text(json.dumps(side))
        return
    names, cps = synthetic_run(arch, args.checkpoints)
    if args.side_json:  # --before's subprocess: one side, on the server it is given
        with open_driver(settings) as driver:
            side = measure_side(driver, settings.database, arch, cps, args.run_id)
        Path(args.side_json).write_text(json.dumps(side))
        return
    try:
        sizes = [store_bytes(server)] if server else []
        before = run_before(args.before, settings, args) if args.before else None
        if before and server:
            sizes.append(store_bytes(server))
            before["bytes_per_edge"] = (sizes[-1] - sizes[-2]) / before["edges"]
        with open_driver(settings) as driver:
            ours = measure_side(driver, settings.database, arch, cps, args.run_id)
        if server:
            sizes.append(store_bytes(server))
            ours["bytes_per_edge"] = (sizes[-1] - sizes[-2]) / ours["edges"]
        with open_driver(settings) as driver:
            base = None if args.no_baselines else bench_baselines(driver, settings.database, names, cps)
        if args.union_shape:  # after the disk figures: these checkpoints are another shape
            del names, cps
            if before:
                before["union"] = run_before(args.before, settings, args, union=True)
            with open_driver(settings) as driver:
                ours["union"] = bench_union(driver, settings.database, args.union_shape, args.run_id + "-union")
        print_tables(arch, args, ours, base, before)
        if args.json:
            Path(args.json).write_text(json.dumps({"after": ours, "before": before, "baselines": base,
                                                   "load": os.getloadavg()}, indent=2))
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
