"""Arithmetic/geometric sequences (method.md 1.3; perturbation 7)."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from analysis.tasks.base import Task, match
from analysis.tasks.words import SEQUENCE_PREFIX

_SEQ = re.compile(re.escape(SEQUENCE_PREFIX) + r"(\d+), (\d+), (\d+), (\d+),")


@dataclass(frozen=True)
class Seq:
    shown: tuple[int, int, int, int]
    next: int | None  # t5; None for a corrupted sequence (no well-defined continuation)


def _kind(shown: tuple[int, ...]) -> str:
    d = shown[1] - shown[0]
    if all(shown[i + 1] - shown[i] == d for i in range(3)):
        return "arithmetic"
    if shown[0] and all(shown[i + 1] == shown[i] * (shown[1] // shown[0]) for i in range(3)):
        return "geometric"
    return "other"


def _extend(shown: tuple[int, ...]) -> int | None:
    kind = _kind(shown)
    if kind == "arithmetic":
        return 2 * shown[3] - shown[2]
    if kind == "geometric":
        return shown[3] * (shown[1] // shown[0])
    return None


class Sequence(Task):
    """`Derive the following sequence: t1, t2, t3, t4,` -> t5; corruption bumps t3 or t4."""

    name = "sequence"
    summary = "Arithmetic/geometric sequence: '152, 157, 162, 167,' -> 172; corruption bumps t3 or t4"
    corruption_kinds = ("term_3", "term_4")

    def draw(self, rng: random.Random, group: str) -> Seq:
        if rng.random() < 0.5:
            start, step = rng.randint(1, 500), rng.randint(1, 100)
            terms = [start + i * step for i in range(5)]
        else:
            start, ratio = rng.randint(1, 10), rng.randint(2, 10)
            terms = [start * ratio ** i for i in range(5)]
        return Seq(tuple(terms[:4]), terms[4])

    def corrupt(self, inst: Seq, rng: random.Random) -> Seq | None:
        pos = rng.choice((2, 3))
        new = inst.shown[pos] + rng.randint(1, 100)
        if new in inst.shown or new == inst.next:
            return None
        shown = list(inst.shown)
        shown[pos] = new
        return Seq(tuple(shown), None)

    def render(self, inst: Seq) -> str:
        return SEQUENCE_PREFIX + "".join(f"{t}, " for t in inst.shown).rstrip()

    def answer(self, inst: Seq) -> str | None:
        return None if inst.next is None else str(inst.next)

    def group_of(self, inst: Seq) -> str:
        return _kind(inst.shown)

    def key(self, inst: Seq):
        return inst.shown

    def single_tokens(self, inst: Seq, corr: Seq) -> list[str]:
        return [str(t) for t in inst.shown + corr.shown]

    def perturb(self, inst: Seq, rng: random.Random) -> Seq | None:
        # Arithmetic: shift every term by one integer. Geometric: new first term, same ratio.
        terms = inst.shown + (inst.next,)
        if _kind(inst.shown) == "geometric":
            ratio = terms[1] // terms[0]
            start = rng.randint(1, 10)
            new = [start * ratio ** i for i in range(5)]
        else:
            shift = rng.choice([-1, 1]) * rng.randint(1, 100)
            new = [t + shift for t in terms]
            if new[0] < 1:
                return None
        return Seq(tuple(new[:4]), new[4])

    def parse(self, prompt: str) -> Seq:
        shown = tuple(int(g) for g in match(_SEQ, prompt, self.name).groups())
        return Seq(shown, _extend(shown))

    def parse_pair(self, clean: str, corrupted: str):
        corr = self.parse(corrupted)
        return self.parse(clean), Seq(corr.shown, None)

    def corruption_kind(self, inst: Seq, corr: Seq) -> str:
        diff = [i for i in range(4) if inst.shown[i] != corr.shown[i]]
        if len(diff) == 1 and diff[0] in (2, 3) and 1 <= corr.shown[diff[0]] - inst.shown[diff[0]] <= 100:
            return f"term_{diff[0] + 1}"
        return "other"
