"""The generation engine: draw, deduplicate, corrupt, filter, balance (method.md 1).

Like the paper's scripts it draws until every balanced group holds its quota. When the filters leave
too few examples it stops with a UserError saying how many survived and which filters removed the rest.
"""

from __future__ import annotations

import random
from collections import Counter

from analysis.datasets import PromptPair
from analysis.errors import UserError
from analysis.tasks.base import Row, Task
from analysis.tasks.filters import (DUPLICATE, INVALID, NO_CORRUPTION, TokenChecker, answer_text,
                                    check_pair, corrupted_label)
from analysis.tasks.registry import make_task

# Draws allowed per requested example before giving up (the sparsest default task needs ~3).
DRAWS_PER_EXAMPLE = 200


def quotas(task: Task, count: int) -> dict[str, int]:
    if count < 1:
        raise UserError(f"count must be at least 1, not {count}")
    if count % len(task.groups):
        raise UserError(f"{task.name}: count {count} cannot be balanced over {len(task.groups)} groups "
                        f"({', '.join(task.groups)}); use a multiple of {len(task.groups)}")
    return {g: count // len(task.groups) for g in task.groups}


def generate_rows(task: Task, count: int, seed: int, checker: TokenChecker) -> list[Row]:
    """`count` clean/corrupted instance pairs, balanced over `task.groups`, in draw order."""
    if task.base_task:
        base = make_task(task.base_task)
        return [Row(*task.derive(r.clean, r.corrupted)) for r in generate_rows(base, count, seed, checker)]
    rng = random.Random(seed)
    need = quotas(task, count)
    have = Counter()
    seen: set = set()
    rejected: Counter = Counter()
    rows: list[Row] = []
    budget = DRAWS_PER_EXAMPLE * count + 10_000
    draws = 0
    # Round-robin over the groups that still need examples keeps the draw order deterministic.
    while len(rows) < count and draws < budget:
        for group in task.groups:
            if have[group] >= need[group]:
                continue
            draws += 1
            inst = task.draw(rng, group)
            if inst is None:
                rejected[INVALID] += 1
                continue
            key = task.key(inst)
            if key in seen:
                rejected[DUPLICATE] += 1
                continue
            corr = task.corrupt(inst, rng)
            if corr is None:
                rejected[NO_CORRUPTION] += 1
                continue
            why = check_pair(task, inst, corr, checker)
            if why:
                rejected[why] += 1
                continue
            seen.add(key)
            have[group] += 1
            rows.append(Row(inst, corr))
    if len(rows) < count:
        worst = ", ".join(f"{name}: {n} rejected" for name, n in rejected.most_common())
        per_group = ", ".join(f"{g!r} {have[g]}/{need[g]}" for g in task.groups)
        raise UserError(f"{task.name}: only {len(rows)} of {count} examples survived the filters after "
                        f"{draws} draws ({per_group}); {worst or 'no rejections'}. Ask for fewer (--count) "
                        "or use a tokenizer that keeps these numbers single tokens"
                        + (" (or --answer-tokens any for a digit-splitting tokenizer)"
                           if checker.answer_tokens == "1" else ""))
    return rows


def to_pairs(task: Task, rows: list[Row], checker: TokenChecker | None) -> list[PromptPair]:
    return [PromptPair(task.render(r.clean), task.render(r.corrupted),
                       answer_text(task, task.answer(r.clean), checker),
                       corrupted_label(task, r.corrupted, checker)) for r in rows]


def generate(task: Task | str, tokenizer, count: int | None = None, seed: int = 42,
             answer_tokens: str = "1", leading_space: bool | None = None, **params) -> list[PromptPair]:
    """Convenience: prompt pairs of a task for a tokenizer (object), e.g. generate("add_sub", tok, n=200)."""
    task = make_task(task, **params) if isinstance(task, str) else task
    checker = TokenChecker(tokenizer, answer_tokens, leading_space)
    return to_pairs(task, generate_rows(task, count or task.default_count, seed, checker), checker)
