"""Writes off the training path (queries/background.py), through the real writer and a real server:
order kept, the queue bounded, errors raised at the next call or at close, and a process killed
mid-write still leaves no partial checkpoint."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest
from neo4j import GraphDatabase

from analysis.errors import UserError
from conftest import REPO
from faults import ARCH, census, contents, run_record, synthetic
from queries.background import BackgroundWriter
from queries.server.local import free_port
from queries.spool import SpoolingWriter, pending
from queries.writer import CheckpointData, CircuitWriter

STEPS = [0, 10, 20, 30, 40, 50]


def finished_order(driver, database, run_id):
    recs, _, _ = driver.execute_query("MATCH (c:Checkpoint {run: $run}) WHERE c.complete "
                                      "RETURN c.step AS step ORDER BY c.finished", run=run_id,
                                      database_=database)
    return [r["step"] for r in recs]


def test_background_spooling_writer_equals_a_direct_write_in_order(db, tmp_path):
    driver, database = db
    direct = CircuitWriter(driver, database)
    direct.ensure_run(run_record("direct"), ARCH)
    for step in STEPS:
        direct.write_checkpoint("direct", ARCH, synthetic(ARCH, step))
    bw = BackgroundWriter(SpoolingWriter(CircuitWriter(driver, database), tmp_path / "spool"))
    bw.ensure_run(run_record("bg"), ARCH)
    assert bw.complete_steps("bg") == []
    for step in STEPS:
        assert bw.write_checkpoint("bg", ARCH, synthetic(ARCH, step)) is None  # returns at once
    assert bw.close() == []  # waited for the queue; nothing left spooled
    assert [step for _, step, _ in bw.written] == STEPS and all(uid for _, _, uid in bw.written)
    assert finished_order(driver, database, "bg") == STEPS  # written in the order handed over
    assert contents(driver, database, "bg") == contents(driver, database, "direct")
    rows = census(driver, database, "bg")
    assert [r["step"] for r in rows] == STEPS and all(r["rels"] == r["n_in_graph"] for r in rows)
    with pytest.raises(RuntimeError, match="closed"):
        bw.write_checkpoint("bg", ARCH, synthetic(ARCH, 60))


def _wait_idle(bw, timeout=30.0):
    deadline = time.monotonic() + timeout
    while bw.queued and time.monotonic() < deadline:
        time.sleep(0.02)
    assert bw.queued == 0


def test_worker_error_is_raised_at_the_next_call_and_at_close(db, tmp_path):
    driver, database = db
    bw = BackgroundWriter(CircuitWriter(driver, database))
    bw.ensure_run(run_record("errs"), ARCH)
    bad = CheckpointData(10, synthetic(ARCH, 10).names, synthetic(ARCH, 10).scores, [False] * 42)
    bw.write_checkpoint("errs", ARCH, synthetic(ARCH, 0))
    bw.write_checkpoint("errs", ARCH, bad)  # the writer refuses it in the worker thread
    _wait_idle(bw)
    with pytest.raises(UserError, match="checkpoint 10 .* no edge in its circuit"):
        bw.write_checkpoint("errs", ARCH, synthetic(ARCH, 20))  # raised here; 20 not taken
    bw.write_checkpoint("errs", ARCH, synthetic(ARCH, 20))
    bw.write_checkpoint("errs", ARCH, CheckpointData(30, ["input->m0"], [1.0, 2.0], [True]))
    with pytest.raises(UserError, match="differ in length"):
        bw.close()  # the last one's error is not lost either
    assert [r["step"] for r in census(driver, database, "errs")] == [0, 20]


class GatedWriter:
    """The real CircuitWriter, held at a gate before each write: a store that is slow to answer."""

    def __init__(self, writer):
        self.writer, self.gate, self.entered = writer, threading.Event(), threading.Event()

    def ensure_run(self, run, arch):
        self.writer.ensure_run(run, arch)

    def complete_steps(self, run_id):
        return self.writer.complete_steps(run_id)

    def write_checkpoint(self, run_id, arch, data):
        self.entered.set()
        self.gate.wait()
        return self.writer.write_checkpoint(run_id, arch, data)


def test_a_full_queue_blocks_the_producer_instead_of_growing(db):
    driver, database = db
    gated = GatedWriter(CircuitWriter(driver, database))
    bw = BackgroundWriter(gated, maxsize=1)
    bw.ensure_run(run_record("slow"), ARCH)
    bw.write_checkpoint("slow", ARCH, synthetic(ARCH, 0))  # taken by the worker, held at the gate
    assert gated.entered.wait(10)
    bw.write_checkpoint("slow", ARCH, synthetic(ARCH, 10))  # fills the queue
    third = threading.Thread(target=bw.write_checkpoint, args=("slow", ARCH, synthetic(ARCH, 20)))
    third.start()
    third.join(0.5)
    assert third.is_alive() and bw.queued == 2  # blocked: at most 1 queued + 1 being written
    gated.gate.set()
    third.join(30)
    assert not third.is_alive()
    bw.close()
    assert finished_order(driver, database, "slow") == [0, 10, 20]
    with pytest.raises(ValueError):
        BackgroundWriter(gated, maxsize=0)


def test_background_over_an_unreachable_store_spools_everything(tmp_path):
    with GraphDatabase.driver(f"bolt://127.0.0.1:{free_port()}", auth=("neo4j", "x"),
                              connection_timeout=2, max_transaction_retry_time=1) as drv:
        with BackgroundWriter(SpoolingWriter(CircuitWriter(drv, "neo4j"), tmp_path / "spool")) as bw:
            bw.ensure_run(run_record("away"), ARCH)
            for step in STEPS:
                bw.write_checkpoint("away", ARCH, synthetic(ARCH, step))
            assert bw.complete_steps("away") == STEPS
            left = bw.close()
    assert [e.step for e in left] == STEPS == [e.step for e in pending(tmp_path / "spool", "away")]


CRASH_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
from faults import run_record, synthetic
from queries.background import BackgroundWriter
from queries.components import Architecture
from queries.connection import open_driver
from queries.spool import SpoolingWriter
from queries.writer import CircuitWriter
arch = Architecture(6, 8, True)
bw = BackgroundWriter(SpoolingWriter(CircuitWriter(open_driver(), None, batch_size=50), sys.argv[2]))
bw.ensure_run(run_record("bgcrash"), arch)
done = set(bw.complete_steps("bgcrash"))
for step in range(6):
    if step not in done:
        bw.write_checkpoint("bgcrash", arch, synthetic(arch, step, frac=0.3))
bw.close()
print("done")
"""


def test_killed_background_writer_leaves_no_partial_checkpoint(db, cli_env, tmp_path):
    driver, database = db
    env = dict(cli_env, PYTHONPATH=str(REPO))
    args = [sys.executable, "-c", CRASH_SCRIPT, str(REPO / "tests"), str(tmp_path / "spool")]
    rng = random.Random(18)
    for _ in range(int(os.environ.get("CIRCUITSHIFT_CRASH_TRIALS", "2"))):
        p = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
        time.sleep(rng.uniform(1.5, 4.0))
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        for row in census(driver, database, "bgcrash"):  # what a query can see is always whole
            assert not row["complete"] or row["rels"] == row["n_in_graph"]
    rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-1000:]
    rows = census(driver, database, "bgcrash")
    assert [r["step"] for r in rows] == list(range(6))  # each once, leftovers of killed writes gone
    assert all(r["complete"] and r["rels"] == r["n_in_graph"] for r in rows)
