"""What every task family provides, in structured form, so that generation, corruption, perturbation
and import of the paper's CSVs all share one set of rules per task (method.md sections 1 and 7).

A task works on *instances*: small frozen dataclasses holding the numbers/words of one prompt. The engine
(`analysis.tasks.generate`) draws instances, corrupts them, renders them to text and applies the
tokenizer-aware filters; `analysis.tasks.perturb` changes instances and rebuilds their corrupted partner.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from analysis.errors import UserError

Instance = Any  # a task-specific frozen dataclass


class Task:
    """One task family. Subclasses override the methods below; `name` is the registry key."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    default_count: ClassVar[int] = 5000
    # Balanced groups (e.g. operators): the engine fills count/len(groups) examples per group.
    groups: ClassVar[tuple[str, ...]] = ("all",)
    # Word answers (" Paris", " Yes") are single tokens only after a space; numbers are checked bare
    # (method.md 1: `tokenizer.tokenize(str(label))`).
    label_space: ClassVar[bool] = False
    # Corruption kinds `corruption_kind` may return for this task (the shape check of the tests).
    corruption_kinds: ClassVar[tuple[str, ...]] = ()
    # A derived task (the compositional subtasks) is built row by row from another task's instances.
    base_task: ClassVar[str | None] = None

    def __init__(self, **params: Any):
        if params:
            raise UserError(f"task {self.name} takes no parameter(s) {', '.join(sorted(params))}")

    # --- what a subclass implements -------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """The parameters that went into this task (recorded in the manifest)."""
        return {}

    def draw(self, rng: random.Random, group: str) -> Instance | None:
        raise NotImplementedError

    def corrupt(self, inst: Instance, rng: random.Random) -> Instance | None:
        raise NotImplementedError

    def render(self, inst: Instance) -> str:
        raise NotImplementedError

    def answer(self, inst: Instance) -> str | None:
        """The correct next token for this (clean or corrupted) instance; None if not well defined."""
        raise NotImplementedError

    def group_of(self, inst: Instance) -> str:
        return "all"

    def key(self, inst: Instance) -> Any:
        """Deduplication key of a clean instance; the clean prompt unless the paper dedups on less."""
        return self.render(inst)

    def single_tokens(self, inst: Instance, corr: Instance) -> list[str]:
        """Values besides the label that must be single tokens (numbers, bare)."""
        return []

    def perturb(self, inst: Instance, rng: random.Random) -> Instance | None:
        raise NotImplementedError

    def parse(self, prompt: str) -> Instance:
        raise NotImplementedError

    def parse_pair(self, clean: str, corrupted: str) -> tuple[Instance, Instance]:
        return self.parse(clean), self.parse(corrupted)

    def corruption_kind(self, inst: Instance, corr: Instance) -> str:
        raise NotImplementedError

    def extra_check(self, inst: Instance, corr: Instance, checker) -> str | None:
        """A further filter (its name if it rejects the pair), e.g. the compositional subtasks' rules."""
        return None


def match(pattern: re.Pattern, prompt: str, task: str) -> re.Match:
    """The template match of one prompt, or a UserError naming the task and showing the prompt."""
    m = pattern.fullmatch(prompt)
    if m is None:
        raise UserError(f"prompt does not match the {task} template: {prompt[:120]!r}")
    return m


@dataclass(frozen=True)
class Row:
    """One generated example: the clean and corrupted instances, kept for perturbation."""
    clean: Instance
    corrupted: Instance
