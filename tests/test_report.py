"""`circuitshift report`: figures from stored data only, checked for content (the plotted values,
read back from the matplotlib artists, equal the query results).

Everything the report reads was written by the real producers: a tiny fine-tuning run by the ingest
job (`tests/ingested.py`), its merged model exported by `ingest export-model`, and the robustness and
resampling-noise runs by `circuitshift robustness` on that model.
"""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import REPO, run_cli
from ingested import ingest, known_accuracy_data, tiny_model
from ingest.jobs.report import build, gather
from queries.cypher import runs as Q
from queries.api import CircuitDefinition, Store

IN_GRAPH = CircuitDefinition()
STEPS = [0, 2, 4, 6, 8]


@pytest.fixture(scope="module")
def stored(driver, neo4j_settings, tmp_path_factory):
    """Run `demo` (LoRA, 8 steps, checkpoints 0, 2, ..., 8), its robustness runs and noise baseline.
    Module-scoped: the tests here read it and never wipe the database (they take no `db`)."""
    from conftest import _wipe
    from ingest.jobs.finetune import export_model

    database = neo4j_settings.database
    _wipe(driver, database)
    root = tmp_path_factory.mktemp("report")
    model = tiny_model(root)
    data = root / "data"
    acc0 = known_accuracy_data(model, data, perturb_levels=(0.1, 0.2))
    out = ingest(driver, database, model, data, root, "demo", max_steps=8, checkpoints=4)
    assert out["steps"] == STEPS
    merged = root / "merged"
    export_model(root / "state", "demo", merged)
    env = {**cli_environment(neo4j_settings), "CIRCUITSHIFT_STATE_DIR": str(root / "state")}
    proc = run_cli(["robustness", "--model", f"finetuned={merged}", "--data", str(data), "--of", "demo",
                    "--no-splits", "--noise-of", "demo:8", "--samples", "3", "--steps", "2",
                    "--batch-size", "16", "--max-examples", "16", "--top-frac", "0.3"], env=env)
    assert proc.returncode == 0, proc.stderr
    return Store(driver, database), env, acc0


def cli_environment(settings) -> dict:
    import os
    return {**os.environ, "NEO4J_URI": settings.uri, "NEO4J_USER": settings.user,
            "NEO4J_PASSWORD": settings.resolved_password()}


def test_report_figures_equal_the_query_results(stored, tmp_path):
    store, _, acc0 = stored
    data = gather(store, "demo", IN_GRAPH)
    drawn = build(data, tmp_path)
    for name in ("accuracy_faithfulness", "churn", "change_rates", "per_layer", "circuit_diff", "robustness"):
        assert (tmp_path / f"{name}.png").stat().st_size > 5_000
        assert json.loads((tmp_path / f"{name}.json").read_text()) == json.loads(json.dumps(drawn[name]))
    shutil.copytree(tmp_path, REPO / "artifacts" / "report", dirs_exist_ok=True)  # a CI artifact
    html = (tmp_path / "index.html").read_text()
    assert all(f"{n}.png" in html for n in drawn)
    assert "<th>accuracy %</th>" in html and f"<tr><td>0</td><td>{acc0:.4g}</td>" in html

    # Independent queries, compared with what was drawn.
    metrics = store.read(Q.CHECKPOINT_METRICS, run="demo")
    af = drawn["accuracy_faithfulness"]
    assert af["steps"] == STEPS
    # stored and drawn in percent: step 0's accuracy is the one computed independently (about 50)
    assert metrics[0]["accuracy"] == pytest.approx(acc0) and acc0 >= 25
    assert af["accuracy"] == pytest.approx([m["accuracy"] for m in metrics])
    assert af["faithfulness"] == pytest.approx([m["faithfulness"] for m in metrics])
    assert all(-100 <= y <= 100.0001 for y in af["faithfulness"])

    churn = store.churn("demo", IN_GRAPH)["transitions"]
    assert drawn["churn"]["edges"] == [t["edges_changed"] for t in churn]
    assert drawn["churn"]["nodes"] == [t["nodes_changed"] for t in churn]
    assert drawn["churn"]["transitions"] == ["0→2", "2→4", "4→6", "6→8"]
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

    layers = store.per_layer("demo:0", "demo:8", IN_GRAPH)["layers"]
    pl = drawn["per_layer"]
    assert pl["layers"] == [r["layer"] for r in layers]
    for key in ("nodes_added", "nodes_removed", "edges_added", "edges_removed"):
        assert pl[key.replace("_", " ")] == [r[key] for r in layers]

    diff = store.diff("demo:0", "demo:8", IN_GRAPH, 95.0)
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
        [store.jaccard("rob-add_sub-finetuned:0", f"rob-add_sub-finetuned:{lv}", IN_GRAPH)["edge_jaccard"]
         for lv in (0, 10, 20)])
    assert rob["finetuned"][0] == 1.0


def test_report_cli(stored, tmp_path):
    store, env, _ = stored
    out = tmp_path / "rep"
    proc = run_cli(["report", "demo", "--out", str(out)], env=env)
    assert proc.returncode == 0, proc.stderr
    assert "wrote 6 figures" in proc.stdout and "Browser view 'demo:0..demo:8'" in proc.stdout
    assert (out / "index.html").exists() and (out / "circuit_diff.png").exists()
    views = store.read("MATCH (n:ViewNode {view: 'demo:0..demo:8'}) RETURN count(n) AS n")
    assert views[0]["n"] > 0
    bad = run_cli(["report", "nope", "--out", str(out)], env=env)
    assert bad.returncode == 2 and bad.stderr.startswith("error:")
