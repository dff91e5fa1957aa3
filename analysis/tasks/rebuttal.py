"""The rebuttal-only tasks (method.md 1.7): number comparison, complex IOI, capital-country analogy.

The rebuttal gives one example prompt per task and no generator; templates follow those examples.
Answers are words, so they are checked as single tokens after a space (" Yes", " Robert", " Paris").
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace

from analysis.errors import UserError
from analysis.tasks.base import Task, match
from analysis.tasks.words import IOI_GIVE_VERB, IOI_NAMES, IOI_OBJECTS, IOI_WANT_VERBS, countries

_CMP = re.compile(r"Is (\d+) > (\d+)\? Answer:")


class _WordAnswerTask(Task):
    """A rebuttal task: its answers are words, checked as single tokens after a space (module docstring)."""

    label_space = True
    default_count = 2000


@dataclass(frozen=True)
class Pair:
    a: int
    b: int


class Comparison(_WordAnswerTask):
    """`Is {a} > {b}? Answer:` -> Yes/No (balanced); corruption swaps the two numbers."""

    name = "comparison"
    summary = "Comparison 'Is 121 > 112? Answer:' -> Yes/No; corruption swaps the numbers"
    groups = ("Yes", "No")
    corruption_kinds = ("swap",)

    def draw(self, rng: random.Random, group: str) -> Pair | None:
        a = rng.randint(100, 999)
        if rng.random() < 0.5:
            # Half the pairs share their digits (121 vs 112), the hard case of the rebuttal's example.
            digits = list(str(a))
            rng.shuffle(digits)
            b = int("".join(digits))
            if b < 100:
                return None
        else:
            b = rng.randint(100, 999)
        if a == b:
            return None
        hi, lo = max(a, b), min(a, b)
        return Pair(hi, lo) if group == "Yes" else Pair(lo, hi)

    def corrupt(self, inst: Pair, rng: random.Random) -> Pair:
        return Pair(inst.b, inst.a)

    def render(self, inst: Pair) -> str:
        return f"Is {inst.a} > {inst.b}? Answer:"

    def answer(self, inst: Pair) -> str:
        return "Yes" if inst.a > inst.b else "No"

    def group_of(self, inst: Pair) -> str:
        return self.answer(inst)

    def single_tokens(self, inst: Pair, corr: Pair) -> list[str]:
        return [str(inst.a), str(inst.b)]

    def perturb(self, inst: Pair, rng: random.Random) -> Pair | None:
        new = replace(inst, b=rng.randint(100, 999)) if rng.random() < 0.5 else replace(inst, a=rng.randint(100, 999))
        return None if new.a == new.b else new

    def parse(self, prompt: str) -> Pair:
        g = match(_CMP, prompt, self.name).groups()
        return Pair(int(g[0]), int(g[1]))

    def corruption_kind(self, inst: Pair, corr: Pair) -> str:
        return "swap" if (corr.a, corr.b) == (inst.b, inst.a) else "other"


_IOI = re.compile(r"(\w+) (\w+) (\w+), (\w+) (\w+) (\w+), (\w+) (\w+) (\w+) to")


@dataclass(frozen=True)
class Ioi:
    names: tuple[str, str, str]     # the two who want something, then the giver
    objects: tuple[str, str]        # what the first and the second one want
    given: int                      # which object (0 or 1) the giver hands over


class IoiTask(_WordAnswerTask):
    """`A needed X, B wanted Y, C handed X to` -> A; corruption hands the other object (-> B)."""

    name = "ioi"
    summary = "Complex IOI 'Robert needed brush, Kelly wanted pan, Daniel handed brush to' -> Robert"
    groups = ("first", "second")
    corruption_kinds = ("object",)

    def draw(self, rng: random.Random, group: str) -> Ioi:
        names = tuple(rng.sample(IOI_NAMES, 3))
        objects = tuple(rng.sample(IOI_OBJECTS, 2))
        return Ioi(names, objects, 0 if group == "first" else 1)

    def corrupt(self, inst: Ioi, rng: random.Random) -> Ioi:
        return replace(inst, given=1 - inst.given)

    def render(self, inst: Ioi) -> str:
        (a, b, c), (x, y) = inst.names, inst.objects
        return (f"{a} {IOI_WANT_VERBS[0]} {x}, {b} {IOI_WANT_VERBS[1]} {y}, "
                f"{c} {IOI_GIVE_VERB} {inst.objects[inst.given]} to")

    def answer(self, inst: Ioi) -> str:
        return inst.names[inst.given]

    def group_of(self, inst: Ioi) -> str:
        return ("first", "second")[inst.given]

    def single_tokens(self, inst: Ioi, corr: Ioi) -> list[str]:
        return []

    def perturb(self, inst: Ioi, rng: random.Random) -> Ioi:
        return replace(inst, names=tuple(rng.sample(IOI_NAMES, 3)))

    def parse(self, prompt: str) -> Ioi:
        g = match(_IOI, prompt, self.name).groups()
        objects = (g[2], g[5])
        if g[8] not in objects or g[2] == g[5]:
            raise UserError(f"ioi: the handed object is not one of the two wanted ones: {prompt!r}")
        return Ioi((g[0], g[3], g[6]), objects, objects.index(g[8]))

    def corruption_kind(self, inst: Ioi, corr: Ioi) -> str:
        same = inst.names == corr.names and inst.objects == corr.objects
        return "object" if same and inst.given != corr.given else "other"


_CAP = re.compile(r"If (.+) corresponds to (.+), then (.+) corresponds to")


@dataclass(frozen=True)
class Analogy:
    source: int  # index into countries(): the in-context pair
    query: int   # index of the country whose capital is asked for


class Capital(_WordAnswerTask):
    """`If {c1} corresponds to {cap1}, then {c2} corresponds to` -> cap2; corruption swaps c2."""

    name = "capital"
    summary = "Capital analogy 'If Abkhazia corresponds to Sukhumi, then Moldova corresponds to' -> Chisinau"
    corruption_kinds = ("query_country",)
    default_count = 1000  # not the base class's 2000

    def draw(self, rng: random.Random, group: str) -> Analogy:
        i, j = rng.sample(range(len(countries())), 2)
        return Analogy(i, j)

    def corrupt(self, inst: Analogy, rng: random.Random) -> Analogy | None:
        k = rng.randrange(len(countries()))
        return None if k in (inst.source, inst.query) else replace(inst, query=k)

    def render(self, inst: Analogy) -> str:
        (c1, k1), (c2, _) = countries()[inst.source], countries()[inst.query]
        return f"If {c1} corresponds to {k1}, then {c2} corresponds to"

    def answer(self, inst: Analogy) -> str:
        return countries()[inst.query][1]

    def perturb(self, inst: Analogy, rng: random.Random) -> Analogy | None:
        k = rng.randrange(len(countries()))
        return None if k in (inst.source, inst.query) else replace(inst, query=k)

    def parse(self, prompt: str) -> Analogy:
        g = match(_CAP, prompt, self.name).groups()
        index = {c: i for i, (c, _) in enumerate(countries())}
        if g[0] not in index or g[2] not in index or countries()[index[g[0]]][1] != g[1]:
            raise UserError(f"capital: country or capital not in the shipped list: {prompt!r}")
        return Analogy(index[g[0]], index[g[2]])

    def corruption_kind(self, inst: Analogy, corr: Analogy) -> str:
        return "query_country" if inst.source == corr.source and inst.query != corr.query else "other"
