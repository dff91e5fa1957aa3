"""Linear function evaluation (method.md 1.5; perturbation 7)."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace

from analysis.tasks.base import Task, match

_FN = re.compile(r"There is a function y=(\d+)x\+(\d+)\. Given x=1,2,3,4, y=(\d+),(\d+),(\d+),")


@dataclass(frozen=True)
class Linear:
    a: int
    b: int

    def y(self, x: int) -> int:
        return self.a * x + self.b


class FunctionTask(Task):
    """`There is a function y={a}x+{b}. Given x=1,2,3,4, y={y1},{y2},{y3},` -> y4; corruption redraws b."""

    name = "function"
    summary = "Linear function: 'y=5x+75. Given x=1,2,3,4, y=80,85,90,' -> 95; corruption redraws b"
    corruption_kinds = ("intercept",)

    def draw(self, rng: random.Random, group: str) -> Linear:
        return Linear(rng.randint(1, 20), rng.randint(1, 500))

    def corrupt(self, inst: Linear, rng: random.Random) -> Linear | None:
        b2 = rng.randint(1, 500)
        return None if b2 == inst.b else replace(inst, b=b2)

    def render(self, inst: Linear) -> str:
        ys = ",".join(str(inst.y(x)) for x in (1, 2, 3))
        return f"There is a function y={inst.a}x+{inst.b}. Given x=1,2,3,4, y={ys},"

    def answer(self, inst: Linear) -> str:
        return str(inst.y(4))

    def key(self, inst: Linear):
        return inst.a, inst.b

    def single_tokens(self, inst: Linear, corr: Linear) -> list[str]:
        return [str(f.y(x)) for f in (inst, corr) for x in (1, 2, 3, 4)]

    def perturb(self, inst: Linear, rng: random.Random) -> Linear | None:
        # Change b within a range (y=5x+201 -> y=5x+151) and recompute the y values.
        b = inst.b + rng.choice([-1, 1]) * rng.randint(1, 100)
        return replace(inst, b=b) if 1 <= b <= 500 else None

    def parse(self, prompt: str) -> Linear:
        g = [int(x) for x in match(_FN, prompt, self.name).groups()]
        f = Linear(g[0], g[1])
        if [f.y(1), f.y(2), f.y(3)] != g[2:]:
            from analysis.errors import UserError
            raise UserError(f"function: y values do not follow y={f.a}x+{f.b}: {prompt[-40:]!r}")
        return f

    def corruption_kind(self, inst: Linear, corr: Linear) -> str:
        return "intercept" if inst.a == corr.a and inst.b != corr.b else "other"
