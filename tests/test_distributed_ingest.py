"""`torchrun --nproc_per_node 2 --no-python circuitshift ingest run` on a tiny model (gloo, CPU): DDP
training as the Trainer does it, each checkpoint scored in shards and all-reduced, rank 0 alone
writing; and the same under `accelerate launch`. Their step-0 scores equal a 1-process run's (same
weights) within 1e-6, the trained weights equal a 2-process run's with the scoring switched off
(tests/dist_noscore.py), and a 2-process run killed midway resumes to the uninterrupted run's checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ingested import EXAMPLES, known_accuracy_data, tiny_model
from queries.api import Store
from queries.server.local import free_port

BIN = Path(sys.executable).parent
TESTS = Path(__file__).parent
MAX_STEPS = 6
STEPS = [0, 2, 4, 6]


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist_ingest")
    model = tiny_model(root)
    data = root / "data"
    known_accuracy_data(model, data)
    return model, data


def _args(model, data, run_id):
    return ["ingest", "run", "--model", str(model), "--data", str(data), "--run-id", run_id, "--method", "lora",
            "--rank", "2", "--lr", "5e-3", "--max-steps", str(MAX_STEPS), "--checkpoints", "3", "--batch-size", "4",
            "--grad-accum", "1", "--warmup-steps", "1", "--seed", "3", "--ig-steps", "2", "--score-batch-size", "4",
            "--max-examples", str(EXAMPLES), "--top-frac", "0.3", "--device", "cpu", "--quiet"]


def _torchrun(*command):
    torchrun = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port())]
    return [*torchrun, *command]


def _accelerate(*command):
    """`accelerate launch --multi_gpu`: it starts the processes through torchrun (CPU-only here: --device cpu)."""
    return [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()), *command]


def _run(cmd, env):
    env = {**env, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    return out


def _stored(driver, database, run_id):
    recs, _, _ = driver.execute_query(
        "MATCH (c:Checkpoint {run: $run}) WHERE c.complete RETURN c.step AS step, c.accuracy AS acc "
        "ORDER BY step", run=run_id, database_=database)
    return {r["step"]: r for r in recs}


def _final_weights(env, run_id):
    ck = Path(env["CIRCUITSHIFT_STATE_DIR"]) / "runs" / run_id / "trainer" / f"checkpoint-{MAX_STEPS}"
    return load_file(str(ck / "adapter_model.safetensors"))


def test_two_processes_score_like_one_and_train_like_no_scoring(db, cli_env, tiny_setup):
    driver, database = db
    model, data = tiny_setup
    _run([str(BIN / "circuitshift"), *_args(model, data, "one")], cli_env)
    two = _run(_torchrun("--no-python", str(BIN / "circuitshift"), *_args(model, data, "two")), cli_env)
    assert two.stdout.count("checkpoint     0:") == 1  # rank 0 alone reports (and writes)
    _run(_accelerate("--no_python", str(BIN / "circuitshift"), *_args(model, data, "acc")), cli_env)
    plain = _run(_torchrun(str(TESTS / "dist_noscore.py"), *_args(model, data, "plain")),
                 {**cli_env, "PYTHONPATH": str(TESTS.parent)})
    assert "checkpoint     0:" not in plain.stdout

    s1, s2 = _stored(driver, database, "one"), _stored(driver, database, "two")
    assert sorted(s1) == sorted(s2) == STEPS and not _stored(driver, database, "plain")
    a = _scores(driver, database, "one:0")
    assert max(abs(v) for v in a.values()) > 0
    for run in ("two", "acc"):  # same weights at step 0: sharded == one process
        b = _scores(driver, database, f"{run}:0")
        assert a.keys() == b.keys() and max(abs(a[k] - b[k]) for k in a) <= 1e-6, run
        assert _stored(driver, database, run)[0]["acc"] == pytest.approx(s1[0]["acc"]), run
    recs, _, _ = driver.execute_query("MATCH (r:Run {id: 'two'}) RETURN r.extra AS extra", database_=database)
    assert json.loads(recs[0]["extra"])["processes"] == 2

    trained, unscored = _final_weights(cli_env, "two"), _final_weights(cli_env, "plain")
    assert trained.keys() == unscored.keys() and trained
    for k in trained:
        assert torch.equal(trained[k], unscored[k]), k
    launched = _final_weights(cli_env, "acc")  # the two launchers train alike
    assert all(torch.equal(trained[k], launched[k]) for k in trained)


def _scores(driver, database, ref):
    edges = Store(driver, database).checkpoint_edges(ref)
    return dict(zip(edges.names, edges.scores))


def test_killed_two_process_run_resumes(db, cli_env, tiny_setup):
    driver, database = db
    model, data = tiny_setup
    _run(_torchrun("--no-python", str(BIN / "circuitshift"), *_args(model, data, "whole")), cli_env)
    env = {**cli_env, "OMP_NUM_THREADS": "1"}
    cmd = _torchrun("--no-python", str(BIN / "circuitshift"), *_args(model, data, "killed"))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None and len(_stored(driver, database, "killed")) < 2:
        time.sleep(0.1)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks
    proc.wait()
    partial = sorted(_stored(driver, database, "killed"))
    assert 2 <= len(partial) < len(STEPS)

    _run(cmd, cli_env)
    whole, killed = _stored(driver, database, "whole"), _stored(driver, database, "killed")
    assert sorted(killed) == sorted(whole) == STEPS
    for step in STEPS:
        assert killed[step]["acc"] == whole[step]["acc"], step
        a, b = _scores(driver, database, f"whole:{step}"), _scores(driver, database, f"killed:{step}")
        assert a.keys() == b.keys()
        assert max(abs(a[k] - b[k]) for k in a) <= 1e-6, step
