"""`circuitshift experiment compare` with CircuitLoRA_U (method.md 5, Table 3) against the real server.

Everything is written by the real producers: two compositional subtask runs by the ingest job, their
pre-trained and fine-tuned unions by `circuitshift query union`, the comparison by `experiment compare`
(first without CircuitLoRA_U, then rerun with it added under the same experiment id); the experiment
table and the report's Table 3 are read back from the store. Every command goes through the real entry
point (`ingest.cli.main`) under click's CliRunner, so a user mistake is checked as the user sees it: exit
2 and one `error:` line.
"""

from __future__ import annotations

import json
import statistics

import click
import pytest
from click.testing import CliRunner

from ingested import ingest, tiny_model

BASE, AFTER = "ubase:0", "uafter:0"   # the unions of the pre-trained / the fine-tuned subtask circuits
SUBTASKS = ("compositional_add_sub", "compositional_mul_div")
SCHEDULE = ["--top", "1", "--lr", "5e-3", "--max-steps", "4", "--phase1-steps", "2", "--batch-size", "8",
            "--grad-accum", "1", "--warmup-steps", "1", "--ig-steps", "2", "--score-batch-size", "16",
            "--max-examples", "16", "--top-frac", "0.3", "--device", "cpu", "--quiet"]


@click.command(context_settings={"ignore_unknown_options": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def entry(args):
    """The installed `circuitshift` entry point (UserError -> one `error:` line, exit 2)."""
    from ingest.cli import main
    main(list(args))


def cli(args, env):
    return CliRunner().invoke(entry, [str(a) for a in args], env=env, catch_exceptions=False)


@pytest.fixture(scope="module")
def stored(driver, neo4j_settings, tmp_path_factory):
    """A tiny model, compositional data, the two subtask runs (LoRA, steps 0, 2, 4) and their unions
    at step 0 (BASE) and at the end (AFTER), stored through the CLI."""
    from analysis.tasks.build import DatasetSpec, make_dataset
    from conftest import _wipe

    database = neo4j_settings.database
    _wipe(driver, database)
    root = tmp_path_factory.mktemp("experiment_union")
    model = tiny_model(root)
    data = {}
    for task in ("compositional", *SUBTASKS):
        make_dataset(DatasetSpec(task=task, tokenizer=model, out=root / task, count=200))
        data[task] = root / task
    env = {"NEO4J_URI": neo4j_settings.uri, "NEO4J_USER": neo4j_settings.user,
           "NEO4J_PASSWORD": neo4j_settings.resolved_password(), "CIRCUITSHIFT_STATE_DIR": str(root / "state")}
    for task in SUBTASKS:
        out = ingest(driver, database, model, data[task], root, f"sub-{task}")
        assert out["steps"] == [0, 2, 4]
    a, b = (f"sub-{t}" for t in SUBTASKS)
    for ref, step in ((BASE, 0), (AFTER, 4)):
        r = cli(["query", "union", f"{a}:{step}", f"{b}:{step}", "--as", ref, "--format", "json"], env)
        assert r.exit_code == 0, r.output
    return {"env": env, "model": model, "data": data["compositional"], "subtask_run": a}


def compare(stored, experiment, methods, *extra):
    return cli(["experiment", "compare", "--model", stored["model"], "--data", stored["data"], "--seeds", "2",
                "--seed", "1", "--methods", methods, "--experiment", experiment, *SCHEDULE, *extra], stored["env"])


def test_compare_trains_circuitlora_u_from_the_unions_and_table3_reads_it(stored, driver, neo4j_settings,
                                                                            tmp_path):
    from ingest.jobs.experiment import experiment_table
    from queries.api import CircuitDefinition, Store
    from queries.reports import experiment_cells

    store = Store(driver, neo4j_settings.database)
    env = stored["env"]
    first = compare(stored, "x3", "lora-r2,circuitlora-8-32")
    assert first.exit_code == 0, first.output
    finals_before = {r["run"]: r for r in store.experiment_runs("x3")}
    rep = cli(["report", "--experiment", "x3", "--out", tmp_path / "before"], env)
    assert rep.exit_code == 0, rep.output
    note = (tmp_path / "before" / "report.md").read_text()
    assert "CircuitLoRA_U is missing" in note and "circuitlora_u-8-32 added to --methods" in note

    # CircuitLoRA_U added to the same experiment, as the note says: the stored runs keep their numbers
    r = compare(stored, "x3", "lora-r2,circuitlora-8-32,circuitlora_u-8-32", "--union-before", BASE,
                "--union-after", AFTER)
    assert r.exit_code == 0, r.output
    critical = store.critical_layers(BASE, AFTER, CircuitDefinition(), 1)["layers"]
    assert f"CircuitLoRA_U (8,32): critical layers {critical} of {BASE} -> {AFTER}" in r.output
    assert "CircuitLoRA_U (8,32)" in r.output.split("accuracy % = mean")[-1]  # a row of the printed table
    runs = {x["run"]: x for x in store.experiment_runs("x3")}
    assert sorted((x["label"], x["seed"]) for x in runs.values()) == [
        ("circuitlora-8-32", 1), ("circuitlora-8-32", 2), ("circuitlora_u-8-32", 1), ("circuitlora_u-8-32", 2),
        ("lora-r2", 1), ("lora-r2", 2), ("phase1", 1)]
    assert {k: runs[k] for k in finals_before} == finals_before
    info = store.experiment_info("x3")
    assert info["labels"] == ["lora-r2", "circuitlora-8-32", "circuitlora_u-8-32"]
    assert json.loads(info["settings"])["union_after"] == AFTER

    # each run's plan: CircuitLoRA_U from the two unions, CircuitLoRA_C from the phase-1 circuits
    plans = {p["run"]: p for p in store.read(
        "MATCH (r:Run)-[:TRAINED_WITH]->(p:Plan) "
        "OPTIONAL MATCH (p)-[f:FROM_CIRCUIT]->(c:Checkpoint)<-[:HAS_CHECKPOINT]-(src:Run) "
        "WITH r, p, f, c, src ORDER BY f.role "
        "RETURN r.id AS run, p.json AS json, collect([f.role, src.id + ':' + toString(c.step), src.method]) AS "
        "sources")}
    p1 = "x3.phase1.s1"
    phase1_critical = store.critical_layers(f"{p1}:0", f"{p1}:2", CircuitDefinition(), 1)["layers"]
    for seed in (1, 2):
        u = plans[f"x3.circuitlora_u-8-32.s{seed}"]
        plan = json.loads(u["json"])
        assert plan["critical_layers"] == critical and (plan["r_o"], plan["r_c"]) == (8, 32)
        assert (plan["source"]["before"], plan["source"]["after"]) == (BASE, AFTER)
        assert u["sources"] == [["after", AFTER, "union"], ["before", BASE, "union"]]
        assert runs[f"x3.circuitlora_u-8-32.s{seed}"]["parameter_ratio"] == pytest.approx(plan["parameter_ratio"])
        c = plans[f"x3.circuitlora-8-32.s{seed}"]
        assert json.loads(c["json"])["critical_layers"] == phase1_critical
        assert c["sources"] == [["after", f"{p1}:2", "lora"], ["before", f"{p1}:0", "lora"]]
    cells = {c["run"]: c["union_plan"] for c in experiment_cells(store, ["x3"], exclude=["phase1"])}
    assert cells["x3.circuitlora_u-8-32.s1"] and not cells["x3.circuitlora-8-32.s1"]

    # the experiment table: mean / sample std of the U runs' stored final accuracies
    accs = [runs[f"x3.circuitlora_u-8-32.s{s}"]["accuracy"] for s in (1, 2)]
    table = cli(["experiment", "table", "x3", "--format", "json"], env)
    assert table.exit_code == 0, table.output
    rows = {row["label"]: row for row in json.loads(table.output)["table"]}
    assert [row["label"] for row in json.loads(table.output)["table"]] == [
        "pretrained", "lora-r2", "circuitlora-8-32", "circuitlora_u-8-32"]
    assert rows["circuitlora_u-8-32"]["method"] == "CircuitLoRA_U (8,32)"
    assert rows["circuitlora_u-8-32"]["accuracy_mean_%"] == pytest.approx(round(statistics.mean(accs), 2))
    assert rows["circuitlora_u-8-32"]["accuracy_std_%"] == pytest.approx(round(statistics.stdev(accs), 2))
    assert json.loads(table.output)["table"] == experiment_table(store, "x3")["table"]

    # the report's Table 3 (the compositional column): CircuitLoRA_C and CircuitLoRA_U beside the paper
    out = tmp_path / "rep"
    rep = cli(["report", "--experiment", "x3", "--out", out], env)
    assert rep.exit_code == 0, rep.output
    doc = json.loads((out / "report.json").read_text())
    t3 = {row["method"]: row for row in doc["tables"]["Table 3"]}
    ours, paper = "compositional [x3] accuracy %", "compositional accuracy % (paper)"
    std = f" ± {statistics.stdev(accs):.2f}"
    assert t3["CircuitLoRA_U (8,32)"][ours] == f"{statistics.mean(accs):.2f}{std} (n=2)"
    assert t3["CircuitLoRA_U (8,32)"][paper] == "65.50"
    assert t3["CircuitLoRA_C (8,32)"][paper] == "67.20"
    assert float(t3["CircuitLoRA_U (8,32)"]["parameter ratio %"]) == pytest.approx(
        100 * json.loads(plans["x3.circuitlora_u-8-32.s1"]["json"])["parameter_ratio"], abs=1e-4)
    assert "CircuitLoRA_U is missing" not in (out / "report.md").read_text()


def test_bad_union_options_are_one_line_errors_and_store_nothing(stored, driver, neo4j_settings):
    from queries.api import Store

    run = stored["subtask_run"]
    cases = [
        (["circuitlora_u-8-32"], "give --union-before UNION_BASE:STEP and --union-after"),
        (["circuitlora_u-8-32", "--union-after", AFTER], "give both --union-before and --union-after"),
        (["lora-r2", "--union-before", BASE, "--union-after", AFTER], "read only by circuitlora_u-RO-RC"),
        (["circuitlora_u-8-32", "--union-before", "nope:0", "--union-after", AFTER], "no run 'nope'"),
        (["circuitlora_u-8-32", "--union-before", BASE, "--union-after", "uafter:7"], "no complete checkpoint"),
        (["circuitlora_u-8-32", "--union-before", f"{run}:0", "--union-after", AFTER], "is not a union circuit"),
        (["circuitlora_u-8-32", "--union-before", "ubase", "--union-after", AFTER], "not of the form RUN:STEP"),
        (["circuitlora_x-8-32"], "unknown method"),
    ]
    for methods, message in cases:
        r = compare(stored, "bad", *methods)
        assert r.exit_code == 2, (methods, r.output)
        assert r.stderr.startswith("error:") and message in r.stderr, (methods, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    store = Store(driver, neo4j_settings.database)
    assert store.experiment_info("bad") is None
    assert store.read("MATCH (r:Run) WHERE r.id STARTS WITH 'bad.' RETURN r.id AS id") == []
