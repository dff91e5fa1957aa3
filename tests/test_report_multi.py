"""`circuitshift report RUN [RUN ...] --experiment ID ... --union A:S,B:S`: the paper's tables and figures
across runs and experiments, checked against the store.

Everything is written by the real producers: two tiny experiments by the experiment job
(`run_experiment`, tiny settings as tests/test_experiment.py), an Add/Sub(200) run by the ingest job
(`tests/ingested.py`), the union of two stored circuits by the report itself, and a CircuitLoRA run
trained from a plan of union circuits (CircuitLoRA_U), tagged into an experiment by the writer. Table
cells are recomputed here (statistics.mean / stdev) from the runs' stored checkpoints.
"""

from __future__ import annotations

import json
import os
import statistics

import pytest

from conftest import run_cli
from ingested import ingest, ingest_config, known_accuracy_data, tiny_model

UNION = "e1.lora-r2.s1:0,e1.lora-r2.s1:4"


@pytest.fixture(scope="module")
def stored(driver, neo4j_settings, tmp_path_factory):
    """Experiments e1 (LoRA r=2) and e2 (CircuitLoRA (2,4) + a CircuitLoRA_U run), 2 seeds each, on Add/Sub(100);
    one LoRA run on Add/Sub(200). Module-scoped: the tests read it and never wipe (they take no `db`)."""
    from analysis.tasks.build import DatasetSpec, make_dataset
    from conftest import _wipe
    from ingest.jobs.experiment import ExperimentConfig, run_experiment

    database = neo4j_settings.database
    _wipe(driver, database)
    root = tmp_path_factory.mktemp("report_multi")
    model = tiny_model(root)
    data = root / "data"
    acc0 = known_accuracy_data(model, data)
    env = {**os.environ, "NEO4J_URI": neo4j_settings.uri, "NEO4J_USER": neo4j_settings.user,
           "NEO4J_PASSWORD": neo4j_settings.resolved_password(), "CIRCUITSHIFT_STATE_DIR": str(root / "state")}
    settings = tiny_settings(model, data, root)
    for x, label in (("e1", "lora-r2"), ("e2", "circuitlora-2-4")):
        run_experiment(driver, database, ExperimentConfig(x, settings, seeds=[1, 2], labels=[label], top=1,
                                                          lr=5e-3, phase1_steps=2), echo=lambda *_: None)
    data200 = root / "data200"
    make_dataset(DatasetSpec(task="add_sub", tokenizer=model, out=data200, n=200, count=200))
    ingest(driver, database, model, data200, root, "as200")
    union_u_run(driver, database, model, data, root)
    return {"env": env, "model": model, "data": data, "acc0": acc0, "root": root}


def tiny_settings(model, data, root):
    """The experiment job's tiny settings (LoRA schedule of tests/ingested.py: 4 steps, 16 examples)."""
    from ingest.jobs.circuitlora import RunSettings

    cfg = ingest_config(model, data, root, "unused")
    return RunSettings(model=str(model), data=str(data), train=cfg.train, scoring=cfg.scoring, device="cpu",
                       state_dir=str(root / "state"))


def union_u_run(driver, database, model, data, root):
    """CircuitLoRA_U: critical layers from the union of the phase-1 circuits' start vs end, trained
    with that plan and tagged into e2 as seed 3."""
    from ingest.jobs.circuitlora import plan_from_circuits, train_plan
    from queries.api import CircuitDefinition, Store, store_union
    from queries.writer import CircuitWriter

    for step in (0, 2):
        store_union(driver, database, f"e1.lora-r2.s1:{step * 2}", f"e2.phase1.s1:{step}", f"u{step}:0",
                    CircuitDefinition())
    plan = plan_from_circuits(Store(driver, database), "u0:0", "u2:0", model=str(model), top=1, r_o=2, r_c=4,
                              lr_other=5e-3)
    out = train_plan(driver, database, plan, tiny_settings(model, data, root), "e2.union")
    CircuitWriter(driver, database).tag_experiment_run("e2", "e2.union", "circuitlora-2-4", 3,
                                                       out["trainable_parameters"], out["total_parameters"])


def finals(store, run):
    rows = store.read("MATCH (c:Checkpoint {run: $run}) WHERE c.complete RETURN c.step AS step, "
                      "c.accuracy AS acc, c.faithfulness AS faith ORDER BY step", run=run)
    return rows


def cell(values) -> str:
    std = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.2f}{std} (n={len(values)})"


def test_report_tables_and_figures_equal_the_store(stored, driver, neo4j_settings, tmp_path):
    from queries.api import Store

    store = Store(driver, neo4j_settings.database)
    out = tmp_path / "rep"
    r = run_cli(["report", "e1.lora-r2.s1", "e2.circuitlora-2-4.s1", "as200", "--experiment", "e1",
                 "--experiment", "e2", "--union", UNION, "--union-model", str(stored["model"]),
                 "--union-data", str(stored["data"]), "--out", str(out)], env=stored["env"])
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("figure2", "figure4", "union_curve"):
        assert (out / f"{name}.png").stat().st_size > 5_000
    html, md = (out / "index.html").read_text(), (out / "report.md").read_text()
    doc = json.loads((out / "report.json").read_text())

    # Table 4 (Add/Sub(100) is its first column): ours recomputed from the stored runs, the paper's beside
    rows = {row["method"]: row for row in doc["tables"]["Table 4"]}
    ours, paper = "add_sub_100 [e1] accuracy %", "add_sub_100 accuracy % (paper)"
    lora = [finals(store, f"e1.lora-r2.s{s}")[-1]["acc"] for s in (1, 2)]
    assert rows["LoRA (r=2)"][ours] == cell(lora)
    assert rows["LoRA (r=2)"][paper] == "94.40"
    step0 = [finals(store, f"e1.lora-r2.s{s}")[0]["acc"] for s in (1, 2)]
    assert rows["Pre-trained"][ours] == cell(step0)
    assert statistics.mean(step0) == pytest.approx(stored["acc0"]) and stored["acc0"] >= 25  # percent
    assert rows["Pre-trained"][paper] == "46.90"
    circuit = [finals(store, f"e2.circuitlora-2-4.s{s}")[-1]["acc"] for s in (1, 2)]
    assert rows["CircuitLoRA (2,4)"]["add_sub_100 [e2] accuracy %"] == cell(circuit)
    assert rows["CircuitLoRA (2,4)"][ours] == "missing"
    assert rows["CircuitLoRA_U (2,4)"]["add_sub_100 [e2] accuracy %"] == cell([finals(store, "e2.union")[-1]["acc"]])
    ratio = store.read("MATCH (r:Run {id: 'e1.lora-r2.s1'}) RETURN r.parameter_ratio AS p")[0]["p"]
    assert float(rows["LoRA (r=2)"]["parameter ratio %"]) == pytest.approx(100 * ratio, abs=1e-4)
    assert rows["LoRA (r=2)"]["parameter ratio % (paper)"] == "0.1111"
    assert "Rows of the paper with no stored run here" in html and "Table 3" in html
    assert "no experiment on the compositional task" in html
    assert "<th class='paper'>add_sub_100 accuracy % (paper)</th>" in html
    assert "| LoRA (r=2) | " + cell(lora) in md

    # Figures 2 and 4: every run's stored curves, in percent
    fig2 = json.loads((out / "figure2.json").read_text())
    for run, task in (("e1.lora-r2.s1", "add_sub_100"), ("as200", "add_sub_200")):
        f = finals(store, run)
        assert fig2["accuracy"][f"{task}: {run}"] == pytest.approx([x["acc"] for x in f])
        assert fig2["faithfulness"][f"{task}: {run}"] == pytest.approx([x["faith"] for x in f])
    assert all(y <= 100.0001 for what in ("accuracy", "faithfulness") for ys in fig2[what].values() for y in ys)
    fig4 = json.loads((out / "figure4.json").read_text())
    assert list(fig4["accuracy"]) == ["add_sub_200: as200"]

    # the union: stored, exported beside the page, its curve at the rebuttal's fractions (percent)
    curve = json.loads((out / "union_curve.json").read_text())
    assert curve["percent_edges"] == pytest.approx([1, 2, 3, 4, 5, 6, 8, 10])
    assert curve["paper (rebuttal)"] == [67.4, 79.4, 83.7, 87.2, 89.2, 89.4, 89.6, 89.7]
    ours = [y for y in curve["ours"] if y == y]  # the tiny graph's top 1-4% is no edge: not evaluated
    assert len(ours) == 4 and all(y <= 100.0001 for y in ours)
    union = json.loads((out / "union_circuit.json").read_text())
    stored_union = store.checkpoint_edges("union-e1.lora-r2.s1@0-e1.lora-r2.s1@4:0")
    assert sorted(union["edges"]) == sorted(n for n, f in zip(stored_union.names, stored_union.in_circuit) if f)
    back = run_cli(["import", "eap-json", str(out / "union_circuit.json"), "--run", "reimported", "--step", "0"],
                   env=stored["env"])
    assert back.returncode == 0, back.stderr[-2000:]
    again = store.checkpoint_edges("reimported:0")
    assert dict(zip(again.names, again.scores)) == pytest.approx(
        {n: s for n, s, f in zip(stored_union.names, stored_union.scores, stored_union.in_circuit) if f})


def test_report_of_experiments_alone_and_bad_input(stored, tmp_path):
    env = stored["env"]
    out = tmp_path / "x"
    r = run_cli(["report", "--experiment", "e1", "--out", str(out)], env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads((out / "report.json").read_text())
    assert {c["run"] for c in doc["curves"]} == {"e1.lora-r2.s1"}  # the first seed's runs are drawn
    assert "Missing: none of the runs drawn is on Add/Sub 200" in (out / "index.html").read_text()
    for args in (["report", "e1.lora-r2.s1", "nope"], ["report", "--experiment", "nope"],
                 ["report", "e1.lora-r2.s1", "as200", "--union", "a:0,b:0,c:0"]):
        bad = run_cli([*args, "--out", str(tmp_path / "bad")], env=env)
        assert bad.returncode == 2 and bad.stderr.startswith("error:"), bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1
