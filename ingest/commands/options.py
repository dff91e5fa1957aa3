"""Options shared by several commands, in one place: which edges form a circuit (definition_options),
a Store for the command (with_store), a job's dataset (data_options) and its training schedule and
scoring (schedule_options, run_settings). Light: no torch at import, so every command's --help is fast."""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path

import click

from analysis.errors import UserError
from analysis.training import TrainConfig
from queries.api import CircuitDefinition, Store
from queries.connection import session_driver
from queries.server.local import default_state_dir


def definition_options(f):
    """--top-frac | --top-n | --threshold | --percentile, and --level: which edges form a circuit."""
    @click.option("--top-frac", type=float, default=None, help="Keep the top fraction of edges by |score|.")
    @click.option("--top-n", type=int, default=None, help="Keep the top N edges by |score|.")
    @click.option("--threshold", type=float, default=None, help="Keep edges with |score| >= X.")
    @click.option("--percentile", type=float, default=None,
                  help="Keep edges with |score| >= the P-th percentile of |score|.")
    @click.option("--level", type=click.Choice(["qkv", "head"]), default="head", show_default=True,
                  help="q/k/v-level edges, or head level (q/k/v summed, as the paper).")
    @click.option("--no-prune", is_flag=True,
                  help="Keep the selected edges as they are (default: prune dead nodes, as the method does).")
    @functools.wraps(f)
    def wrapper(*args, top_frac, top_n, threshold, percentile, level, no_prune, **kwargs):
        given = {k: v for k, v in {"top_frac": top_frac, "top_n": top_n, "threshold": threshold,
                                   "percentile": percentile}.items() if v is not None}
        if len(given) > 1:
            raise UserError("choose one of --top-frac, --top-n, --threshold, --percentile")
        if no_prune and not given:
            raise UserError("--no-prune applies to --top-frac, --top-n, --threshold or --percentile")
        mode, value = next(iter(given.items())) if given else ("in_graph", None)
        kwargs["definition"] = CircuitDefinition(mode, value, level, prune=not no_prune)
        return f(*args, **kwargs)
    return wrapper


def with_store(f):
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        with session_driver() as (driver, database):
            return f(Store(driver, database), *args, **kwargs)
    return wrapper


def data_options(f):
    """--task/--n/--count (generated with the model's tokenizer) or --data."""
    @click.option("--task", default=None, help="Task to generate (circuitshift data tasks), e.g. add_sub.")
    @click.option("--n", type=int, default=None, help="Add/Sub range N (task option).")
    @click.option("--count", type=int, default=None, help="Examples to generate (task option).")
    @click.option("--data", "data_dir", default=None, type=click.Path(path_type=Path),
                  help="A dataset folder instead of --task (circuitshift data make).")
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        return f(*args, **kwargs)
    return wrapper


def schedule_options(f):
    """Training schedule and scoring options shared by every run of a command."""
    @click.option("--epochs", type=float, default=None, help="Epochs (default: the paper's per task).")
    @click.option("--max-steps", type=int, default=None, help="Optimizer steps (overrides --epochs).")
    @click.option("--batch-size", type=int, default=8, show_default=True)
    @click.option("--grad-accum", type=int, default=4, show_default=True)
    @click.option("--warmup-steps", type=int, default=50, show_default=True,
                  help="Linear warm-up (capped at a fifth of the run).")
    @click.option("--checkpoints", type=int, default=1, show_default=True,
                  help="Scored checkpoints after step 0 (1: the pre-trained and the final model).")
    @click.option("--ig-steps", type=int, default=5, show_default=True, help="EAP-IG steps m.")
    @click.option("--score-batch-size", type=int, default=32, show_default=True)
    @click.option("--top-frac", type=float, default=0.05, show_default=True, help="Circuit size before pruning.")
    @click.option("--max-examples", type=int, default=None, help="Score and evaluate on at most N circuit-split pairs.")
    @click.option("--device", default=None, help="cpu or cuda (default: cuda when available).")
    @click.option("--quiet", is_flag=True, help="No progress bars.")
    @functools.wraps(f)
    def wrapper(*args, epochs, max_steps, batch_size, grad_accum, warmup_steps, checkpoints, ig_steps,
                score_batch_size, top_frac, max_examples, device, quiet, **kwargs):
        from analysis.checkpoint import ScoringConfig  # imports torch: only once the command runs
        kwargs["schedule"] = dict(
            train=TrainConfig(method="lora", epochs=epochs, max_steps=max_steps, batch_size=batch_size,
                              grad_accum=grad_accum, warmup_steps=warmup_steps, checkpoints=checkpoints),
            scoring=ScoringConfig(steps=ig_steps, batch_size=score_batch_size, top_frac=top_frac,
                                  max_examples=max_examples),
            device=device, quiet=quiet)
        return f(*args, **kwargs)
    return wrapper


def run_settings(model: str, data: str, schedule: dict, seed: int, lr=None):
    """The RunSettings of a command's runs from its --model, dataset and schedule_options."""
    from ingest.jobs.circuitlora import RunSettings  # the job (torch) loads only when the command runs
    train = replace(schedule["train"], seed=seed, learning_rate=lr)
    return RunSettings(model=str(model), data=data, train=train, scoring=schedule["scoring"],
                       device=schedule["device"], state_dir=str(default_state_dir()))
