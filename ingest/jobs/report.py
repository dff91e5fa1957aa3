"""The report job (`circuitshift report RUN`): gather a run's numbers from the store (named queries only,
no scoring), turn them into the paper's figures (analysis/figures.py) and one HTML page, and store the
first -> last difference as a Neo4j Browser view."""

from __future__ import annotations

import html
import itertools
import json
import statistics
from pathlib import Path

import click

from analysis import figures as F
from analysis.errors import UserError
from ingest.jobs.report_page import STYLE, html_table
from queries import exploration as X
from queries.api import Store
from queries.connection import session_driver
from queries.cypher.views import SHOW_VIEW


def _jaccard_series(store, run: str, steps: list[int], definition) -> list[float]:
    return [store.jaccard(f"{run}:{steps[0]}", f"{run}:{s}", definition)["edge_jaccard"] for s in steps]


def robustness_data(store, run: str, definition) -> dict:
    """Robustness runs linked to RUN (or on its task): Jaccard to the clean circuit (step 0) per
    perturbation level, per model; mean pairwise Jaccard over disjoint splits."""
    task = store.run_task(run)
    out: dict = {"levels": [], "series": {}, "splits": {}, "runs": []}
    for r in store.analysis_runs("robustness", run, task):
        if len(r["steps"]) < 2 or r["steps"][0] != 0:
            continue
        out["series"][r["label"]] = _jaccard_series(store, r["run"], r["steps"], definition)
        out["levels"] = sorted(set(out["levels"]) | set(r["steps"]))
        out["runs"].append(r["run"])
    for r in store.analysis_runs("splits", run, task):
        pairs = list(itertools.combinations(r["steps"], 2))
        if pairs:
            vals = [store.jaccard(f"{r['run']}:{a}", f"{r['run']}:{b}", definition)["edge_jaccard"]
                    for a, b in pairs]
            out["splits"][r["label"]] = statistics.fmean(vals)
            out["runs"].append(r["run"])
    return out


def gather(store, run: str, definition, pct: float = 95.0) -> dict:
    """Everything the report draws, from stored data only."""
    metrics = store.checkpoint_metrics(run)
    if len(metrics) < 2:
        raise UserError(f"run {run!r} has {len(metrics)} complete checkpoint(s); a report needs 2+")
    steps = [m["step"] for m in metrics]
    a, b = f"{run}:{steps[0]}", f"{run}:{steps[-1]}"
    churn = store.churn(run, definition)
    noise = X.churn_against_noise(store, run, definition)
    noise_rate = None
    if noise["noise_runs"]:
        rates = [store.change_rate(nr, definition) for nr in noise["noise_runs"]
                 if len(store.run_info(nr)["steps"]) >= 2]
        if rates:
            noise_rate = {"node_change_rate": statistics.fmean(r["node_change_rate"] for r in rates),
                          "edge_change_rate": statistics.fmean(r["edge_change_rate"] for r in rates)}
    diff = store.diff(a, b, definition, pct)
    d = X.diff_edges(store, a, b, definition, pct)
    arch = d["arch"]
    names = [c["name"] for c in arch.components]
    return {
        "run": run, "definition": definition.describe(), "first": a, "last": b, "pct": pct,
        "metrics": metrics, "churn": churn["transitions"], "change_rate": store.change_rate(run, definition),
        "noise": noise, "noise_rate": noise_rate,
        "per_layer": store.per_layer(a, b, definition)["layers"], "diff": diff,
        "diff_edges": [{"name": e["name"], "src": names[e["src"]], "dst": names[e["dst"]],
                        "status": e["status"], "s": e["s"]} for e in d["edges"]],
        "components": arch.components, "n_layers": arch.n_layers,
        "robustness": robustness_data(store, run, definition),
    }


def build(data: dict, out: Path) -> dict:
    """Draw every figure into `out` and write index.html; returns {figure name: drawn data}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run = data["run"]
    m = data["metrics"]
    drawn = {}
    drawn["accuracy_faithfulness"] = F.plot_accuracy_faithfulness(
        out, [r["step"] for r in m], [r["accuracy"] for r in m], [r["faithfulness"] for r in m],
        title=f"{run}: accuracy and faithfulness")
    ts = data["churn"]
    drawn["churn"] = F.plot_churn(
        out, [f"{t['from_step']}→{t['to_step']}" for t in ts], [t["nodes_changed"] for t in ts],
        [t["edges_changed"] for t in ts], noise=data["noise"]["noise"] if data["noise"]["noise_pairs"] else None,
        title=f"{run}: churn ({data['definition']})")
    cr, nr = data["change_rate"], data["noise_rate"] or {}
    drawn["change_rates"] = F.plot_change_rates(out, cr["node_change_rate"], cr["edge_change_rate"],
                                                nr.get("node_change_rate"), nr.get("edge_change_rate"))
    pl = data["per_layer"]
    drawn["per_layer"] = F.plot_per_layer(
        out, [r["layer"] for r in pl], [r["nodes_added"] for r in pl], [r["nodes_removed"] for r in pl],
        [r["edges_added"] for r in pl], [r["edges_removed"] for r in pl],
        title=f"{data['first']} → {data['last']}")
    diff = data["diff"]
    drawn["circuit_diff"] = F.plot_circuit_diff(
        out, data["components"], data["n_layers"], data["diff_edges"], diff["degree"],
        diff["added_nodes"], diff["removed_nodes"],
        title=f"{data['first']} → {data['last']} (edges ≥ {data['pct']:g}th percentile of |score|)")
    rob = data["robustness"]
    if rob["series"] or rob["splits"]:
        drawn["robustness"] = F.plot_robustness(out, rob["levels"], rob["series"], rob["splits"])
    (out / "report.json").write_text(json.dumps(
        {k: v for k, v in data.items() if k not in ("components",)}, indent=1, default=str))
    (out / "index.html").write_text(_html(data, drawn))
    return drawn


def _html(data: dict, drawn: dict) -> str:
    run = html.escape(data["run"])
    cr = data["change_rate"]
    noise = data["noise"]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>circuitshift report: {run}</title>",
             STYLE + "</head><body>",
             f"<h1>Circuit report: {run}</h1>",
             f"<p>Circuits: {html.escape(data['definition'])}. Every number comes from the store "
             "(named Cypher queries); nothing was re-scored.</p>",
             "<h2>Accuracy and faithfulness</h2><img src='accuracy_faithfulness.png'>",
             html_table([{"step": m["step"], "accuracy %": m["accuracy"], "circuit accuracy %": m["circuit_accuracy"],
                      "faithfulness %": m["faithfulness"], "circuit edges": m["n_in_graph"]}
                     for m in data["metrics"]]),
             "<h2>Churn per transition, against resampling noise</h2><img src='churn.png'>"]
    if noise["noise_pairs"]:
        parts.append(f"<p>Noise: churn between circuits of one checkpoint scored on resampled data "
                     f"({html.escape(', '.join(noise['noise_runs']))}; {noise['noise_pairs']} pairs). "
                     "A transition whose churn is not above the noise maximum is indistinguishable "
                     "from resampling.</p>")
    else:
        parts.append("<p>No noise baseline stored: run <code>circuitshift robustness --noise-of "
                     f"{run}:STEP ...</code> to judge churn against resampling noise.</p>")
    parts.append(html_table(noise["transitions"]))
    parts.append("<h2>Change rate</h2><img src='change_rates.png'>")
    parts.append(html_table([{"": "fine-tuning", "node Δ_S %": cr["node_change_rate"],
                          "edge Δ_S %": cr["edge_change_rate"]}]
                        + ([{"": "noise", "node Δ_S %": data["noise_rate"]["node_change_rate"],
                             "edge Δ_S %": data["noise_rate"]["edge_change_rate"]}]
                           if data["noise_rate"] else [])))
    parts.append(f"<h2>Per-layer changes {html.escape(data['first'])} → {html.escape(data['last'])}"
                 "</h2><img src='per_layer.png'>")
    d = data["diff"]
    parts.append("<h2>Circuit difference (Fig. 3)</h2><img src='circuit_diff.png'>"
                 f"<p>{d['edges_added']} edges added, {d['edges_removed']} removed; "
                 f"{d['nodes_added']} nodes added, {d['nodes_removed']} removed. In Neo4j Browser: "
                 f"<code>:param view =&gt; {html.escape(json.dumps(X.view_id(data['first'], data['last'])))}</code> "
                 f"then <code>{html.escape(SHOW_VIEW)}</code></p>")
    if "robustness" in drawn:
        parts.append("<h2>Robustness</h2><img src='robustness.png'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(run: str, out: Path | None, pct: float, browser_view: bool, definition) -> dict:
    """The figures and index.html of RUN under `out` (default reports/RUN), and its Browser view."""
    out = out or Path("reports") / run.replace("/", "_").replace(":", "_")
    with session_driver() as (driver, database):
        data = gather(Store(driver, database), run, definition, pct)
        view = X.write_diff_view(driver, database, data["first"], data["last"], definition, pct) \
            if browser_view else None
    drawn = build(data, out)
    click.echo(f"wrote {len(drawn)} figures and {out / 'index.html'}")
    if view:
        click.echo(f"Browser view {view['view']!r}: {view['added']} added, {view['removed']} removed, "
                   f"{view['kept']} kept edges")
    return {"out": out, "figures": drawn, "view": view}
