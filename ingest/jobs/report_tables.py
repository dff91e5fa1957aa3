"""The paper's method tables (Tables 1, 3, 4; method.md 8) from several experiments' stored runs.

Every column is one experiment (its task); a cell is the mean and sample standard deviation over seeds
of the final checkpoint's accuracy (percent), as `experiment table` computes it for one experiment; the
pre-trained row is each seed's step-0 accuracy (one value per seed, averaged over that seed's runs). The
paper's published numbers sit beside ours, in columns marked "(paper)".
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from ingest.jobs import paper_numbers as P
from ingest.jobs.circuitlora import UNION_KIND, display_label  # UNION_KIND: CircuitLoRA_U (method.md 5)
from ingest.jobs.experiment import TABLE_ORDER
from ingest.jobs.report_page import PAPER_MARK as P_MARK

TABLES = ("Table 1", "Table 4", "Table 3", "Other tasks")


@dataclass(frozen=True)
class Cell:
    """One method on one experiment: accuracies over seeds (percent) and the parameter ratio (percent)."""

    values: tuple[float, ...]
    ratio_percent: float

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    def text(self) -> str:
        std = self.std
        return f"{self.mean:.2f}" + ("" if std is None else f" ± {std:.2f}") + f" (n={len(self.values)})"


@dataclass(frozen=True)
class MethodTable:
    title: str                                   # Table 1 | Table 3 | Table 4 | Other tasks
    columns: tuple[tuple[str, str], ...]         # (experiment, task)
    cells: dict                                  # (label, experiment) -> Cell

    @property
    def labels(self) -> list[str]:
        present = {label for label, _ in self.cells}
        rank = {lb: i for i, lb in enumerate(row_order(self.title))}
        return sorted(present, key=lambda lb: (rank.get(lb, len(rank)), lb))


def row_order(title: str) -> list[str]:
    return list(P.TABLE3_ROWS) if title == "Table 3" else list(TABLE_ORDER)


def row_label(cell: dict) -> str:
    """A CircuitLoRA run trained from a union plan is CircuitLoRA_U (`experiment compare` tags such runs
    circuitlora_u-RO-RC itself; a circuitlora-RO-RC run tagged by hand is recognised by its plan)."""
    label = cell["label"]
    if cell.get("union_plan") and label.startswith("circuitlora-"):
        return UNION_KIND + label[len("circuitlora"):]
    return label


def method_name(label: str, title: str) -> str:
    if title == "Table 3" and label.startswith("circuitlora-"):
        return display_label(label).replace("CircuitLoRA", "CircuitLoRA_C", 1)
    return display_label(label)


def method_tables(cells: list[dict], experiments: list[dict]) -> dict[str, MethodTable]:
    """The tables the experiments fill, keyed by title; `cells`: queries.reports.experiment_cells rows."""
    task_of = {}
    for x in experiments:
        tasks = {c["task"] for c in cells if c["experiment"] == x["id"]}
        task_of[x["id"]] = sorted(tasks)[0] if tasks else (x.get("task") or "unknown")
    values: dict[tuple[str, str], list[float]] = {}
    ratios: dict[tuple[str, str], list[float]] = {}
    step0: dict[tuple[str, int], list[float]] = {}
    for c in cells:
        if c["first_step"] == 0 and c["accuracy_step0"] is not None:
            step0.setdefault((c["experiment"], c["seed"]), []).append(c["accuracy_step0"])
        if c["final_step"] > 0 and c["accuracy"] is not None:
            key = (row_label(c), c["experiment"])
            values.setdefault(key, []).append(c["accuracy"])
            ratios.setdefault(key, []).append(100.0 * (c["parameter_ratio"] or 0.0))
    for (x, _seed), accs in sorted(step0.items()):
        values.setdefault(("pretrained", x), []).append(statistics.fmean(accs))
        ratios.setdefault(("pretrained", x), []).append(0.0)
    tables: dict[str, MethodTable] = {}
    for x in experiments:
        title = P.table_of(task_of[x["id"]])
        t = tables.get(title) or MethodTable(title, (), {})
        cs = {k: Cell(tuple(v), statistics.fmean(ratios[k])) for k, v in values.items() if k[1] == x["id"]}
        tables[title] = MethodTable(title, t.columns + ((x["id"], task_of[x["id"]]),), {**t.cells, **cs})
    return {title: tables[title] for title in TABLES if title in tables}


def _fixed(value: float | None, digits: int) -> str | None:
    """The paper's numbers as printed there (82.70, 0.1111), not as floats shorten them."""
    return None if value is None else f"{value:.{digits}f}"


def table_rows(t: MethodTable) -> list[dict]:
    """Rows for the page: per column ours and the paper's accuracy, then ours and the paper's ratio."""
    rows = []
    for label in t.labels:
        row = {"method": method_name(label, t.title)}
        ratios = []
        for x, task in t.columns:
            cell = t.cells.get((label, x))
            row[f"{task} [{x}] accuracy %"] = cell.text() if cell else "missing"
            if t.title != "Other tasks":
                row[f"{task} accuracy % {P_MARK}"] = _fixed(P.paper_accuracy(label, task), 2)
            if cell:
                ratios.append(cell.ratio_percent)
        row["parameter ratio %"] = f"{statistics.fmean(ratios):.4f}" if ratios else None
        row[f"parameter ratio % {P_MARK}"] = _fixed(P.PARAMETER_RATIO.get(label), 4) if t.title != "Table 3" else None
        rows.append(row)
    return rows


def missing_notes(t: MethodTable) -> list[str]:
    """What of the paper's table the stored experiments do not cover, in words."""
    notes = []
    if t.title == "Other tasks":
        return notes
    paper = {"Table 1": P.TABLE1, "Table 4": P.TABLE4, "Table 3": P.TABLE3}[t.title]
    tasks = {"Table 1": P.TABLE1_TASKS, "Table 4": P.TABLE4_TASKS, "Table 3": P.TABLE3_TASKS}[t.title]
    ours = {task for _, task in t.columns}
    absent_tasks = [task for task in tasks if task not in ours]
    if absent_tasks:
        notes.append(f"No experiment here on {', '.join(absent_tasks)} (the paper's other columns).")
    absent_rows = [label for label in paper if label not in t.labels]
    if absent_rows:
        notes.append("Rows of the paper with no stored run here: "
                     + ", ".join(method_name(lb, t.title) for lb in absent_rows) + ".")
    if t.title == "Table 3" and not any(lb.startswith(UNION_KIND) for lb in t.labels):
        notes.append("CircuitLoRA_U is missing: no run of these experiments was trained with a plan from a "
                     "union circuit. Store the unions of the pre-trained and of the fine-tuned subtask circuits "
                     "with `circuitshift query union A:STEP B:STEP --as RUN:STEP`, then rerun this experiment's "
                     f"`experiment compare` with {UNION_KIND}-8-32 added to --methods, `--union-before "
                     "BASE_UNION:STEP --union-after AFTER_UNION:STEP` and the same --experiment ID (its stored "
                     "runs are not trained again).")
    return notes
