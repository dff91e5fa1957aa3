"""Robustness perturbations (method.md 7): perturb a fraction p of the circuit split.

Each chosen example gets a new clean instance from the task's own perturbation rule; its corrupted
partner is rebuilt with the task's normal corruption rule and its label recomputed. A perturbed prompt
that already exists in the dataset (or fails a filter) is resampled, up to 100 attempts [rebuttal];
an example that still fails stays unperturbed and is counted in the returned stats.
"""

from __future__ import annotations

import random

from analysis.errors import UserError
from analysis.tasks.base import Row, Task
from analysis.tasks.filters import TokenChecker, check_pair
from analysis.tasks.registry import make_task

LEVELS = tuple(round(0.1 * i, 1) for i in range(1, 10))
MAX_ATTEMPTS = 100


def parse_levels(text: str) -> tuple[float, ...]:
    """`all` -> 0.1..0.9; else a comma list of fractions (0.3) or percents (30)."""
    if text.strip() == "all":
        return LEVELS
    levels: list[float] = []
    for part in text.split(","):
        part = part.strip().rstrip("%")
        try:
            value = float(part)
        except ValueError:
            raise UserError(f"perturbation level {part!r} is not a number") from None
        if value > 1 and value.is_integer():
            value /= 100  # percents: 10 means 10%
        if not 0 < value < 1 or abs(value * 100 - round(value * 100)) > 1e-9:
            raise UserError(f"perturbation level {part!r} must be a whole percent strictly between 0 and "
                            "100 (0.1..0.99 or 1..99)")
        value = round(value, 2)
        if value in levels:
            raise UserError(f"perturbation level {part!r} is given twice")
        levels.append(value)
    return tuple(levels)


def _perturb_one(task: Task, row: Row, rng: random.Random, checker: TokenChecker):
    if task.base_task:  # compositional subtasks: perturb the shared instance, then derive
        base = make_task(task.base_task)
        new = base.perturb(row.clean, rng)
        corr = None if new is None else base.corrupt(new, rng)
        if corr is None or check_pair(base, new, corr, checker):
            return None
        return Row(*task.derive(new, corr))
    new = task.perturb(row.clean, rng)
    corr = None if new is None else task.corrupt(new, rng)
    if corr is None or check_pair(task, new, corr, checker):
        return None
    return Row(new, corr)


def perturb_rows(task: Task, rows: list[Row], level: float, seed: int, checker: TokenChecker,
                 taken: set | None = None) -> tuple[list[Row], dict]:
    """A copy of `rows` with round(level * len(rows)) of them perturbed; stats for the manifest.

    `taken` holds the dedup keys a perturbed prompt must avoid (default: the keys of `rows`).
    """
    rng = random.Random(seed * 1000 + round(level * 1000))
    n = round(level * len(rows))
    chosen = sorted(rng.sample(range(len(rows)), n))
    taken = set(taken) if taken is not None else {task.key(r.clean) for r in rows}
    out = list(rows)
    failed = 0
    for i in chosen:
        for _ in range(MAX_ATTEMPTS):
            new = _perturb_one(task, rows[i], rng, checker)
            if new is not None and task.key(new.clean) not in taken:
                taken.add(task.key(new.clean))
                out[i] = new
                break
        else:
            failed += 1
    return out, {"level": level, "chosen": n, "perturbed": n - failed, "unchanged_after_retries": failed}
