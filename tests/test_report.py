"""`circuitshift report`: figures from stored data only, checked for content (the plotted values,
read back from the matplotlib artists, equal the query results)."""

from __future__ import annotations

import json

import pytest

import shutil

from conftest import REPO, run_cli
from explore_data import ARCH, demo_checkpoints, write_demo
from ingest.report import build, gather
from queries import library as Q
from queries.api import CircuitDefinition, Store
from queries.writer import CircuitWriter, RunRecord

IN_GRAPH = CircuitDefinition()


@pytest.fixture
def stored(db):
    driver, database = db
    write_demo(driver, database)
    # A noise baseline: 3 circuits of checkpoint 40 "scored on resampled data" (seeded variants).
    writer = CircuitWriter(driver, database)
    writer.ensure_run(RunRecord(id="demo~noise", task="toy"), ARCH)
    for k, seed in enumerate((1, 2, 3)):
        cp = demo_checkpoints(1, seed=0)[0]
        import numpy as np
        rng = np.random.default_rng(seed)
        scores = np.asarray(cp.scores) + rng.normal(0, 0.3, len(cp.scores))
        order = np.argsort(-np.abs(scores), kind="stable")
        flags = np.zeros(len(scores), dtype=bool)
        flags[order[:40]] = True
        cp.step, cp.scores, cp.in_graph = k, scores.tolist(), flags.tolist()
        writer.write_checkpoint("demo~noise", ARCH, cp)
    driver.execute_query("MATCH (r:Run {id: 'demo~noise'}) SET r.analysis = 'noise', r.of_run = 'demo', "
                         "r.noise_step = 40", database_=database)
    # Robustness: a run whose steps are perturbation levels (0 = clean).
    writer.ensure_run(RunRecord(id="rob-ft", task="toy"), ARCH)
    for level, cp in zip((0, 10, 20), demo_checkpoints(3, seed=5)):
        cp.step = level
        writer.write_checkpoint("rob-ft", ARCH, cp)
    driver.execute_query("MATCH (r:Run {id: 'rob-ft'}) SET r.analysis = 'robustness', r.of_run = 'demo', "
                         "r.model_label = 'finetuned'", database_=database)
    return Store(driver, database)


def test_report_figures_equal_the_query_results(stored, tmp_path):
    store = stored
    data = gather(store, "demo", IN_GRAPH)
    drawn = build(data, tmp_path)
    for name in ("accuracy_faithfulness", "churn", "change_rates", "per_layer", "circuit_diff", "robustness"):
        assert (tmp_path / f"{name}.png").stat().st_size > 5_000
        assert json.loads((tmp_path / f"{name}.json").read_text()) == json.loads(json.dumps(drawn[name]))
    shutil.copytree(tmp_path, REPO / "artifacts" / "report", dirs_exist_ok=True)  # a CI artifact
    html = (tmp_path / "index.html").read_text()
    assert all(f"{n}.png" in html for n in drawn)

    # Independent queries, compared with what was drawn.
    metrics = store.read(Q.CHECKPOINT_METRICS, run="demo")
    af = drawn["accuracy_faithfulness"]
    assert af["steps"] == [0, 10, 20, 30, 40]
    assert af["accuracy"] == pytest.approx([100 * m["accuracy"] for m in metrics])
    assert af["faithfulness"] == pytest.approx([100 * m["faithfulness"] for m in metrics])

    churn = store.churn("demo", IN_GRAPH)["transitions"]
    assert drawn["churn"]["edges"] == [t["edges_changed"] for t in churn]
    assert drawn["churn"]["nodes"] == [t["nodes_changed"] for t in churn]
    assert drawn["churn"]["transitions"] == ["0→10", "10→20", "20→30", "30→40"]
    noise = store.churn("demo~noise", IN_GRAPH)["transitions"]
    vals = [t["edges_changed"] for t in noise]
    mean, sd = sum(vals) / len(vals), (sum((v - sum(vals) / len(vals)) ** 2 for v in vals) / (len(vals) - 1)) ** .5
    assert drawn["churn"]["edges_noise_band"] == pytest.approx([mean - sd, mean + sd])
    assert drawn["churn"]["edges_noise_max"] == max(vals)

    rate = store.change_rate("demo", IN_GRAPH)
    nrate = store.change_rate("demo~noise", IN_GRAPH)
    assert drawn["change_rates"]["fine-tuning"] == pytest.approx([rate["node_change_rate"], rate["edge_change_rate"]])
    assert drawn["change_rates"]["resampling noise"] == pytest.approx(
        [nrate["node_change_rate"], nrate["edge_change_rate"]])

    layers = store.per_layer("demo:0", "demo:40", IN_GRAPH)["layers"]
    pl = drawn["per_layer"]
    assert pl["layers"] == [r["layer"] for r in layers]
    for key in ("nodes_added", "nodes_removed", "edges_added", "edges_removed"):
        assert pl[key.replace("_", " ")] == [r[key] for r in layers]

    diff = store.diff("demo:0", "demo:40", IN_GRAPH, 95.0)
    cd = drawn["circuit_diff"]
    assert cd["edges"]["added"] == diff["added_edges"]
    assert cd["edges"]["removed"] == diff["removed_edges"]
    assert cd["added_nodes"] == sorted(diff["added_nodes"])
    assert cd["removed_nodes"] == sorted(diff["removed_nodes"])
    top = max(diff["degree"].values())
    for n, grey in cd["node_grey"].items():  # darker = higher degree in the filtered final graph
        assert grey == pytest.approx(1 - 0.85 * diff["degree"].get(n, 0) / top)

    rob = drawn["robustness"]
    assert rob["levels"] == [0, 10, 20]
    assert rob["finetuned"] == pytest.approx(
        [store.jaccard("rob-ft:0", f"rob-ft:{lv}", IN_GRAPH)["edge_jaccard"] for lv in (0, 10, 20)])
    assert rob["finetuned"][0] == 1.0


def test_report_cli(stored, cli_env, tmp_path):
    out = tmp_path / "rep"
    proc = run_cli(["report", "demo", "--out", str(out)], env=cli_env)
    assert proc.returncode == 0, proc.stderr
    assert "wrote 6 figures" in proc.stdout and "Browser view 'demo:0..demo:40'" in proc.stdout
    assert (out / "index.html").exists() and (out / "circuit_diff.png").exists()
    views = stored.read("MATCH (n:ViewNode {view: 'demo:0..demo:40'}) RETURN count(n) AS n")
    assert views[0]["n"] > 0
    bad = run_cli(["report", "nope", "--out", str(out)], env=cli_env)
    assert bad.returncode == 2 and bad.stderr.startswith("error:")
