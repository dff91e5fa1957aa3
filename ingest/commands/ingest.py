"""`circuitshift ingest run | export-model | replay`: fine-tune and stream every checkpoint's circuit into
Neo4j (the job: ingest/jobs/finetune.py, loaded with torch only when a command runs)."""

from __future__ import annotations

from pathlib import Path

import click

from analysis.errors import UserError
from analysis.training import TrainConfig
from queries.connection import session_driver
from queries.server.local import default_state_dir
from queries.spool import pending, replay


@click.group()
def ingest():
    """Fine-tune a model and store its circuit at every checkpoint."""


@ingest.command("run")
@click.option("--model", required=True, help="HF hub name or local model folder.")
@click.option("--task", default=None, help="Task to generate (circuitshift data tasks), e.g. add_sub.")
@click.option("--data", "data_dir", default=None, type=click.Path(path_type=Path),
              help="A dataset folder instead of --task (circuitshift data make).")
@click.option("--n", type=int, default=None, help="Add/Sub range N (task option).")
@click.option("--count", type=int, default=None, help="Examples to generate (task option).")
@click.option("--method", default="lora", show_default=True, help="lora, full, adalora or ia3.")
@click.option("--rank", type=int, default=32, show_default=True, help="LoRA rank (alpha = 2r).")
@click.option("--lr", type=float, default=None, help="Learning rate (default: the paper's per task).")
@click.option("--epochs", type=float, default=None, help="Epochs (default: the paper's per task).")
@click.option("--max-steps", type=int, default=None, help="Optimizer steps (overrides --epochs).")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--grad-accum", type=int, default=4, show_default=True)
@click.option("--warmup-steps", type=int, default=None,
              help="Linear warm-up steps (default 50, AdaLoRA 25: method.md 3.1, 3.4); never shortened.")
@click.option("--checkpoints", type=int, default=10, show_default=True, help="Checkpoints after step 0.")
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--separator", default="\n", show_default="newline",
              help="Between prompt and answer in the fine-tuning text (the paper: a newline).")
@click.option("--run-id", default=None, help="Run name in the store (default: derived from the options).")
@click.option("--ig-steps", type=int, default=5, show_default=True, help="EAP-IG steps m.")
@click.option("--score-batch-size", type=int, default=32, show_default=True)
@click.option("--top-frac", type=float, default=0.05, show_default=True, help="Circuit size before pruning.")
@click.option("--top-n", type=int, default=None,
              help="Circuit = the top N edges before pruning, instead of --top-frac (for small graphs).")
@click.option("--max-examples", type=int, default=None, help="Score on at most N circuit-split pairs.")
@click.option("--chunk", type=int, default=None,
              help="Score each batch in micro-batches of at most N examples (same scores, less memory; "
                   "default: what fits the GPU's free memory, the whole batch on the CPU).")
@click.option("--mib", is_flag=True, help="Also store MIB's CPR and CMD at every checkpoint (analysis.mib).")
@click.option("--device", default=None, help="cpu or cuda (default: cuda when available).")
@click.option("--save-merged", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write the final fine-tuned model (adapters merged) to this folder, for `robustness`.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def run(model, task, data_dir, n, count, method, rank, lr, epochs, max_steps, batch_size, grad_accum,
        warmup_steps, checkpoints, seed, separator, run_id, ig_steps, score_batch_size, top_frac, top_n,
        max_examples, chunk, mib, device, save_merged, quiet):
    """Fine-tune MODEL on a task; at step 0 and every checkpoint, score, evaluate and store its circuit."""
    from analysis.checkpoint import ScoringConfig  # torch
    from ingest.jobs.summary import ingest_and_summarise

    if (task is None) == (data_dir is None):
        raise UserError("give exactly one of --task or --data")
    train = TrainConfig(method=method, rank=rank, learning_rate=lr, epochs=epochs, max_steps=max_steps,
                        batch_size=batch_size, grad_accum=grad_accum, warmup_steps=warmup_steps,
                        checkpoints=checkpoints, seed=seed, separator=separator)
    scoring = ScoringConfig(steps=ig_steps, batch_size=score_batch_size, top_frac=top_frac, top_n=top_n,
                            max_examples=max_examples, chunk=chunk, mib=mib)
    result = ingest_and_summarise(model, task, data_dir, n, count, train, scoring, run_id, device, quiet)
    if save_merged is not None:
        from analysis.distributed import is_main_process
        from ingest.jobs.finetune import export_model
        if not is_main_process():  # under a launcher every rank gets here: one writes the folder
            return
        info = export_model(result["state_dir"], result["run"], save_merged)
        click.echo(f"fine-tuned model (step {info['step']}, {info['method']}, merged) written to {save_merged}")


@ingest.command("export-model")
@click.argument("run_id")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the merged model and its tokenizer.")
def export_model_cmd(run_id, out):
    """Write RUN_ID's final fine-tuned model (LoRA merged) as a model folder, e.g. for `robustness`."""
    from ingest.jobs.finetune import export_model
    info = export_model(default_state_dir(), run_id, out)
    click.echo(f"run {run_id}: step {info['step']} ({info['method']}, merged) written to {out}")


@ingest.command("replay")
@click.argument("run_id", required=False)
def replay_cmd(run_id):
    """Write spooled checkpoints (kept while the store was unavailable during `ingest run`) into the
    store, in order and idempotently; RUN_ID limits it to one run. Damaged files are reported and kept."""
    spool = default_state_dir() / "spool"
    if not pending(spool, run_id):
        click.echo(f"nothing spooled{' for run ' + run_id if run_id else ''} in {spool}")
        return
    with session_driver() as (driver, database):
        rep = replay(driver, database, spool, run_id)
    click.echo(f"replayed {len(rep.written)} checkpoint(s), {len(rep.skipped)} already stored, "
               f"{len(rep.remaining)} still spooled")
