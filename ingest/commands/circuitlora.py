"""`circuitshift circuitlora plan|train|auto`: CircuitLoRA from the store's critical layers (method.md 4);
the job is ingest/jobs/circuitlora.py, loaded (with torch) only when a command runs."""

from __future__ import annotations

from pathlib import Path

import click

from analysis.circuitlora import CircuitLoRAPlan
from analysis.errors import UserError
from ingest.commands.options import data_options, definition_options, run_settings, schedule_options
from ingest.jobs.task_data import resolve_data
from queries.api import Store
from queries.connection import session_driver
from queries.server.local import default_state_dir


@click.group()
def circuitlora():
    """CircuitLoRA (method.md 4): critical layers from two stored circuits become per-module LoRA ranks,
    alphas (2r) and learning rates; `auto` runs phase 1, plans and trains phase 2 in one command."""


@circuitlora.command()
@click.option("--before", default=None, help="Circuit before fine-tuning, RUN:STEP (e.g. the pre-trained model).")
@click.option("--after", default=None, help="Circuit after (phase-1) fine-tuning, RUN:STEP; may be a union circuit.")
@click.option("--random-layers", "random_k", type=int, default=None,
              help="RandomLoRA: draw K layers with --seed instead of reading circuits.")
@click.option("--seed", type=int, default=42, show_default=True, help="Seed of the RandomLoRA draw.")
@click.option("--top", type=int, default=5, show_default=True, help="Number of critical layers.")
@click.option("--r-o", "r_o", type=int, default=8, show_default=True, help="Rank of the other modules.")
@click.option("--r-c", "r_c", type=int, default=32, show_default=True, help="Rank of the critical modules.")
@click.option("--model", default=None, help="Model (default: the --after circuit's run's model).")
@click.option("--task", default=None, help="Task, for the paper's learning rates (default: the run's).")
@click.option("--lr", type=float, default=None, help="Learning rate of the other modules (default: the paper's).")
@click.option("--lr-critical", type=float, default=None,
              help="Learning rate of the critical modules (default: the paper's per task, scaled by --lr / 3e-4).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Plan JSON (default: STATE/plans/PLAN_ID.json).")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@definition_options
def plan(before, after, random_k, seed, top, r_o, r_c, model, task, lr, lr_critical, out, as_json, definition):
    """Plan CircuitLoRA from the critical layers of BEFORE -> AFTER (the store's query); save it as JSON
    and store it, linked to both circuits."""
    from ingest.jobs.circuitlora import describe_plan, plan_from_circuits, random_plan, store_plan

    if random_k is not None:
        if before or after:
            raise UserError("--random-layers draws layers; it takes no --before/--after")
        if not model:
            raise UserError("--random-layers needs --model")
    elif not (before and after):
        raise UserError("give --before and --after (RUN:STEP), or --random-layers K")
    with session_driver() as (driver, database):
        if random_k is not None:
            p = random_plan(model, random_k, seed, r_o=r_o, r_c=r_c, lr_other=lr, lr_critical=lr_critical,
                            task=task)
        else:
            p = plan_from_circuits(Store(driver, database), before, after, model=model, top=top, r_o=r_o,
                                   r_c=r_c, lr_other=lr, lr_critical=lr_critical, task=task,
                                   definition=definition)
        pid = store_plan(driver, database, p)
    path = p.save(out or default_state_dir() / "plans" / f"{pid}.json")
    if as_json:
        click.echo(p.to_json())
        return
    for line in describe_plan(p):
        click.echo(line)
    click.echo(f"plan {pid} stored; JSON: {path}")


@circuitlora.command()
@click.option("--plan", "plan_ref", required=True, help="A plan JSON file or a stored plan id.")
@click.option("--model", default=None, help="Model (default: the plan's).")
@data_options
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--run-id", default=None, help="Run name (default: derived from the plan).")
@schedule_options
def train(plan_ref, model, task, n, count, data_dir, seed, run_id, schedule):
    """Phase 2: fine-tune with a plan's ranks, alphas and per-group learning rates, scoring and storing
    every checkpoint's circuit; the run is linked to the stored plan."""
    from ingest.jobs.circuitlora import describe_plan, load_stored_plan, train_plan
    from ingest.jobs.summary import print_summary, summary

    with session_driver() as (driver, database):
        if Path(plan_ref).is_file():
            p = CircuitLoRAPlan.load(plan_ref)
        else:
            p = load_stored_plan(Store(driver, database), plan_ref)
        model = model or p.model
        data, task = resolve_data(model, task, n, count, data_dir)
        s = run_settings(model, data, schedule, seed, lr=p.lr_other)
        run_id = run_id or f"{Path(model).name}-{p.label}-s{seed}"
        for line in describe_plan(p):
            click.echo(line)
        train_plan(driver, database, p, s, run_id, progress=not schedule["quiet"], echo=click.echo)
        click.echo("")
        print_summary(summary(Store(driver, database), run_id), echo=click.echo)


@circuitlora.command()
@click.option("--model", required=True, help="HF hub name or local model folder.")
@data_options
@click.option("--top", type=int, default=5, show_default=True, help="Number of critical layers.")
@click.option("--r-o", "r_o", type=int, default=8, show_default=True)
@click.option("--r-c", "r_c", type=int, default=32, show_default=True)
@click.option("--random-layers", "random_k", type=int, default=None,
              help="RandomLoRA on K layers drawn with --seed (skips phase 1).")
@click.option("--lr", type=float, default=None, help="LoRA learning rate (phase 1 and other modules).")
@click.option("--lr-critical", type=float, default=None, help="Learning rate of the critical modules.")
@click.option("--phase1-epochs", type=float, default=1.0, show_default=True, help="Phase 1 length (LoRA r=2).")
@click.option("--phase1-steps", type=int, default=None, help="Phase 1 length in steps (overrides epochs).")
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--run-id", default=None, help="Phase 2 run name (phase 1 is RUN-phase1).")
@schedule_options
def auto(model, task, n, count, data_dir, top, r_o, r_c, random_k, lr, lr_critical, phase1_epochs,
         phase1_steps, seed, run_id, schedule):
    """Phase 1 (LoRA r=2, one epoch), plan from the pre-trained vs. phase-1 circuits, then phase 2:
    one command, everything stored."""
    from ingest.jobs.circuitlora import run_auto
    from ingest.jobs.summary import print_summary, summary

    data, task = resolve_data(model, task, n, count, data_dir)
    s = run_settings(model, data, schedule, seed, lr=lr)
    label = f"{'randomlora' if random_k else 'circuitlora'}-{r_o}-{r_c}"
    run_id = run_id or f"{Path(model).name}-{Path(data).name}-{label}-s{seed}"
    with session_driver() as (driver, database):
        out = run_auto(driver, database, s, run_id, top=top, r_o=r_o, r_c=r_c, lr_critical=lr_critical,
                       random_k=random_k, phase1_epochs=phase1_epochs, phase1_steps=phase1_steps, task=task,
                       progress=not schedule["quiet"], echo=click.echo)
        click.echo(f"plan {out['plan']}; JSON: {out['plan_file']}")
        click.echo("")
        print_summary(summary(Store(driver, database), run_id), echo=click.echo)
