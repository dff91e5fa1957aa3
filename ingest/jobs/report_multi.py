"""The report of several runs or experiments (`circuitshift report RUN [RUN ...]`, `report --experiment
ID ...`): Figure 2 across tasks, Figure 4, Tables 1, 3 and 4 and the union circuit's faithfulness curve
(method.md 8), from stored data only (the union curve alone evaluates a model), as one HTML page, its
Markdown twin and PNG figures. Every accuracy and faithfulness is in percent, parameter ratios too."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import click

from analysis import figures as F
from analysis.errors import UserError
from ingest.jobs import paper_numbers as P
from ingest.jobs.circuitlora import PHASE1
from ingest.jobs.report import robustness_data
from ingest.jobs.report_page import Section, to_html, to_markdown
from ingest.jobs.report_tables import method_tables, missing_notes, table_rows
from ingest.jobs.report_union import UnionSource, union_report
from queries import reports as R
from queries.api import CircuitDefinition, Store
from queries.connection import session_driver


@dataclass(frozen=True)
class MultiReport:
    """What `circuitshift report` was asked for, beyond one run."""

    runs: tuple[str, ...] = ()
    experiments: tuple[str, ...] = ()
    definition: CircuitDefinition = CircuitDefinition()
    union: UnionSource | None = None
    union_max_edges: int | None = None
    union_model: str | None = None   # the curve evaluates the union on this model's circuit split
    union_data: str | None = None
    device: str = "cpu"
    batch_size: int = 16

    def __post_init__(self):
        if not self.runs and not self.experiments:
            raise UserError("give runs (report RUN [RUN ...]) or --experiment ID")
        if bool(self.union_model) != bool(self.union_data):
            raise UserError("the union's faithfulness curve needs both --union-model and --union-data")
        if self.union_model and not self.union:
            raise UserError("--union-model needs --union A:STEP,B:STEP (or a stored union RUN:STEP)")


def figure_runs(store, req: MultiReport) -> list[str]:
    """The runs drawn: those given, else each experiment's runs of its first seed."""
    if req.runs:
        return list(req.runs)
    cells = R.experiment_cells(store, list(req.experiments), exclude=[PHASE1])
    first = {}
    for c in cells:
        first.setdefault(c["experiment"], c["seed"])
    return [c["run"] for c in cells if c["seed"] == first[c["experiment"]]]


def gather_multi(store, req: MultiReport) -> dict:
    """Everything the page shows, read from the store (no scoring)."""
    experiments = R.experiments(store, list(req.experiments))
    cells = R.experiment_cells(store, list(req.experiments), exclude=[PHASE1])
    curves = R.run_curves(store, figure_runs(store, req))
    robustness: dict = {"levels": [], "series": {}}
    for task in dict.fromkeys(c.task for c in curves):  # one robustness set per task
        rob = robustness_data(store, next(c.run for c in curves if c.task == task), req.definition)
        robustness["levels"] = sorted(set(robustness["levels"]) | set(rob["levels"]))
        robustness["series"].update({f"{task}: {label}": ys for label, ys in rob["series"].items()})
    return {"runs": list(req.runs), "experiments": experiments, "cells": cells,
            "curves": [asdict(c) for c in curves], "robustness": robustness,
            "definition": req.definition.describe()}


def _curve_series(curves: list[dict]) -> dict[str, dict]:
    return {f"{c['task']}: {c['run']}": {"steps": c["steps"], "accuracy": c["accuracy"],
                                         "faithfulness": c["faithfulness"]} for c in curves}


def _figure_sections(data: dict, out: Path, drawn: dict) -> list[Section]:
    curves = data["curves"]
    drawn["figure2"] = F.plot_checkpoint_curves(out, "figure2", _curve_series(curves), data["robustness"],
                                                "Figure 2 across tasks")
    rows = tuple({"run": c["run"], "task": c["task"], "method": c["method"], "checkpoints": len(c["steps"]),
                  "final accuracy %": c["accuracy"][-1] if c["accuracy"] else None,
                  "final faithfulness %": c["faithfulness"][-1] if c["faithfulness"] else None}
                 for c in curves)
    rob = ("Robustness panel: edge Jaccard to the clean circuit of the robustness runs linked to these "
           "runs or their tasks." if data["robustness"]["series"] else
           "No robustness run is linked to these runs (`circuitshift robustness --of RUN`): no robustness panel.")
    sections = [Section("Figure 2: accuracy and faithfulness over checkpoints, across tasks",
                        ("Model accuracy and circuit faithfulness (percent) at every stored checkpoint, one "
                         "line per run. The paper: faithfulness > 80% on most tasks, all > 70%; Add/Sub(100) "
                         "checkpoint 0 = 77.52% (paper).", rob), ("figure2.png",), (rows,))]
    fig4 = [c for c in curves if c["task"] in P.FIGURE4_TASKS]
    if fig4:
        drawn["figure4"] = F.plot_checkpoint_curves(out, "figure4", _curve_series(fig4), None,
                                                    "Figure 4: Add/Sub 200-500")
        sections.append(Section("Figure 4: Add/Sub 200-500", ("Accuracy and faithfulness (percent) over "
                                "checkpoints of the Add/Sub 200-500 runs given.",), ("figure4.png",)))
    else:
        sections.append(Section("Figure 4: Add/Sub 200-500", (
            "Missing: none of the runs drawn is on Add/Sub 200, 300, 400 or 500 (tasks here: "
            + ", ".join(sorted({c["task"] for c in curves})) + ").",)))
    return sections


def _table_sections(data: dict) -> tuple[list[Section], dict]:
    if not data["experiments"]:
        return [Section("Tables 1, 3 and 4", ("No experiment given (`report --experiment ID`): no method "
                                              "table.",))], {}
    tables = method_tables(data["cells"], data["experiments"])
    stat = ("Ours: mean ± sample std over seeds (n = seeds) of the final checkpoint's accuracy (percent); the "
            "pre-trained row is the step-0 accuracy. Parameter ratio: trainable / (base + trainable), percent. "
            "Columns marked (paper) are the paper's published numbers (method.md 8), not ours.")
    sections, rows = [], {}
    for title, t in tables.items():
        rows[title] = table_rows(t)
        sections.append(Section(title, (stat, *missing_notes(t)), (), (tuple(rows[title]),)))
    if "Table 3" not in tables:
        sections.append(Section("Table 3", ("Missing: no experiment on the compositional task given "
                                            "(CircuitLoRA_C and CircuitLoRA_U need one).",)))
    return sections, rows


def _union_section(union: dict | None, out: Path, drawn: dict) -> list[Section]:
    if union is None:
        return []
    text = [f"Union circuit {union['union']} ({union['edges']} head-level edges"
            + (f", of {' and '.join(union['of'])}" if len(union["of"]) > 1 else "")
            + f"), exported as EAP-IG graph JSON: `{union['file']}` (reads back with `circuitshift import "
              f"eap-json`). The paper: union faithfulness {P.UNION_FAITHFULNESS}% vs "
              f"{P.COMPOSITIONAL_FAITHFULNESS}% for the compositional circuit (paper)."]
    if union["curve"] is None:
        text.append("Faithfulness curve not computed: give `--union-model MODEL --union-data DATA` (the "
                    "compositional fine-tuned model and its data). The paper's curve (paper):")
        rows = tuple({"top %": round(100 * f, 2), "faithfulness % (paper)": v} for f, v in P.UNION_CURVE.items())
        return [Section("Union circuit: faithfulness vs % of edges", tuple(text), (), (rows,))]
    c = union["curve"]
    drawn["union_curve"] = F.plot_union_curve(out, [r["top %"] / 100 for r in c], [r["faithfulness %"] for r in c],
                                              [r["faithfulness % (paper)"] for r in c])
    return [Section("Union circuit: faithfulness vs % of edges", tuple(text), ("union_curve.png",), (tuple(c),))]


def build_multi(data: dict, out: Path) -> dict:
    """Draw the figures into `out`, write index.html, report.md and report.json; returns what was drawn."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    drawn: dict = {}
    sections = _figure_sections(data, out, drawn)
    tables, rows = _table_sections(data)
    sections += tables + _union_section(data.get("union"), out, drawn)
    ids = data["runs"] + [x["id"] for x in data["experiments"]]
    title = "circuitshift report: " + ", ".join(ids)
    (out / "index.html").write_text(to_html(title, sections))
    (out / "report.md").write_text(to_markdown(title, sections))
    (out / "report.json").write_text(json.dumps({**data, "tables": rows}, indent=1, default=str))
    return {"figures": drawn, "tables": rows}


def write_multi_report(req: MultiReport, out: Path | None = None) -> dict:
    ids = list(req.runs) + list(req.experiments)
    out = Path(out or Path("reports") / "_".join(i.replace("/", "_").replace(":", "_") for i in ids)[:100])
    with session_driver() as (driver, database):
        data = gather_multi(Store(driver, database), req)
        if req.union:
            data["union"] = union_report(driver, database, req.union, out, req.definition, req.union_max_edges,
                                         req.union_model, req.union_data, req.device, req.batch_size)
    built = build_multi(data, out)
    click.echo(f"wrote {len(built['figures'])} figures, {out / 'index.html'} and {out / 'report.md'}")
    return {"out": out, **built}
