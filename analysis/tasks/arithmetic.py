"""Add/Sub within N and Mul/Div (method.md 1.1, 1.2; perturbations 7)."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace

from analysis.errors import UserError
from analysis.tasks.base import Task, match
from analysis.tasks.words import ARITH_PREFIX

ADD_SUB_NS = (100, 200, 300, 400, 500)
# An addition's or a subtraction's corruption: the other operator (also the compositional task's).
FLIP = {"+": "-", "-": "+"}


def arith_prompt(body: str) -> re.Pattern:
    """The regex of an arithmetic prompt: the instruction prefix, then ``body``."""
    return re.compile(re.escape(ARITH_PREFIX) + body)


@dataclass(frozen=True)
class Binary:
    """The prompt `a op b =`."""

    a: int
    op: str
    b: int


_BINARY = arith_prompt(r"(\d+) ([-+*/]) (\d+) =")


def _value(x: Binary) -> int | None:
    if x.op == "+":
        return x.a + x.b
    if x.op == "-":
        return x.a - x.b
    if x.op == "*":
        return x.a * x.b
    return x.a // x.b if x.b and x.a % x.b == 0 else None


class _BinaryTask(Task):
    def render(self, inst: Binary) -> str:
        return f"{ARITH_PREFIX}{inst.a} {inst.op} {inst.b} ="

    def answer(self, inst: Binary) -> str | None:
        v = _value(inst)
        return None if v is None else str(v)

    def group_of(self, inst: Binary) -> str:
        return inst.op

    def parse(self, prompt: str) -> Binary:
        m = match(_BINARY, prompt, self.name)
        return Binary(int(m[1]), m[2], int(m[3]))


class AddSub(_BinaryTask):
    """`{a} {op} {b} =`, a, b ~ U{1..N} with a >= b; corruption flips the operator."""

    name = "add_sub"
    summary = "Add/Sub within N (N in 100..500): '41 + 29 =' -> 70; corruption flips + and -"
    groups = ("+", "-")
    corruption_kinds = ("operator",)

    def __init__(self, n: int = 100, **params):
        super().__init__(**params)
        if n not in ADD_SUB_NS:
            raise UserError(f"add_sub: N must be one of {', '.join(map(str, ADD_SUB_NS))}, not {n}")
        self.n = n

    def params(self):
        return {"n": self.n}

    def draw(self, rng: random.Random, group: str) -> Binary:
        a, b = rng.randint(1, self.n), rng.randint(1, self.n)
        if a < b:  # no negative results
            a, b = b, a
        return Binary(a, group, b)

    def corrupt(self, inst: Binary, rng: random.Random) -> Binary:
        return replace(inst, op=FLIP[inst.op])

    def perturb(self, inst: Binary, rng: random.Random) -> Binary:
        # Numeric noise (one operand changes) or operator noise, half and half (method.md 7).
        if rng.random() < 0.5:
            return replace(inst, op=FLIP[inst.op])
        a, b = inst.a, inst.b
        if rng.random() < 0.5:
            a = rng.randint(1, self.n)
        else:
            b = rng.randint(1, self.n)
        if a < b:
            a, b = b, a
        return Binary(a, inst.op, b)

    def parse(self, prompt: str) -> Binary:
        x = super().parse(prompt)
        if x.op not in FLIP:
            raise UserError(f"add_sub: operator {x.op!r} is not + or -: {prompt[-30:]!r}")
        return x

    def corruption_kind(self, inst: Binary, corr: Binary) -> str:
        if (inst.a, inst.b) == (corr.a, corr.b) and corr.op == FLIP.get(inst.op):
            return "operator"
        return "other"


class MulDiv(_BinaryTask):
    """`{a} * {b} =` or `{a} / {b} =` (exact division); corruption changes only the first operand."""

    name = "mul_div"
    summary = "Mul/Div: '444 / 37 =' -> 12; corruption changes the first operand only"
    default_count = 2000
    groups = ("*", "/")
    corruption_kinds = ("operand_a",)

    def draw(self, rng: random.Random, group: str) -> Binary:
        if group == "*":
            return Binary(rng.randint(2, 200), "*", rng.randint(2, 180))
        b, x = rng.randint(2, 200), rng.randint(2, 200)
        return Binary(b * x, "/", b)

    def corrupt(self, inst: Binary, rng: random.Random) -> Binary | None:
        if inst.op == "*":
            a2 = rng.randint(2, 99)
            return None if a2 == inst.a else replace(inst, a=a2)
        # Another multiple of b below 200 when there is one, else b times another quotient.
        b = inst.b
        multiples = [k * b for k in range(1, 200) if k * b < 200 and k * b != inst.a]
        if multiples:
            return replace(inst, a=rng.choice(multiples))
        x2 = rng.randint(2, 200)
        return None if x2 * b == inst.a else replace(inst, a=x2 * b)

    def single_tokens(self, inst: Binary, corr: Binary) -> list[str]:
        return [str(inst.a), self.answer(corr) or ""]

    def perturb(self, inst: Binary, rng: random.Random) -> Binary:
        # Change one operand within its range, keeping the operation valid (26*15 -> 26*20).
        if inst.op == "*":
            if rng.random() < 0.5:
                return replace(inst, a=rng.randint(2, 200))
            return replace(inst, b=rng.randint(2, 180))
        x = inst.a // inst.b
        if rng.random() < 0.5:
            b = rng.randint(2, 200)
            return Binary(b * x, "/", b)
        return replace(inst, a=inst.b * rng.randint(2, 200))

    def parse(self, prompt: str) -> Binary:
        x = super().parse(prompt)
        if x.op not in ("*", "/") or _value(x) is None:
            raise UserError(f"mul_div: not an exact * or / expression: {prompt[-30:]!r}")
        return x

    def corruption_kind(self, inst: Binary, corr: Binary) -> str:
        if inst.op == corr.op and inst.b == corr.b and inst.a != corr.a:
            return "operand_a"
        return "other"
