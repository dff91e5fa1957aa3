"""Spool and replay (queries/spool.py) against a real Neo4j server of our own that we stop, SIGKILL,
restart read-only and re-key: checkpoints written while the store is away are spooled, never lost, and
land in the store exactly once, identical to an uninterrupted write."""

from __future__ import annotations

import gzip
import json
import os
import random
import subprocess
import threading
import time

import pytest
from neo4j import GraphDatabase

from analysis.errors import UserError
from faults import ARCH, PrivateServer, census, contents, run_record, synthetic, train_like
from queries.server.local import free_port
from queries.spool import SpoolingWriter, pending, replay, store_unavailable
from queries.spool_files import run_folder, spool_checkpoint
from queries.writer import CheckpointData, CircuitWriter

DB = "neo4j"
STEPS = [10 * i for i in range(16)]


@pytest.fixture(scope="module")
def ps(tmp_path_factory):
    """Our own server (the fault tests kill it), with run 'ref' written directly, uninterrupted."""
    server = PrivateServer(tmp_path_factory.mktemp("spool-neo4j"))
    server.start()
    with server.driver() as drv:
        writer = CircuitWriter(drv, DB)
        writer.ensure_run(run_record("ref"), ARCH)
        for step in STEPS:
            writer.write_checkpoint("ref", ARCH, synthetic(ARCH, step))
        server.ref = contents(drv, DB, "ref")
    try:
        yield server
    finally:
        server.stop()


def dead_driver():
    """A driver to a loopback port nothing listens on: the store is unreachable."""
    return GraphDatabase.driver(f"bolt://127.0.0.1:{free_port()}", auth=("neo4j", "unused"),
                                connection_timeout=2, max_transaction_retry_time=1)


def assert_exactly_once(drv, run_id, steps, ref):
    rows = census(drv, DB, run_id)
    assert [r["step"] for r in rows] == sorted(steps), rows  # one node per step: no copy, no leftover
    assert all(r["complete"] and r["rels"] == r["n_in_graph"] for r in rows), rows
    assert contents(drv, DB, run_id) == {s: ref[s] for s in steps}


def test_server_down_for_the_whole_run_then_read_only_then_back(ps, tmp_path):
    spool = tmp_path / "spool"
    ps.stop()
    with ps.driver() as drv:
        w = SpoolingWriter(CircuitWriter(drv, DB), spool)
        t0 = time.perf_counter()
        w.ensure_run(run_record("down"), ARCH)  # cannot reach the store: remembered, done later
        assert w.complete_steps("down") == []
        for step in STEPS[:3]:
            assert w.write_checkpoint("down", ARCH, synthetic(ARCH, step)) is None
        assert time.perf_counter() - t0 < 10  # one refused connection each, not the driver's retries
        assert "ServiceUnavailable" in w.unavailable
        assert w.complete_steps("down") == STEPS[:3]  # spooled steps count: training does not rescore
        assert [(e.run, e.step) for e in pending(spool)] == [("down", s) for s in STEPS[:3]]
        with pytest.raises(UserError):  # bad data still raises while the store is away
            w.write_checkpoint("down", ARCH, CheckpointData(STEPS[3], ["input->m0"], [1.0, 2.0], [True]))

        ps.restart(read_only=True)  # back, but refusing writes: still spooled, nothing lost
        assert w.write_checkpoint("down", ARCH, synthetic(ARCH, STEPS[3])) is None
        assert "ReadOnly" in w.unavailable
        assert len(w.flush()) == 4
        assert census(drv, DB, "down") == []

        ps.restart()
        assert w.flush() == []
        assert pending(spool) == [] and not run_folder(spool, "down").exists()
        assert_exactly_once(drv, "down", STEPS[:4], ps.ref)
        assert w.complete_steps("down") == STEPS[:4]


def kill_trial(ps, spool, run_id, rng, steps=STEPS, pace=0.75) -> dict:
    """Write `steps` while the server is SIGKILLed at a random moment and restarted; then flush."""
    with ps.driver() as drv:
        writer = SpoolingWriter(CircuitWriter(drv, DB), spool)
        errors: list = []
        job = threading.Thread(target=train_like, args=(writer, run_id, steps, pace, errors))
        job.start()
        time.sleep(rng.uniform(0.1, 3.0))
        ps.kill()
        killed = time.perf_counter()
        time.sleep(rng.uniform(0.0, 1.0))
        ps.start()
        back = time.perf_counter()
        job.join()
        assert errors == []
        left = writer.flush()
        drained = time.perf_counter()
        assert left == [] and writer.complete_steps(run_id) == sorted(steps)
        assert pending(spool, run_id) == []
        assert_exactly_once(drv, run_id, steps, ps.ref)
    return {"restart_s": back - killed, "drain_s": drained - back}


def test_server_killed_and_restarted_during_writes(ps, tmp_path):
    rng = random.Random(20)
    trials = int(os.environ.get("CIRCUITSHIFT_FAULT_TRIALS", "2"))
    for trial in range(trials):
        t0 = time.perf_counter()
        figures = kill_trial(ps, tmp_path / "spool", f"killed{trial}", rng)
        print(f"trial {trial}: {time.perf_counter() - t0:.1f} s", figures)


def test_password_rotated_mid_run_is_spooled_and_replayed_with_the_new_one(ps, tmp_path):
    spool = tmp_path / "spool"
    drv = ps.driver()
    try:
        w = SpoolingWriter(CircuitWriter(drv, DB), spool)
        w.ensure_run(run_record("rotated"), ARCH)
        assert w.write_checkpoint("rotated", ARCH, synthetic(ARCH, 0)) is not None
        new = ps.rotate_password()
        assert w.write_checkpoint("rotated", ARCH, synthetic(ARCH, 10)) is None
        assert w.write_checkpoint("rotated", ARCH, synthetic(ARCH, 20)) is None
        assert "Unauthorized" in w.unavailable
        assert w.complete_steps("rotated") == [0, 10, 20]
        assert len(w.flush()) == 2  # the old password still fails: kept, not lost
    finally:
        drv.close()
    with ps.driver(new) as fresh:
        try:
            report = replay(fresh, DB, spool, "rotated")
        except UserError as exc:  # the old login's failures may have locked the user for a few seconds
            assert "AuthenticationRateLimit" in str(exc) and len(pending(spool, "rotated")) == 2
            time.sleep(6)  # dbms.security.auth_lock_time (5 s by default)
            report = replay(fresh, DB, spool, "rotated")
        assert [e.step for e in report.written] == [10, 20] and report.remaining == ()
        assert_exactly_once(fresh, "rotated", [0, 10, 20], ps.ref)


def test_replay_skips_a_checkpoint_the_store_already_has(ps, tmp_path):
    """A write that landed but whose answer was lost is spooled too: replay must not duplicate it."""
    spool = tmp_path / "spool"
    with ps.driver() as drv:
        CircuitWriter(drv, DB).ensure_run(run_record("landed"), ARCH)
        CircuitWriter(drv, DB).write_checkpoint("landed", ARCH, synthetic(ARCH, 0))
        for step in (0, 10):
            spool_checkpoint(spool, run_record("landed"), ARCH, synthetic(ARCH, step), "answer lost")
        report = replay(drv, DB, spool, "landed")
        assert [e.step for e in report.skipped] == [0] and [e.step for e in report.written] == [10]
        assert pending(spool) == []
        assert_exactly_once(drv, "landed", [0, 10], ps.ref)


def _spool_two(spool, run_id="hurt", config_hash="cfg-a"):
    with dead_driver() as drv:
        w = SpoolingWriter(CircuitWriter(drv, DB), spool)
        w.ensure_run(run_record(run_id, config_hash), ARCH)
        for step in (0, 10):
            w.write_checkpoint(run_id, ARCH, synthetic(ARCH, step))
    return pending(spool, run_id)


def _rewrite(path, header_change=None, payload_change=None):
    head, _, payload = gzip.decompress(path.read_bytes()).partition(b"\n")
    header = json.loads(head)
    if header_change:
        header.update(header_change)
    if payload_change:
        payload = payload_change(payload)
    path.write_bytes(gzip.compress(json.dumps(header).encode() + b"\n" + payload))


DAMAGE = {
    "checksum": lambda p: _rewrite(p, payload_change=lambda b: b.replace(b'"accuracy":', b'"accuracy":1')),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "not-json": lambda p: p.write_bytes(gzip.compress(b"this is no spool file")),
    "not-gzip": lambda p: p.write_bytes(b"\x00garbage" * 10),
    "format": lambda p: _rewrite(p, header_change={"version": 2}),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_spool_file_is_one_line_kept_and_nothing_written(ps, tmp_path, damage):
    entries = _spool_two(tmp_path / "spool", run_id=f"hurt-{damage}")
    DAMAGE[damage](entries[0].path)
    before = entries[0].path.read_bytes()
    with ps.driver() as drv:
        with pytest.raises(UserError) as err:
            replay(drv, DB, tmp_path / "spool", f"hurt-{damage}")
        msg = str(err.value)
        assert "\n" not in msg and str(entries[0].path) in msg
        assert entries[0].path.read_bytes() == before  # kept as it was
        assert census(drv, DB, f"hurt-{damage}") == []  # nothing of it (nor after it) written
        assert len(pending(tmp_path / "spool", f"hurt-{damage}")) == 2


def test_damaged_spool_file_stops_a_job_at_its_start_or_after_saving_the_checkpoint(ps, tmp_path):
    entries = _spool_two(tmp_path / "spool", run_id="hurt-job")
    DAMAGE["checksum"](entries[0].path)
    with ps.driver() as drv:
        w = SpoolingWriter(CircuitWriter(drv, DB), tmp_path / "spool")
        with pytest.raises(UserError, match="damaged") as err:  # a rerun is refused before training
            w.ensure_run(run_record("hurt-job"), ARCH)
        assert str(entries[0].path) in str(err.value)
        with pytest.raises(UserError, match="damaged"):  # found mid-run: the new checkpoint is kept
            w.write_checkpoint("hurt-job", ARCH, synthetic(ARCH, 20))
        assert [r["step"] for r in census(drv, DB, "hurt-job")] == [20]
        assert [e.step for e in pending(tmp_path / "spool", "hurt-job")] == [0, 10]


def test_spool_of_another_run_or_other_settings_is_refused(ps, tmp_path):
    spool = tmp_path / "spool"
    other = _spool_two(spool, "run-x")
    mine = _spool_two(spool, "run-y")
    other[0].path.replace(mine[0].path)  # run-x's step 0 put in run-y's place
    with ps.driver() as drv:
        with pytest.raises(UserError, match="run 'run-x', not of 'run-y'") as err:
            replay(drv, DB, spool, "run-y")
        assert "\n" not in str(err.value) and census(drv, DB, "run-y") == []
        # the store already has run-z with other settings: its spool is refused, kept
        CircuitWriter(drv, DB).ensure_run(run_record("run-z", "cfg-stored"), ARCH)
        entries = _spool_two(spool, "run-z", "cfg-other")
        with pytest.raises(UserError, match="other settings") as err:
            replay(drv, DB, spool, "run-z")
        assert str(entries[0].path) in str(err.value) and "\n" not in str(err.value)
        assert census(drv, DB, "run-z") == [] and len(pending(spool, "run-z")) == 2
    # a job of run-z with other settings than its spooled checkpoints is refused before training
    with dead_driver() as drv, pytest.raises(UserError, match="spooled .* other settings"):
        SpoolingWriter(CircuitWriter(drv, DB), spool).ensure_run(run_record("run-z", "cfg-new"), ARCH)


def test_unreachable_store_on_replay_is_one_line_and_keeps_the_spool(tmp_path):
    entries = _spool_two(tmp_path / "spool")
    with dead_driver() as drv, pytest.raises(UserError, match="2 checkpoint.* stay spooled") as err:
        replay(drv, DB, tmp_path / "spool")
    assert "\n" not in str(err.value) and all(e.path.exists() for e in entries)


def test_programming_errors_are_not_taken_for_an_unavailable_store(ps):
    with ps.driver() as drv:
        try:
            drv.execute_query("RETURN $x +", x=1, database_=DB)
        except Exception as exc:  # noqa: BLE001 - a real CypherSyntaxError from the server
            assert not store_unavailable(exc)
    with dead_driver() as drv:
        try:
            drv.verify_connectivity()
        except Exception as exc:  # noqa: BLE001 - a real ServiceUnavailable
            assert store_unavailable(exc)
    assert not store_unavailable(UserError("bad data")) and not store_unavailable(ValueError())


def test_full_spool_disk_is_one_line_and_leaves_nothing_partial(tmp_path):
    """A tiny tmpfs as the spool: when it fills up the job gets one line, no partial or temp file."""
    spool = tmp_path / "spool"
    spool.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(spool)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)")
    try:
        with open(spool / "filler", "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError:
                pass
        with dead_driver() as drv:
            w = SpoolingWriter(CircuitWriter(drv, DB), spool)
            w.ensure_run(run_record("full"), ARCH)
            with pytest.raises(UserError, match="cannot spool checkpoint 0 .*No space left") as err:
                w.write_checkpoint("full", ARCH, synthetic(ARCH, 0))
        assert "\n" not in str(err.value)
        leftovers = [p.name for p in spool.rglob("*") if p.is_file() and p.name != "filler"]
        assert leftovers == [] and pending(spool) == []
    finally:
        subprocess.run(["umount", str(spool)], check=False)
