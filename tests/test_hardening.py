"""Reliability and security: injection, hostile input, concurrency, crash safety, read-only databases."""

from __future__ import annotations

import ast
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO, run_cli
from analysis.errors import UserError
from queries.api import CircuitDefinition, Store
from queries.components import Architecture
from queries.writer import CheckpointData, CircuitWriter, RunRecord

EXECUTORS = {"execute_query", "run", "read", "_run"}


def _python_files():
    for folder in ("ingest", "analysis", "queries", "benchmarks", "scripts"):
        yield from (REPO / folder).rglob("*.py")


def test_no_value_is_ever_formatted_into_cypher():
    """Every statement handed to the driver is a constant or a name: never an f-string, `%` or
    `.format(...)` built at the call site."""
    offenders = []
    for path in _python_files():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in EXECUTORS and node.args):
                continue
            first = node.args[0]
            built = (isinstance(first, ast.JoinedStr)
                     or (isinstance(first, ast.BinOp) and isinstance(first.op, (ast.Mod, ast.Add))
                         and not (isinstance(first.left, ast.Constant) and isinstance(first.right, ast.Constant)))
                     or (isinstance(first, ast.Call) and isinstance(first.func, ast.Attribute)
                         and first.func.attr in ("format", "replace")))
            if built:
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    # the deliberate exceptions: `EXPLAIN ` + the user's own ad hoc statement (read-only checked), and the
    # lab-store benchmark's `PROFILE ` + one of the named statements (a keyword, no value)
    offenders = [o for o in offenders
                 if not o.startswith(("queries/adhoc.py", "benchmarks/bench_lab_store.py"))]
    assert offenders == []


def test_statements_are_parameterized_constants():
    """Named statements are plain module-level strings that take values as $parameters."""
    import queries.cypher.questions as L
    import queries.cypher.writes as S
    names = [n for m in (L, S) for n, v in vars(m).items() if n.isupper() and isinstance(v, str)
             and not n.startswith("_")]
    assert len(names) >= 20
    for m in (L, S):
        for n, v in vars(m).items():
            if n.isupper() and isinstance(v, str) and ("MATCH" in v or "CREATE" in v):
                # a statement that selects by value takes it as a $parameter (RUNS lists everything)
                assert "$" in v or ("{" not in v and "WHERE" not in v.replace("WHERE c.complete", "")), n


HOSTILE = ["x' OR 1=1 //", "'}) DETACH DELETE n //", "\" RETURN 1 //", "${evil}", "MATCH (n) DETACH DELETE n",
           "run:with:colons", "ünïcødé-ラン", "a" * 5000, "", " ", "\x00nul", "1e309", "-1", "NaN"]


@pytest.fixture
def seeded(db):
    driver, database = db
    arch = Architecture(2, 1, True)
    w = CircuitWriter(driver, database)
    w.ensure_run(RunRecord(id="victim"), arch)
    for step in (0, 1):
        w.write_checkpoint("victim", arch, CheckpointData(step, ["input->a0.h0", "a0.h0->logits"],
                                                          [1.0, -2.0 + step], [True, True], level="head"))
    return driver, database


def _counts(driver, database):
    recs, _, _ = driver.execute_query("MATCH (n) RETURN count(n) AS n", database_=database)
    nodes = recs[0]["n"]
    recs, _, _ = driver.execute_query("MATCH ()-[e]->() RETURN count(e) AS n", database_=database)
    return nodes, recs[0]["n"]


def test_fuzz_hostile_strings_through_every_query(seeded):
    driver, database = seeded
    before = _counts(driver, database)
    store = Store(driver, database)
    d = CircuitDefinition()
    for s in HOSTILE:
        for call in (lambda: store.churn(s, d), lambda: store.change_rate(s, d),
                     lambda: store.per_layer(s + ":0", "victim:1", d), lambda: store.diff("victim:0", s, d),
                     lambda: store.overlap(s, "victim:1", d, [1]), lambda: store.jaccard("victim:0", s + ":1", d),
                     lambda: store.critical_layers(s + ":0", "victim:1", d), lambda: store.node_bound(s, s, d),
                     lambda: store.resolve(s)):
            with pytest.raises(UserError):
                call()
    assert _counts(driver, database) == before
    assert store.jaccard("victim:0", "victim:1", d)["edge_jaccard"] == 1.0  # still intact


def test_fuzz_hostile_strings_through_the_cli(seeded, cli_env):
    driver, database = seeded
    before = _counts(driver, database)
    for s in HOSTILE[:3]:
        for args in (["query", "churn", s], ["query", "overlap", s, "victim:1"],
                     ["cypher", "MATCH (c:Checkpoint {run: $r}) RETURN c.step", "--param", f"r={json.dumps(s)}"],
                     ["query", "union", "victim:0", "victim:1", "--as", s]):
            p = run_cli(args, env=cli_env)
            assert "Traceback" not in p.stderr, (args, p.stderr[-500:])
            if args[0] == "cypher":
                assert p.returncode == 0
            elif args[1] == "union" and ":" in s and s.rsplit(":", 1)[1].isdigit():
                pass  # a legal RUN:STEP name is stored as given, as a value
            else:
                assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, (args, p.stderr)
    nodes, rels = _counts(driver, database)
    assert (nodes, rels) == before


def test_four_concurrent_writers_all_complete(db):
    driver, database = db
    arch = Architecture(4, 4, True)
    names = [n for n in arch.key_of if n.endswith(">") or not n.split("->")[1].startswith("a")]
    errors = []

    def job(i):
        try:
            w = CircuitWriter(driver, database, batch_size=50)
            w.ensure_run(RunRecord(id=f"job{i}"), arch)
            rng = random.Random(i)
            for step in range(3):
                scores = [rng.gauss(0, 1) for _ in names]
                flags = [abs(s) > 1.5 for s in scores]
                w.write_checkpoint(f"job{i}", arch, CheckpointData(step, names, scores, flags))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=job, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    recs, _, _ = driver.execute_query(
        "MATCH (c:Checkpoint) WHERE c.complete RETURN c.run AS run, count(*) AS n, "
        "collect(DISTINCT c.n_edges) AS e ORDER BY run", database_=database)
    assert [(r["run"], r["n"], r["e"]) for r in recs] == [(f"job{i}", 3, [len(names)]) for i in range(4)]
    recs, _, _ = driver.execute_query("MATCH (c:Component) RETURN count(c) AS n", database_=database)
    assert recs[0]["n"] == arch.n_components  # shared components merged once, not duplicated


WRITER_SCRIPT = """
import os, random, sys
from queries.components import Architecture
from queries.connection import open_driver
from queries.writer import CheckpointData, CircuitWriter, RunRecord
arch = Architecture(6, 8, True)
names = [n for n in arch.key_of if n.endswith(">") or not n.split("->")[1].startswith("a")]
w = CircuitWriter(open_driver(), None, batch_size=200)
w.ensure_run(RunRecord(id="crash"), arch)
for step in range(4):
    rng = random.Random(step)
    scores = [rng.gauss(0, 1) for _ in names]
    done = set(w.complete_steps("crash"))
    if step not in done:
        w.write_checkpoint("crash", arch, CheckpointData(step, names, scores, [abs(s) > 1.0 for s in scores]))
print("done")
"""


def crash_trial(cli_env, delay: float) -> None:
    env = dict(cli_env, PYTHONPATH=str(REPO))
    p = subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    time.sleep(delay)
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
    p.wait()


def check_crash_state(driver, database):
    recs, _, _ = driver.execute_query(
        "MATCH (c:Checkpoint {run: 'crash'}) WHERE c.complete "
        "OPTIONAL MATCH ()-[e:CIRCUIT_EDGE {ck: c.uid}]->() "
        "RETURN c.step AS step, c.n_edges AS n, c.n_in_graph AS g, count(e) AS rels ORDER BY step",
        database_=database)
    return [r.data() for r in recs]


def test_killed_writers_leave_no_partial_or_duplicate_checkpoint(db, cli_env):
    """kill -9 a writer at random points; after a rerun: every checkpoint once, each one whole."""
    driver, database = db
    rng = random.Random(7)
    trials = int(os.environ.get("CIRCUITSHIFT_CRASH_TRIALS", "3"))
    for _ in range(trials):
        crash_trial(cli_env, rng.uniform(1.5, 5.0))
        for row in check_crash_state(driver, database):  # what is visible is always whole
            assert row["rels"] == row["g"] and row["n"] == Architecture(6, 8, True).n_edges("qkv")
    env = dict(cli_env, PYTHONPATH=str(REPO))
    rerun = subprocess.run([sys.executable, "-c", WRITER_SCRIPT], env=env, capture_output=True, text=True,
                           timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-1000:]
    rows = check_crash_state(driver, database)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert all(r["rels"] == r["g"] for r in rows)
    recs, _, _ = driver.execute_query("MATCH (c:Checkpoint {run: 'crash'}) RETURN count(c) AS n",
                                      database_=database)
    assert recs[0]["n"] == 4  # leftovers of killed writes are gone
    # circuit relationships are linked to their checkpoint by ck alone: none may outlive its node
    recs, _, _ = driver.execute_query(
        "MATCH ()-[e:CIRCUIT_EDGE]->() WHERE NOT EXISTS { MATCH (:Checkpoint {uid: e.ck}) } "
        "RETURN count(e) AS n", database_=database)
    assert recs[0]["n"] == 0


def test_read_only_database_gives_one_line(tmp_path):
    """A server whose databases are read-only: writes fail with one clear line, exit 2."""
    from queries.connection import set_initial_password
    from queries.server.local import LocalServer, free_port
    ports = dict(bolt_port=free_port(), http_port=free_port(), heap="512m")
    server = LocalServer(tmp_path / "ro", **ports)
    st = server.start(timeout=180)
    set_initial_password(st.bolt_uri, "read-only-test-pw")
    server.stop()  # restart with the user database read-only (created writable first, as in real life)
    server = LocalServer(tmp_path / "ro", **ports, extra_conf={"server.databases.read_only": "neo4j"})
    st = server.start(timeout=180)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NEO4J_")}
        env.update(NEO4J_URI=st.bolt_uri, NEO4J_PASSWORD="read-only-test-pw",
                   CIRCUITSHIFT_STATE_DIR=str(tmp_path / "state"))
        ref = REPO.parent / "shared" / "reference-circuits" / "graph_add_sub_mul_div_1.4b_epoch0.json"
        p = run_cli(["import", "eap-json", str(ref), "--run", "x", "--step", "0"], env=env)
        assert p.returncode == 2 and "Traceback" not in p.stderr
        assert len(p.stderr.strip().splitlines()) == 1 and "read" in p.stderr.lower(), p.stderr
    finally:
        server.stop()


def test_secrets_no_default_password_anywhere():
    compose = (REPO / "docker-compose.yml").read_text()
    assert "${NEO4J_PASSWORD:?" in compose
    for path in list(_python_files()) + [REPO / "docker-compose.yml", REPO / "scripts" / "setup.sh"]:
        text = path.read_text()
        for bad in ("password=\"neo4j\"", "NEO4J_PASSWORD=neo4j", "neo4j/neo4j", "password: neo4j"):
            assert bad not in text, (path, bad)
    from queries.settings import Neo4jSettings
    assert Neo4jSettings.model_fields["password"].default is None
