"""A job's dataset: generated for a task with the model's own tokenizer (cached by its options), or a
dataset folder made by `circuitshift data make`."""

from __future__ import annotations

import json
from pathlib import Path

from analysis.errors import UserError
from analysis.provenance import content_hash
from analysis.tasks.build import DatasetSpec, make_dataset
from queries.server.local import default_state_dir


def make_task_data(task: str, n, count, model: str, state: Path) -> Path:
    """Generate the task's dataset with the model's tokenizer (cached by its options)."""
    model_path = Path(str(model))
    if not model_path.is_dir():
        raise UserError(f"--task needs a local model folder for its tokenizer; got {model}. Make the "
                        "data with `circuitshift data make` and pass --data")
    key = content_hash({"task": task, "n": n, "count": count,
                        "tok": content_hash((model_path / "tokenizer.json").read_bytes()
                                            if (model_path / "tokenizer.json").exists() else str(model))})[:12]
    out = state / "data" / f"{task}{'-' + str(n) if n else ''}-{key}"
    if not (out / "manifest.json").exists():
        make_dataset(DatasetSpec(task=task, tokenizer=model_path, out=out, n=n, count=count, overwrite=True))
    return out


def resolve_data(model: str, task, n, count, data_dir) -> tuple[str, str | None]:
    """(dataset folder, task name) from --task/--n/--count or --data."""
    if (task is None) == (data_dir is None):
        raise UserError("give exactly one of --task or --data")
    if task is not None:
        data_dir = make_task_data(task, n, count, model, default_state_dir())
    elif not Path(data_dir).is_dir():
        raise UserError(f"dataset folder {data_dir} does not exist")
    if task is None:
        manifest = Path(data_dir) / "manifest.json"
        if manifest.exists():
            task = json.loads(manifest.read_text()).get("task")
    return str(data_dir), task
