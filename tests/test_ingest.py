"""The ingest job end to end on a tiny model against the real server: what gets stored, idempotent
reruns, and a run killed midway that resumes to exactly the checkpoints of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_cli
from ingested import known_accuracy_data, tiny_model
from analysis.checkpoint import ScoringConfig
from analysis.training import TrainConfig


ACCURACY0 = {}  # the tiny data's step-0 accuracy in percent, computed independently


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ingest")
    model = tiny_model(root)
    data = root / "data"
    ACCURACY0["percent"] = known_accuracy_data(model, data)
    return model, data, root


def _cfg(model, data, root, run_id, checkpoints=2, max_steps=4, method="lora", top_frac=0.3):
    from ingest.jobs.finetune import IngestConfig
    return IngestConfig(model=str(model), data=str(data), run_id=run_id,
                        train=TrainConfig(method=method, rank=2, learning_rate=5e-3, max_steps=max_steps,
                                          checkpoints=checkpoints, batch_size=8, grad_accum=1, seed=3,
                                          warmup_steps=1),
                        scoring=ScoringConfig(steps=2, batch_size=16, max_examples=16, top_frac=top_frac),
                        device="cpu", state_dir=str(root / f"state-{run_id}"))


def test_end_to_end_stores_every_checkpoint(db, tiny_setup):
    from analysis.graph import GraphSpec, expected_edge_count
    from ingest.jobs.finetune import run_ingest
    from ingest.jobs.summary import print_summary, summary
    from queries.api import Store

    driver, database = db
    model, data, root = tiny_setup
    cfg = _cfg(model, data, root, "e2e")
    out = run_ingest(cfg, driver, database, progress=False, echo=lambda *_: None)
    assert out["steps"] == [0, 2, 4] and out["written"] == [0, 2, 4]

    recs, _, _ = driver.execute_query(
        "MATCH (r:Run {id: 'e2e'}) RETURN r.model AS model, r.revision AS revision, r.task AS task, "
        "r.dataset_hash AS dh, r.seed AS seed, r.method AS method, r.code_version AS cv, "
        "r.hparams AS hp, r.extra AS extra, r.config_hash AS ch", database_=database)
    run = recs[0]
    assert run["model"] == str(model) and run["revision"].startswith("sha256:")
    assert run["task"] == "add_sub" and len(run["dh"]) == 64 and run["seed"] == 3
    assert run["method"] == "lora" and run["cv"].startswith("circuitshift") and run["ch"]
    assert json.loads(run["hp"])["rank"] == 2
    assert json.loads(run["extra"])["scoring"]["steps"] == 2

    e = expected_edge_count(GraphSpec(2, 2, True))
    recs, _, _ = driver.execute_query(
        "MATCH (c:Checkpoint {run: 'e2e'}) WHERE c.complete "
        "OPTIONAL MATCH ()-[x:CIRCUIT_EDGE {ck: c.uid}]->() "
        "RETURN c.step AS step, c.n_edges AS n, size(c.scores) AS ns, c.n_in_graph AS g, "
        "count(x) AS rels, c.accuracy AS acc, c.faithfulness AS faith, c.scoring AS scoring "
        "ORDER BY step", database_=database)
    assert [r["step"] for r in recs] == [0, 2, 4]
    for r in recs:
        assert r["n"] == r["ns"] == e
        assert r["rels"] == r["g"] > 0
        assert 0.0 <= r["acc"] <= 100.0 and r["faith"] is not None
        assert json.loads(r["scoring"])["method"] == "eap-ig-inputs"
    assert recs[0]["acc"] == pytest.approx(ACCURACY0["percent"]) and ACCURACY0["percent"] >= 25  # percent

    s = summary(Store(driver, database), "e2e")
    assert [m["step"] for m in s["checkpoints"]] == [0, 2, 4] and len(s["churn"]) == 2
    lines = []
    print_summary(s, echo=lines.append)
    header, _, first = lines[0].splitlines()[1:4]
    assert header.split()[2:5] == ["accuracy_%", "circuit_accuracy_%", "faithfulness_%"]
    assert float(first.split()[2]) == round(ACCURACY0["percent"], 1)

    again = run_ingest(cfg, driver, database, progress=False, echo=lambda *_: None)
    assert again["written"] == []
    recs, _, _ = driver.execute_query("MATCH (c:Checkpoint {run: 'e2e'}) RETURN count(c) AS n",
                                      database_=database)
    assert recs[0]["n"] == 3


def test_query_top_frac_is_the_method_circuit(db, tiny_setup):
    """`--top-frac F` chosen after the fact is the stored circuit of a run scored with top_frac F (the
    prefix, pruned); --no-prune is the bare prefix."""
    from ingest.jobs.finetune import run_ingest
    from queries.api import CircuitDefinition, Store

    driver, database = db
    model, data, root = tiny_setup
    run_ingest(_cfg(model, data, root, "frac", top_frac=0.2), driver, database, progress=False,
               echo=lambda *_: None)
    store = Store(driver, database)
    pruned_any = False
    for step in (0, 2, 4):
        recs, _, _ = driver.execute_query(
            "MATCH (c:Checkpoint {run: 'frac', step: $s}) RETURN [r IN c.in_graph | c.keys[r - 1]] AS keys, "
            "c.scoring AS scoring", {"s": step}, database_=database)
        stored, selected = set(recs[0]["keys"]), json.loads(recs[0]["scoring"])["circuit_edges_selected"]
        _, chosen = store.circuit_edges(f"frac:{step}", CircuitDefinition("top_frac", 0.2, "qkv"))
        _, raw = store.circuit_edges(f"frac:{step}", CircuitDefinition("top_frac", 0.2, "qkv", prune=False))
        assert {r["key"] for r in chosen} == stored
        assert len(raw) == selected
        pruned_any |= selected > len(stored)
    assert pruned_any, "no checkpoint lost an edge to pruning: the check above proved nothing"


def test_rerun_with_other_settings_is_refused(db, tiny_setup):
    from analysis.errors import UserError
    from ingest.jobs.finetune import run_ingest

    driver, database = db
    model, data, root = tiny_setup
    run_ingest(_cfg(model, data, root, "guard", checkpoints=1, max_steps=2), driver, database,
               progress=False, echo=lambda *_: None)
    with pytest.raises(UserError, match="other settings"):
        run_ingest(_cfg(model, data, root, "guard", checkpoints=1, max_steps=3), driver, database,
                   progress=False, echo=lambda *_: None)


def _stored(driver, database, run):
    recs, _, _ = driver.execute_query(
        "MATCH (c:Checkpoint {run: $run}) RETURN c.step AS step, c.complete AS complete, "
        "c.accuracy AS acc, c.keys[..40] AS top, c.scores[..40] AS s ORDER BY step",
        run=run, database_=database)
    return [r.data() for r in recs]


def test_killed_run_resumes_to_the_uninterrupted_checkpoints(db, tiny_setup, cli_env):
    driver, database = db
    model, data, root = tiny_setup
    args = ["ingest", "run", "--model", str(model), "--data", str(data), "--method", "full", "--lr", "1e-3",
            "--max-steps", "8", "--checkpoints", "4", "--batch-size", "8", "--grad-accum", "1",
            "--warmup-steps", "1", "--seed", "5", "--ig-steps", "2", "--score-batch-size", "16",
            "--max-examples", "16", "--top-frac", "0.3",
            "--device", "cpu", "--quiet"]
    env = dict(cli_env, CIRCUITSHIFT_STATE_DIR=str(root / "state-cli"))
    ref = run_cli(args + ["--run-id", "whole"], env=env)
    assert ref.returncode == 0, ref.stderr[-2000:]

    exe = Path(sys.executable).parent / "circuitshift"
    proc = subprocess.Popen([str(exe), *args, "--run-id", "killed"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        done = [r for r in _stored(driver, database, "killed") if r["complete"]]
        if len(done) >= 2:
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = [r["step"] for r in _stored(driver, database, "killed") if r["complete"]]
    assert 2 <= len(partial) < 5

    rerun = run_cli(args + ["--run-id", "killed"], env=env)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    whole, killed = _stored(driver, database, "whole"), _stored(driver, database, "killed")
    assert [r["step"] for r in killed] == [r["step"] for r in whole] == [0, 2, 4, 6, 8]
    assert all(r["complete"] for r in killed)
    for a, b in zip(whole, killed):  # bit for bit: same accuracy, same ranking, same scores
        assert (a["acc"], a["top"], a["s"]) == (b["acc"], b["top"], b["s"]), a["step"]


def test_lora_run_saves_its_merged_model(db, tiny_setup, cli_env, tmp_path):
    """`ingest run --save-merged DIR` writes the final model with LoRA merged: scoring it again gives
    the run's final stored circuit scores; `ingest export-model` rewrites it from the saved state."""
    from analysis.checkpoint import score_checkpoint
    from analysis.datasets import load_split
    from analysis.models import load_model

    driver, database = db
    model, data, root = tiny_setup
    merged = tmp_path / "merged"
    args = ["ingest", "run", "--model", str(model), "--data", str(data), "--method", "lora", "--rank", "2",
            "--lr", "5e-3", "--max-steps", "4", "--checkpoints", "1", "--batch-size", "8", "--grad-accum", "1",
            "--warmup-steps", "1", "--ig-steps", "2", "--score-batch-size", "16", "--max-examples", "16",
            "--top-frac", "0.3", "--run-id", "lora-x", "--device", "cpu", "--quiet"]
    proc = run_cli(args + ["--save-merged", str(merged)], env=cli_env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"written to {merged}" in proc.stdout
    assert not list(merged.glob("adapter_*")) and (merged / "config.json").exists()
    recs, _, _ = driver.execute_query("MATCH (c:Checkpoint {run: 'lora-x', step: 4}) RETURN c.keys AS k, "
                                      "c.scores AS s", database_=database)
    stored = dict(zip(recs[0]["k"], recs[0]["s"]))
    adapter = load_model(str(merged))
    res = score_checkpoint(adapter.model, adapter.tokenizer, load_split(data, "circuit"),
                           ScoringConfig(steps=2, batch_size=16, max_examples=16, top_frac=0.3))
    from queries.components import Architecture
    arch = Architecture(2, 2, True)
    again = {arch.key_of[n]: v for n, v in zip(res.names, res.scores)}
    assert again.keys() == stored.keys()
    assert max(abs(again[k] - stored[k]) for k in stored) <= 1e-6 * max(abs(v) for v in stored.values())
    base = load_model(str(model))  # and the fine-tuning did change the weights
    assert any((a - b).abs().max() > 1e-4 for a, b in zip(adapter.model.parameters(), base.model.parameters()))

    again_dir = tmp_path / "again"
    proc = run_cli(["ingest", "export-model", "lora-x", "--out", str(again_dir)], env=cli_env)
    assert proc.returncode == 0 and (again_dir / "model.safetensors").read_bytes() == \
        (merged / "model.safetensors").read_bytes()
    bad = run_cli(["ingest", "export-model", "nope", "--out", str(tmp_path / "x")], env=cli_env)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and bad.stderr.startswith("error: no training state")
