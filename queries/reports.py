"""The multi-run report's reads (queries/cypher/reports.py) as plain rows: checkpoint curves of several
runs and the per-run cells of several experiments' method tables. Functions take a `queries.api.Store`
(anything with `read(statement, **params) -> list[dict]`); no torch, no statistics: the report job
aggregates, so the tests can recompute every number from the raw rows."""

from __future__ import annotations

import json
from dataclasses import dataclass

from analysis.errors import UserError
from queries.cypher import reports as R

@dataclass(frozen=True)
class RunCurve:
    """One run's complete checkpoints, accuracy and faithfulness in percent (None: not measured)."""

    run: str
    task: str              # the task's defaults key: add_sub_300, mul_div, compositional, ...
    method: str
    label: str | None      # its experiment label (lora-r32, ...), when tagged
    experiment: str | None
    steps: tuple[int, ...]
    accuracy: tuple[float | None, ...]
    faithfulness: tuple[float | None, ...]
    union_plan: bool       # trained with a plan from a union circuit (CircuitLoRA_U)


def task_key(task: str | None, hparams: str | None) -> str:
    """add_sub + its n -> add_sub_300 (the key the paper's tables use), read from the run's hparams
    (the fine-tuning job stores the resolved per-task defaults key there)."""
    try:
        key = json.loads(hparams or "{}").get("task_defaults")
    except (json.JSONDecodeError, AttributeError):
        key = None
    return key or task or "unknown"


def run_curves(store, runs: list[str]) -> list[RunCurve]:
    """The curves of `runs`, in the order given; an unknown run is a UserError naming it."""
    rows = store.read(R.RUN_CURVES, runs=list(runs))
    missing = [r for r in runs if r not in {row["run"] for row in rows}]
    if missing:
        raise UserError(f"no run {missing[0]!r} in the database")
    return [RunCurve(run=r["run"], task=task_key(r["task"], r["hparams"]), method=r["method"] or "",
                     label=r["label"], experiment=r["experiment"], steps=tuple(r["steps"]),
                     accuracy=tuple(r["accuracy"]), faithfulness=tuple(r["faithfulness"]),
                     union_plan=bool(r["union_plan"])) for r in rows]


def experiments(store, ids: list[str]) -> list[dict]:
    """The experiments' records (task, model, seeds, labels), in the order given; unknown: UserError."""
    rows = {r["id"]: r for r in store.read(R.KNOWN_EXPERIMENTS, experiments=list(ids))}
    missing = [i for i in ids if i not in rows]
    if missing:
        raise UserError(f"no experiment {missing[0]!r} in the database")
    return [rows[i] for i in ids]


def experiment_cells(store, ids: list[str], exclude: list[str]) -> list[dict]:
    """One row per tagged run of the experiments (labels in `exclude`, the phase-1 run, left out):
    experiment, label, seed, run, task (its defaults key), parameter_ratio (a fraction), step-0 and final
    accuracy (percent), union_plan."""
    rows = store.read(R.EXPERIMENT_CELLS, experiments=list(ids), exclude=list(exclude))
    return [{**{k: v for k, v in r.items() if k != "hparams"}, "task": task_key(r["task"], r["hparams"])}
            for r in rows]
