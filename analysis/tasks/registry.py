"""Task name -> task class. `make_task(name, **params)` is the one way to get a task."""

from __future__ import annotations

import re

from analysis.errors import UserError
from analysis.tasks.arithmetic import AddSub, MulDiv
from analysis.tasks.base import Task
from analysis.tasks.compositional import Compositional, CompositionalAddSub, CompositionalMulDiv
from analysis.tasks.function import FunctionTask
from analysis.tasks.lcm import LcmTask
from analysis.tasks.rebuttal import Capital, Comparison, IoiTask
from analysis.tasks.sequence import Sequence

TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (
    AddSub, MulDiv, Sequence, LcmTask, FunctionTask, Compositional, CompositionalAddSub,
    CompositionalMulDiv, Comparison, IoiTask, Capital)}


def make_task(name: str, **params) -> Task:
    """A task by name; `add_sub_200` is short for `add_sub` with n=200. None-valued params are dropped."""
    params = {k: v for k, v in params.items() if v is not None}
    m = re.fullmatch(r"add_sub_(\d+)", name)
    if m:
        if "n" in params and params["n"] != int(m[1]):
            raise UserError(f"task {name} contradicts --n {params['n']}")
        name, params["n"] = "add_sub", int(m[1])
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[name](**params)
