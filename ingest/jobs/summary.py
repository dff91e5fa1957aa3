"""A run's summary from the store (accuracy, faithfulness, churn, change rates), and the ingest job with
that summary printed after it, as `circuitshift ingest run`, `circuitlora` and the demos run it."""

from __future__ import annotations

from pathlib import Path

import click
import torch

from analysis.distributed import barrier, join_launched_group
from ingest.jobs.finetune import IngestConfig, run_ingest
from ingest.jobs.task_data import make_task_data
from ingest.output import rows_table
from queries.api import CircuitDefinition, Store
from queries.connection import session_driver
from queries.server.local import default_state_dir


def summary(store, run: str) -> dict:
    """Accuracy, faithfulness, churn and change rates of a run, computed by the store's queries."""
    metrics = store.checkpoint_metrics(run)
    out = {"run": run, "checkpoints": metrics}
    if len(metrics) >= 2:
        d = CircuitDefinition()
        out["churn"] = store.churn(run, d)["transitions"]
        rate = store.change_rate(run, d)
        out["node_change_rate"] = rate["node_change_rate"]
        out["edge_change_rate"] = rate["edge_change_rate"]
    return out


def _pct(x):
    """A stored percentage (0..100) as printed: one decimal."""
    return None if x is None else round(float(x), 1)


def print_summary(s: dict, echo=print) -> None:
    """The summary as tables: checkpoints, then churn and change rates."""
    rows = [{"step": m["step"], "epoch": round(m["epoch"] or 0, 2), "accuracy_%": _pct(m["accuracy"]),
             "circuit_accuracy_%": _pct(m["circuit_accuracy"]), "faithfulness_%": _pct(m["faithfulness"]),
             "circuit_edges": m["n_in_graph"]} for m in s["checkpoints"]]
    echo(rows_table(rows, f"run {s['run']}: checkpoints"))
    if "churn" in s:
        echo("")
        echo(rows_table([{"transition": f"{t['from_step']}->{t['to_step']}", "nodes_added": t["nodes_added"],
                          "nodes_removed": t["nodes_removed"], "edges_added": t["edges_added"],
                          "edges_removed": t["edges_removed"], "edges_changed": t["edges_changed"]}
                         for t in s["churn"]], "circuit churn (head level, stored circuits)"))
        echo(f"\nchange rate: nodes {s['node_change_rate']:.1f}%  edges {s['edge_change_rate']:.1f}%  "
             "(method.md 6.3)")


def ingest_and_summarise(model, task, data_dir, n, count, train, scoring, run_id, device, quiet,
                         state_dir: Path | None = None) -> dict:
    """Fine-tune (the run id derived from the options unless given) and print the run's summary; `task`
    generates the dataset with the model's tokenizer instead of `data_dir`. Under a launcher only rank 0
    generates the data, opens the store and prints the summary (run_ingest)."""
    state = Path(state_dir) if state_dir else default_state_dir()
    shard = join_launched_group(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if task is not None:
        if shard.rank != 0:
            barrier()  # rank 0 generates the data first; the others then find it cached
        data_dir = make_task_data(task, n, count, model, state)
        if shard.rank == 0:
            barrier()
    run_id = run_id or f"{Path(str(model)).name}-{task or Path(data_dir).name}-{train.method}-s{train.seed}"
    cfg = IngestConfig(model=str(model), data=str(data_dir), run_id=run_id, train=train, scoring=scoring,
                       task=None, device=device, state_dir=str(state))
    if shard.rank != 0:  # the other ranks train and score their shards; they never touch the store
        return {**run_ingest(cfg, None, None, progress=False, echo=click.echo), "state_dir": str(state)}
    with session_driver() as (driver, database):
        result = run_ingest(cfg, driver, database, progress=not quiet, echo=click.echo)
        click.echo("")
        print_summary(summary(Store(driver, database), run_id), echo=click.echo)
    return {**result, "state_dir": str(state)}
