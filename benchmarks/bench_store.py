"""Circuit store benchmark: ingest throughput and warm query latency at Pythia-1.4B scale.

Synthetic scores of the Pythia-1.4B graph shape (24 layers x 16 heads, parallel: 231,493 q/k/v-level
edges per checkpoint), N checkpoints whose scores drift like a fine-tuning run's. Side by side:

  ingest   ours (rank-ordered arrays + the circuit as relationships) vs the plain design (a node per
           edge, one (:Checkpoint)-[:SCORED {score, rank}]->(:Edge) per scored edge, 20k-row UNWIND)
           vs a per-edge MERGE loop (one statement per edge; timed on a sample, it would take hours)
  queries  every library query, warm (median of 3), vs pulling the needed edges into Python and
           computing the same answer there

    .venv/bin/python benchmarks/bench_store.py --checkpoints 11             # starts its own server
    NEO4J_URI=bolt://... NEO4J_PASSWORD=... .venv/bin/python benchmarks/bench_store.py --external

Prints a Markdown table; --json FILE also writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from queries.api import CircuitDefinition, Store  # noqa: E402
from queries.components import Architecture  # noqa: E402
from queries.connection import open_driver, set_initial_password  # noqa: E402
from queries.settings import Neo4jSettings  # noqa: E402
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


def bench_ingest(driver, db, arch, names, cps):
    writer = CircuitWriter(driver, db)
    writer.ensure_run(RunRecord(id="bench", model="synthetic pythia-1.4b shape", method="bench"), arch)
    ours = []
    for cp in cps:
        t = time.perf_counter()
        writer.write_checkpoint("bench", arch, cp)
        ours.append(time.perf_counter() - t)
    # plain design
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
    # per-edge MERGE loop, on a sample
    sample = 2_000
    uid = secrets.randbits(60)
    driver.execute_query("CREATE (:BenchCheckpoint {uid: $uid})", uid=uid, database_=db)
    t = time.perf_counter()
    for n, s in zip(cps[0].names[:sample], cps[0].scores[:sample]):
        driver.execute_query(MERGE_ONE, name=n, uid=uid, score=s, rank=0, database_=db)
    loop = (time.perf_counter() - t) / sample * len(names)
    return {"edges_per_checkpoint": len(names), "ours_s": ours, "plain_s": plain,
            "merge_loop_s_extrapolated": loop}


def python_side(store: Store, run: str, frac: float):
    """Pull the top-frac keys of every checkpoint and compute churn in Python."""
    rows = store.read("MATCH (c:Checkpoint {run: $run}) WHERE c.complete WITH c ORDER BY c.step "
                      "RETURN c.step AS step, c.keys[..toInteger(floor($f * c.n_edges))] AS keys",
                      run=run, f=frac)
    sets = [set(k // 4 for k in r["keys"]) for r in rows]
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


def bench_queries(store: Store, n_ckpt: int):
    d = CircuitDefinition()  # the stored circuit (top 5%), head level
    top = CircuitDefinition("top_frac", 0.05, "head")
    first, last = "bench:0", f"bench:{(n_ckpt - 1) * 25}"
    ra, rb = store.resolve(first), store.resolve(last)
    results = {
        "churn (in_graph, head)": timed(lambda: store.churn("bench", d)),
        "churn (top 5%, head)": timed(lambda: store.churn("bench", top)),
        "churn (top 5%, qkv)": timed(lambda: store.churn("bench", CircuitDefinition("top_frac", 0.05, "qkv"))),
        "change-rate": timed(lambda: store.change_rate("bench", d)),
        "per-layer": timed(lambda: store.per_layer(first, last, d)),
        "diff (95th pct)": timed(lambda: store.diff(first, last, d)),
        "overlap": timed(lambda: store.overlap(first, last, d, KS)),
        "jaccard": timed(lambda: store.jaccard(first, last, d)),
        "critical-layers": timed(lambda: store.critical_layers(first, last, d)),
        "node-bound": timed(lambda: store.node_bound(first, last, d)),
        "union (read side)": timed(lambda: store.union_edges(first, last, d, None)),
    }
    py = {
        "churn (top 5%, head)": timed(lambda: python_side(store, "bench", 0.05)),
        "overlap": timed(lambda: python_overlap(store, ra.uid, rb.uid, KS)),
    }
    # the Python side must agree with Cypher
    cy_churn = [t["edges_changed"] for t in results["churn (top 5%, head)"][1]["transitions"]]
    assert cy_churn == py["churn (top 5%, head)"][1], (cy_churn, py["churn (top 5%, head)"][1])
    cy_ov = [o["overlap"] for o in results["overlap"][1]["overlap"]]
    assert cy_ov == py["overlap"][1], (cy_ov, py["overlap"][1])
    return {k: v[0] for k, v in results.items()}, {k: v[0] for k, v in py.items()}


def disk_usage(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoints", type=int, default=11)
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--sequential", action="store_true", help="sequential attn/MLP (GPT-2/OPT style)")
    ap.add_argument("--external", action="store_true", help="use NEO4J_URI instead of a fresh server")
    ap.add_argument("--heap", default="2g")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    arch = Architecture(args.layers, args.heads, not args.sequential)
    if args.layers * args.heads < 200:
        KS[:] = [10, 50, 100]  # small shapes have small circuits
    server = None
    if args.external:
        settings = Neo4jSettings()
    else:
        from queries.server.local import LocalServer, free_port
        home = Path(tempfile.mkdtemp(prefix="circuitshift-bench-"))
        server = LocalServer(home, bolt_port=free_port(), http_port=free_port(), heap=args.heap)
        status = server.start(timeout=180)
        password = secrets.token_urlsafe(16)
        set_initial_password(status.bolt_uri, password)
        settings = Neo4jSettings(uri=status.bolt_uri, password=password)
    driver = open_driver(settings)
    db = settings.database
    try:
        t = time.perf_counter()
        names, cps = synthetic_run(arch, args.checkpoints)
        gen_s = time.perf_counter() - t
        ing = bench_ingest(driver, db, arch, names, cps)
        ours, py = bench_queries(Store(driver, db), args.checkpoints)
        e = ing["edges_per_checkpoint"]
        print(f"\n### Store at {arch.key} scale: {e:,} edges per checkpoint, {args.checkpoints} checkpoints")
        print(f"(synthetic scores generated in {gen_s:.1f} s; {os.cpu_count()} CPU cores)\n")
        print("| ingest design | s per checkpoint | edges/s |")
        print("|---|---|---|")
        o = statistics.median(ing["ours_s"])
        p = statistics.median(ing["plain_s"])
        print(f"| circuitshift (rank-ordered arrays + circuit relationships) | {o:.2f} | {e / o:,.0f} |")
        print(f"| plain: node per edge + SCORED relationship, 20k UNWIND | {p:.2f} | {e / p:,.0f} |")
        print(f"| per-edge merge loop, one statement per edge (2,000-edge sample, extrapolated) | {ing['merge_loop_s_extrapolated']:.0f} "
              f"| {e / ing['merge_loop_s_extrapolated']:,.0f} |")
        print(f"\nAll {args.checkpoints} checkpoints: " + ", ".join(f"{x:.2f}" for x in ing["ours_s"]) + " s")
        print("\n| query (warm, median of 3) | Cypher in Neo4j (s) | pull edges + Python (s) |")
        print("|---|---|---|")
        for k, v in ours.items():
            print(f"| {k} | {v:.3f} | {py[k]:.3f} |" if k in py else f"| {k} | {v:.3f} | |")
        if server is not None:
            print(f"\nDisk: {disk_usage(server.home / 'data') / 2**20:.0f} MiB for the database folder")
        if args.json:
            Path(args.json).write_text(json.dumps({"ingest": ing, "queries": ours, "python": py}, indent=2))
    finally:
        driver.close()
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
