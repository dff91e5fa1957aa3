"""`circuitshift experiment compare` end to end on a tiny model against the real server: every run is
stored and tagged, CircuitLoRA trains from the phase-1 circuit's critical layers, RandomLoRA from its
seed's draw, and the table (computed by Cypher) equals the mean and std of the stored final accuracies."""

from __future__ import annotations

import json
import random
import statistics

import pytest

from conftest import run_cli
from ingested import known_accuracy_data, tiny_model

ACCURACY0 = {}  # the step-0 accuracy of the tiny data, in percent, computed independently


@pytest.fixture(scope="module")
def tiny_task(tmp_path_factory):
    root = tmp_path_factory.mktemp("experiment")
    model = tiny_model(root)
    data = root / "data"
    ACCURACY0["percent"] = known_accuracy_data(model, data)
    return model, data


def test_compare_stores_every_run_and_the_table_comes_from_the_store(db, tiny_task, cli_env):
    from ingest.jobs.experiment import experiment_table
    from queries.api import CircuitDefinition, Store

    driver, database = db
    model, data = tiny_task
    args = ["experiment", "compare", "--model", str(model), "--data", str(data), "--seeds", "2", "--seed", "1",
            "--methods", "circuitlora-2-4,randomlora-2-4", "--top", "1", "--experiment", "t",
            "--lr", "5e-3", "--max-steps", "4", "--phase1-steps", "2", "--batch-size", "8", "--grad-accum", "1",
            "--warmup-steps", "1", "--ig-steps", "2", "--score-batch-size", "16", "--max-examples", "16",
            "--top-frac", "0.3", "--device", "cpu", "--quiet"]
    r = run_cli(args, env=cli_env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "CircuitLoRA (2,4)" in r.stdout and "RandomLoRA (2,4)" in r.stdout and "Pre-trained" in r.stdout

    store = Store(driver, database)
    runs = store.read("MATCH (:Experiment {id: 't'})-[h:HAS_RUN]->(r:Run) "
                      "RETURN h.label AS label, h.seed AS seed, r.id AS run, r.parameter_ratio AS ratio "
                      "ORDER BY label, seed")
    assert [(x["label"], x["seed"]) for x in runs] == [
        ("circuitlora-2-4", 1), ("circuitlora-2-4", 2), ("phase1", 1), ("randomlora-2-4", 1),
        ("randomlora-2-4", 2)]

    # CircuitLoRA's plan: the phase-1 circuits' top critical layer, through the store's query
    finals = {x["run"]: store.read("MATCH (c:Checkpoint {run: $run}) WHERE c.complete "
                                   "RETURN c.step AS step, c.accuracy AS acc ORDER BY step", run=x["run"])
              for x in runs}
    p1 = "t.phase1.s1"
    assert [c["step"] for c in finals[p1]] == [0, 2]
    critical = store.critical_layers(f"{p1}:0", f"{p1}:2", CircuitDefinition(), 1)["layers"]
    plans = store.read("MATCH (r:Run)-[:TRAINED_WITH]->(p:Plan) RETURN r.id AS run, p.json AS json ORDER BY run")
    by_run = {p["run"]: json.loads(p["json"]) for p in plans}
    assert set(by_run) == {"t.circuitlora-2-4.s1", "t.circuitlora-2-4.s2", "t.randomlora-2-4.s1",
                           "t.randomlora-2-4.s2"}
    for seed in (1, 2):
        assert by_run[f"t.circuitlora-2-4.s{seed}"]["critical_layers"] == critical
        assert by_run[f"t.randomlora-2-4.s{seed}"]["critical_layers"] == random.Random(seed).sample(range(2), 1)
    ratio = {x["run"]: x["ratio"] for x in runs}
    assert ratio["t.circuitlora-2-4.s1"] == pytest.approx(by_run["t.circuitlora-2-4.s1"]["parameter_ratio"])

    # the table equals mean / sample std of the final accuracies stored per run (stored in percent)
    t = experiment_table(store, "t")
    rows = {row["label"]: row for row in t["table"]}
    assert [row["label"] for row in t["table"]] == ["pretrained", "circuitlora-2-4", "randomlora-2-4"]
    for label in ("circuitlora-2-4", "randomlora-2-4"):
        accs = [finals[f"t.{label}.s{s}"][-1]["acc"] for s in (1, 2)]
        assert rows[label]["seeds"] == 2
        assert rows[label]["accuracy_mean_%"] == pytest.approx(round(statistics.mean(accs), 2))
        assert rows[label]["accuracy_std_%"] == pytest.approx(round(statistics.stdev(accs), 2))
    step0 = {finals[x["run"]][0]["acc"] for x in runs}
    assert len(step0) == 1  # every run starts from the same pre-trained model, scored on the same split
    assert rows["pretrained"]["accuracy_mean_%"] == pytest.approx(round(step0.pop(), 2))
    assert rows["pretrained"]["accuracy_mean_%"] == pytest.approx(round(ACCURACY0["percent"], 2))
    assert ACCURACY0["percent"] >= 25  # so a fraction could not pass for it
    assert rows["pretrained"]["parameter_ratio_%"] == 0.0

    again = run_cli(["experiment", "table", "t", "--format", "json"], env=cli_env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads(again.stdout)["table"] == t["table"]
    missing = run_cli(["experiment", "table", "nope"], env=cli_env)
    assert missing.returncode == 2 and "no experiment" in missing.stderr
