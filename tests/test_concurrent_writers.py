"""Four OS processes (not threads) writing different runs into one server at once, all starting on
the same signal and all MERGE-ing the same architecture's Component nodes: every run arrives whole,
nothing is duplicated, and the store's queries read each run as if it had been written alone."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np

from queries.api import CircuitDefinition, Store
from queries.writer import ranked_arrays
from tests.concurrent_writer import ARCH, checkpoints

N_PROCESSES = 4
N_CHECKPOINTS = 5


def test_four_processes_write_four_runs_at_once(db, cli_env, tmp_path):
    driver, database = db
    go = tmp_path / "go"
    script = os.path.join(os.path.dirname(__file__), "concurrent_writer.py")
    procs = [subprocess.Popen([sys.executable, script, f"proc{i}", str(N_CHECKPOINTS), str(100 + i), str(go)],
                              env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(N_PROCESSES)]
    time.sleep(3)  # let every process import and connect, then start them together
    go.touch()
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]

    records, _, _ = driver.execute_query(
        "MATCH (a:Architecture {key: $key}) OPTIONAL MATCH (c:Component {arch: $key}) "
        "RETURN count(DISTINCT a) AS archs, count(c) AS comps, count(DISTINCT c.ci) AS cis",
        key=ARCH.key, database_=database)
    assert records[0]["archs"] == 1
    assert records[0]["comps"] == records[0]["cis"] == ARCH.n_components  # no duplicate components

    store = Store(driver, database)
    for i in range(N_PROCESSES):
        run = f"proc{i}"
        expected = checkpoints(N_CHECKPOINTS, 100 + i)
        records, _, _ = driver.execute_query(
            "MATCH (c:Checkpoint {run: $run}) RETURN c.step AS step, c.complete AS complete, c.keys AS keys, "
            "c.in_graph AS in_graph ORDER BY step", run=run, database_=database)
        assert [r["step"] for r in records] == [cp.step for cp in expected]
        assert all(r["complete"] for r in records)
        for r, cp in zip(records, expected):
            arrays = ranked_arrays(ARCH, cp)
            assert list(r["keys"]) == list(arrays["keys"])
            assert list(r["in_graph"]) == list(arrays["in_graph"])
        churn = store.churn(run, CircuitDefinition())["transitions"]
        assert len(churn) == N_CHECKPOINTS - 1
        for t, (a, b) in zip(churn, zip(expected, expected[1:])):
            # churn compares head-level edges (q/k/v channels of one head pair count once)
            ea = {n.split("<")[0] for n, g in zip(a.names, a.in_graph) if g}
            eb = {n.split("<")[0] for n, g in zip(b.names, b.in_graph) if g}
            assert t["edges_added"] == len(eb - ea) and t["edges_removed"] == len(ea - eb)
    n_edges, _, _ = driver.execute_query("MATCH ()-[e:CIRCUIT_EDGE]->() RETURN count(e) AS n", database_=database)
    assert n_edges[0]["n"] == sum(int(np.sum(cp.in_graph)) for i in range(N_PROCESSES)
                                  for cp in checkpoints(N_CHECKPOINTS, 100 + i))
