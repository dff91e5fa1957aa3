"""Least common multiple with one in-context example (method.md 1.4; perturbation 7)."""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, replace

from analysis.tasks.base import Task, match
from analysis.tasks.words import LCM_PREFIX

STRATEGIES = ("multiple", "coprime", "common_factor")
_LCM = re.compile(re.escape(LCM_PREFIX) + r"LCM\((\d+), (\d+)\) = (\d+), LCM\((\d+), (\d+)\) =")


@dataclass(frozen=True)
class Lcm:
    strategy: str
    example: tuple[int, int]
    query: tuple[int, int]


def _pair(strategy: str, rng: random.Random) -> tuple[int, int]:
    if strategy == "multiple":
        base = rng.randint(1, 50)
        return base, base * rng.randint(2, 10)
    if strategy == "coprime":
        while True:
            a, b = rng.randint(1, 100), rng.randint(1, 100)
            if math.gcd(a, b) == 1:
                return a, b
    while True:
        base, f1, f2 = rng.randint(2, 50), rng.randint(2, 10), rng.randint(2, 10)
        if f1 != f2:
            return base * f1, base * f2


def strategy_of(a: int, b: int) -> str:
    """The strategy a pair could have come from (for rows read from the paper's CSV)."""
    if a != b and (a % b == 0 or b % a == 0):
        return "multiple"
    return "coprime" if math.gcd(a, b) == 1 else "common_factor"


class LcmTask(Task):
    """`... LCM(a1, b1) = l1, LCM(a2, b2) =` -> lcm(a2, b2); corruption swaps in another query pair."""

    name = "lcm"
    summary = "LCM with one in-context example: 'LCM(20, 160) = 160, LCM(8, 64) =' -> 64"
    default_count = 2500
    corruption_kinds = ("query_pair",)

    def draw(self, rng: random.Random, group: str) -> Lcm:
        strategy = rng.choice(STRATEGIES)
        return Lcm(strategy, _pair(strategy, rng), _pair(strategy, rng))

    def corrupt(self, inst: Lcm, rng: random.Random) -> Lcm | None:
        old = math.lcm(*inst.query)
        for _ in range(100):
            q = _pair(inst.strategy, rng)
            if math.lcm(*q) != old:
                return replace(inst, query=q)
        return None

    def render(self, inst: Lcm) -> str:
        (a1, b1), (a2, b2) = inst.example, inst.query
        return f"{LCM_PREFIX}LCM({a1}, {b1}) = {math.lcm(a1, b1)}, LCM({a2}, {b2}) ="

    def answer(self, inst: Lcm) -> str:
        return str(math.lcm(*inst.query))

    def group_of(self, inst: Lcm) -> str:
        return inst.strategy

    def key(self, inst: Lcm):
        return tuple(sorted(inst.query))  # the paper keeps each (sorted) query pair once

    def single_tokens(self, inst: Lcm, corr: Lcm) -> list[str]:
        return [str(math.lcm(*inst.example)), self.answer(corr)]

    def perturb(self, inst: Lcm, rng: random.Random) -> Lcm:
        strategy = rng.choice(STRATEGIES)
        return Lcm(strategy, inst.example, _pair(strategy, rng))

    def parse(self, prompt: str) -> Lcm:
        g = [int(x) for x in match(_LCM, prompt, self.name).groups()]
        if math.lcm(g[0], g[1]) != g[2]:
            from analysis.errors import UserError
            raise UserError(f"lcm: the in-context example is wrong: {prompt[-40:]!r}")
        return Lcm(strategy_of(g[3], g[4]), (g[0], g[1]), (g[3], g[4]))

    def parse_pair(self, clean: str, corrupted: str):
        inst, corr = self.parse(clean), self.parse(corrupted)
        return inst, replace(corr, strategy=inst.strategy)

    def corruption_kind(self, inst: Lcm, corr: Lcm) -> str:
        if inst.example == corr.example and math.lcm(*inst.query) != math.lcm(*corr.query):
            return "query_pair"
        return "other"
