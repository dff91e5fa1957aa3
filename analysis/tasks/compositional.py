"""The two-step compositional task `(x op1 y) op2 z` and its two subtask sets (method.md 1.6).

The subtask datasets are derived row by row from the compositional instances (same seed, same rows,
same split), as the paper's fine-tuning data was: add_sub `{x} {op1} {y} =` -> bracket value, mul_div
`{bracket} {op2} {z} =` -> final value. The compositional generator already enforces the subtasks'
filters, so the three datasets stay aligned.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from analysis.errors import UserError
from analysis.tasks.arithmetic import FLIP, arith_prompt
from analysis.tasks.base import Task, match
from analysis.tasks.words import ARITH_PREFIX

_COMP = arith_prompt(r"\((\d+) ([-+]) (\d+)\) ([*/]) (\d+) =")
_STEP_ADD = arith_prompt(r"(\d+) ([-+]) (\d+) =")
_STEP_MUL = arith_prompt(r"(\d+) ([*/]) (\d+) =")


@dataclass(frozen=True)
class Comp:
    x: int
    op1: str
    y: int
    op2: str
    z: int
    flipped: bool = False  # add_sub subtask's corrupted row: op1 flipped (rendered by the subtask only)

    @property
    def bracket(self) -> int:
        return self.x + self.y if self.op1 == "+" else self.x - self.y

    @property
    def value(self) -> int | None:
        if self.op2 == "*":
            return self.bracket * self.z
        return self.bracket // self.z if self.z and self.bracket % self.z == 0 else None


def _divisors(n: int) -> list[int]:
    return [d for d in range(2, n + 1) if n % d == 0] if n >= 2 else []


class Compositional(Task):
    name = "compositional"
    summary = "Two-step '(61 - 45) * 45 =' -> 720; corruption changes only z"
    groups = ("*", "/")
    corruption_kinds = ("z",)

    def draw(self, rng: random.Random, group: str) -> Comp | None:
        op1 = rng.choice(("+", "-"))
        x, y = rng.randint(2, 100), rng.randint(1, 100)
        if op1 == "-" and x < y:
            x, y = y, x
        inst = Comp(x, op1, y, group, 0)
        return self._with_z(inst, rng)

    def _with_z(self, inst: Comp, rng: random.Random) -> Comp | None:
        if inst.op2 == "*":
            return replace(inst, z=rng.randint(2, 100))
        divisors = _divisors(inst.bracket)
        return replace(inst, z=rng.choice(divisors)) if divisors else None

    def corrupt(self, inst: Comp, rng: random.Random) -> Comp | None:
        if inst.op2 == "*":
            z = rng.randint(2, 100)
            return None if z == inst.z else replace(inst, z=z)
        others = [d for d in _divisors(inst.bracket) if d != inst.z]
        return replace(inst, z=rng.choice(others)) if others else None

    def render(self, inst: Comp) -> str:
        return f"{ARITH_PREFIX}({inst.x} {inst.op1} {inst.y}) {inst.op2} {inst.z} ="

    def answer(self, inst: Comp) -> str | None:
        v = inst.value
        return None if v is None else str(v)

    def group_of(self, inst: Comp) -> str:
        return inst.op2

    def single_tokens(self, inst: Comp, corr: Comp) -> list[str]:
        return [str(inst.bracket)]  # the add_sub subtask's label

    def extra_check(self, inst: Comp, corr: Comp, checker) -> str | None:
        # Keep the subtask rows valid too, so the three datasets stay row-aligned.
        for sub in (CompositionalAddSub(), CompositionalMulDiv()):
            c, k = sub.derive(inst, corr)
            if checker.n_tokens(sub.render(c)) != checker.n_tokens(sub.render(k)):
                return f"equal token length ({sub.name} subtask)"
        return None

    def perturb(self, inst: Comp, rng: random.Random) -> Comp | None:
        # [inferred] new bracket operands, same operators; a new divisor z for "/".
        x, y = rng.randint(2, 100), rng.randint(1, 100)
        if inst.op1 == "-" and x < y:
            x, y = y, x
        new = replace(inst, x=x, y=y)
        return new if inst.op2 == "*" else self._with_z(new, rng)

    def parse(self, prompt: str) -> Comp:
        g = match(_COMP, prompt, self.name).groups()
        inst = Comp(int(g[0]), g[1], int(g[2]), g[3], int(g[4]))
        if inst.value is None:
            raise UserError(f"compositional: division is not exact: {prompt[-30:]!r}")
        return inst

    def corruption_kind(self, inst: Comp, corr: Comp) -> str:
        same = (inst.x, inst.op1, inst.y, inst.op2) == (corr.x, corr.op1, corr.y, corr.op2)
        return "z" if same and inst.z != corr.z else "other"


class _Subtask(Compositional):
    base_task = "compositional"

    def derive(self, inst: Comp, corr: Comp) -> tuple[Comp, Comp]:
        raise NotImplementedError

    def single_tokens(self, inst: Comp, corr: Comp) -> list[str]:
        return []

    def extra_check(self, inst, corr, checker):
        return None


class CompositionalAddSub(_Subtask):
    name = "compositional_add_sub"
    summary = "Compositional subtask 1: '55 + 62 =' -> 117 from the same instances; corruption flips op1"
    groups = ("all",)  # op1 is drawn at random, not balanced (the balanced operator is op2)
    corruption_kinds = ("operator",)

    def derive(self, inst: Comp, corr: Comp) -> tuple[Comp, Comp]:
        return inst, replace(inst, flipped=True)

    def render(self, inst: Comp) -> str:
        op = FLIP[inst.op1] if inst.flipped else inst.op1
        return f"{ARITH_PREFIX}{inst.x} {op} {inst.y} ="

    def answer(self, inst: Comp) -> str:
        return str(replace(inst, op1=FLIP[inst.op1]).bracket if inst.flipped else inst.bracket)

    def group_of(self, inst: Comp) -> str:
        return inst.op1

    def parse(self, prompt: str) -> Comp:
        g = match(_STEP_ADD, prompt, self.name).groups()
        return Comp(int(g[0]), g[1], int(g[2]), "*", 0)

    def parse_pair(self, clean: str, corrupted: str):
        inst, corr = self.parse(clean), self.parse(corrupted)
        if corr.op1 != inst.op1:
            corr = replace(corr, op1=inst.op1, flipped=True)
        return inst, corr

    def corruption_kind(self, inst: Comp, corr: Comp) -> str:
        return "operator" if (inst.x, inst.y) == (corr.x, corr.y) and corr.flipped else "other"


class CompositionalMulDiv(_Subtask):
    name = "compositional_mul_div"
    summary = "Compositional subtask 2: '117 / 13 =' -> 9 from the same instances; corruption changes z"
    groups = ("*", "/")
    corruption_kinds = ("z",)

    def derive(self, inst: Comp, corr: Comp) -> tuple[Comp, Comp]:
        return inst, corr

    def render(self, inst: Comp) -> str:
        return f"{ARITH_PREFIX}{inst.bracket} {inst.op2} {inst.z} ="

    def parse(self, prompt: str) -> Comp:
        g = match(_STEP_MUL, prompt, self.name).groups()
        inst = Comp(int(g[0]), "+", 0, g[1], int(g[2]))
        if inst.value is None:
            raise UserError(f"{self.name}: division is not exact: {prompt[-30:]!r}")
        return inst

    def corruption_kind(self, inst: Comp, corr: Comp) -> str:
        same = (inst.bracket, inst.op2) == (corr.bracket, corr.op2)
        return "z" if same and inst.z != corr.z else "other"
