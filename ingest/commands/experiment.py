"""`circuitshift experiment compare|table|findings`: the paper's method comparison (Tables 1, 3, 4 form) and
its Key Observations measured; the jobs are ingest/jobs/experiment.py and ingest/jobs/findings.py, loaded
(with torch) only when a command runs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from analysis.errors import UserError
from analysis.provenance import content_hash
from ingest.commands.options import data_options, run_settings, schedule_options
from ingest.jobs.findings_setup import PRESETS
from ingest.jobs.task_data import resolve_data
from ingest.output import emit
from queries.api import Store
from queries.connection import session_driver

TABLE_FORMATS = ("table", "markdown", "json", "csv")


def print_table(t: dict, fmt: str) -> None:
    from ingest.jobs.experiment import markdown_table
    if fmt == "json":
        click.echo(json.dumps(t, indent=2, default=str))
    elif fmt == "markdown":
        click.echo(markdown_table(t))
    else:
        title = (f"experiment {t['experiment']}: {t['task']} on {t['model']}, {len(t['seeds'])} seed(s); "
                 "accuracy % = mean and std over seeds (from the store)")
        emit({"table": t["table"]}, fmt, "table", title=title)


@click.group()
def experiment():
    """The paper's comparison: pre-trained, full FT, LoRA r=2/8/16/32, CircuitLoRA and RandomLoRA at
    (8,32) and (16,64), AdaLoRA; every run stored, the table computed from the store."""


@experiment.command()
@click.option("--model", required=True, help="HF hub name or local model folder.")
@data_options
@click.option("--seeds", "n_seeds", type=int, default=5, show_default=True, help="Seeds per method.")
@click.option("--seed", "first_seed", type=int, default=42, show_default=True, help="First seed (then +1, +2, ...).")
@click.option("--methods", default=None,
              help="Comma-separated subset, e.g. lora-r16,circuitlora-8-32 (default: the paper's set); "
                   "circuitlora_u-8-32 (CircuitLoRA_U) needs --union-before/--union-after.")
@click.option("--experiment", "experiment_id", default=None, help="Experiment name (default: derived).")
@click.option("--top", type=int, default=5, show_default=True, help="Critical (and random) layers.")
@click.option("--lr", type=float, default=None, help="LoRA learning rate (default: the paper's, 3e-4).")
@click.option("--full-lr", type=float, default=None, help="Full fine-tuning learning rate (default: the paper's).")
@click.option("--adalora-lr", type=float, default=None, help="AdaLoRA learning rate (default: the paper's 8e-3).")
@click.option("--lr-critical", type=float, default=None,
              help="Critical-module learning rate (default: the paper's per task, scaled by --lr / 3e-4).")
@click.option("--phase1-epochs", type=float, default=1.0, show_default=True)
@click.option("--phase1-steps", type=int, default=None, help="Phase 1 length in steps (overrides epochs).")
@click.option("--union-before", default=None,
              help="CircuitLoRA_U (circuitlora_u-RO-RC): the union of the pre-trained subtask circuits, RUN:STEP "
                   "as stored by `circuitshift query union`.")
@click.option("--union-after", default=None,
              help="CircuitLoRA_U: the union of the fine-tuned subtask circuits, RUN:STEP; its critical layers "
                   "are those of --union-before -> --union-after (method.md 5).")
@click.option("--format", "fmt", type=click.Choice(TABLE_FORMATS), default="table", show_default=True)
@schedule_options
def compare(model, task, n, count, data_dir, n_seeds, first_seed, methods, experiment_id, top, lr, full_lr,
            adalora_lr, lr_critical, phase1_epochs, phase1_steps, union_before, union_after, fmt, schedule):
    """Run the paper's set of methods for --seeds seeds and print the table (Table 1 form). With
    --union-before/--union-after, a method circuitlora_u-8-32 trains from the unions' critical layers
    (CircuitLoRA_U, Table 3)."""
    from ingest.jobs.experiment import PAPER_SET, ExperimentConfig, run_experiment

    if n_seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {n_seeds}")
    labels = [m.strip() for m in methods.split(",") if m.strip()] if methods else list(PAPER_SET)
    data, task_name = resolve_data(model, task, n, count, data_dir)
    s = run_settings(model, data, schedule, first_seed)
    seeds = [first_seed + i for i in range(n_seeds)]
    if experiment_id is None:
        key = content_hash({"data": data, "train": s.train.record(), "scoring": str(s.scoring), "top": top,
                            "lr": lr, "full_lr": full_lr, "adalora_lr": adalora_lr, "lr_critical": lr_critical,
                            "p1": [phase1_epochs, phase1_steps],
                            # only when given, so the ids of experiments without unions stay as they were
                            **({"union": [union_before, union_after]} if union_before or union_after else {})})[:8]
        experiment_id = f"cmp-{Path(model).name}-{task_name or Path(data).name}-{key}"
    cfg = ExperimentConfig(experiment=experiment_id, settings=s, seeds=seeds, labels=labels, task=task_name,
                           top=top, lr=lr, full_lr=full_lr, adalora_lr=adalora_lr, lr_critical=lr_critical,
                           phase1_epochs=phase1_epochs, phase1_steps=phase1_steps, union_before=union_before,
                           union_after=union_after)
    t0 = time.perf_counter()
    click.echo(f"experiment {experiment_id}: {len(labels)} methods x {len(seeds)} seeds on {task_name}")
    with session_driver() as (driver, database):
        t = run_experiment(driver, database, cfg, progress=False, echo=click.echo)
    click.echo("")
    print_table(t, fmt)
    click.echo(f"\n{len(t['runs'])} runs in {time.perf_counter() - t0:.0f} s; "
               f"`circuitshift experiment table {experiment_id}` prints the table again from the store")


@experiment.command()
@click.argument("experiment_id")
@click.option("--format", "fmt", type=click.Choice(TABLE_FORMATS), default="table", show_default=True)
def table(experiment_id, fmt):
    """Print a stored experiment's table (computed by Cypher from its runs' final checkpoints)."""
    from ingest.jobs.experiment import experiment_table
    with session_driver() as (driver, database):
        print_table(experiment_table(Store(driver, database), experiment_id), fmt)


@experiment.command()
@click.option("--preset", type=click.Choice(list(PRESETS)), default="default", show_default=True,
              help="tiny: seconds, for tests; default: the evidence (about 34 minutes with pre-training on 2 "
                   "busy cores); smollm2: the shipped SmolLM2-135M as is (about 32 minutes).")
@click.option("--id", "findings_id", default=None, help="Findings id, prefix of every run (default findings-PRESET).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of the page (default reports/findings-ID).")
@click.option("--threads", type=int, default=1, show_default=True, help="torch threads (fixed: same numbers).")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--page-only", is_flag=True, help="Run nothing: redraw the page from the stored findings --id.")
def findings(preset, findings_id, out, threads, device, page_only):
    """Run the paper's Key Observations on a model that learns Add/Sub(100) (a small local one, or
    SmolLM2-135M with --preset smollm2): KO1 faithful, robust circuits; KO2 edges change more than nodes (against resampling noise); KO3 CircuitLoRA vs
    LoRA and RandomLoRA; KO4 union vs compositional circuit (against random edge sets). Every run is
    stored; the findings are stored tied to the KO3 experiment; one Markdown/HTML page is written."""
    import time

    from ingest.jobs.demo import deterministic
    from ingest.jobs.findings import run_findings
    from ingest.jobs.findings_page import summary_rows, write_page
    from ingest.jobs.findings_setup import preset_named
    from ingest.output import rows_table
    from queries.api import Store
    from queries.connection import session_driver
    from queries.findings import read_findings
    from queries.server.local import default_state_dir

    deterministic(threads)
    p = preset_named(preset)
    fid = findings_id or f"findings-{preset}"
    out = out or Path("reports") / fid
    t0 = time.perf_counter()
    with session_driver() as (driver, database):
        if page_only:
            doc = read_findings(Store(driver, database), fid)["doc"]
            doc["page"] = str(write_page(doc, out))
        else:
            doc = run_findings(driver, database, p, fid, default_state_dir(), out, device, click.echo)
    click.echo("")
    click.echo(rows_table(summary_rows(doc), f"findings {fid} (stored as (:Findings {{id: '{fid}'}}))"))
    click.echo("")
    for ko in doc["observations"]:
        click.echo(f"{ko['key']}: {ko['verdict']}")
    click.echo(f"\npage: {doc['page']}  ({time.perf_counter() - t0:.0f} s in all, {threads} torch thread(s))")
