"""The robustness job (`circuitshift robustness`): circuits on perturbed data, on disjoint splits, and the resampling-noise
baseline, stored in Neo4j as runs so that the store's queries (Jaccard, churn) answer them.

Stored runs (each checkpoint is one circuit; tags on the Run say what it is):
  PREFIX-LABEL          steps = perturbation level % (0 = the clean circuit split)   analysis=robustness
  PREFIX-LABEL-splits   steps = disjoint split index                                 analysis=splits
  RUN~noise             steps = bootstrap sample 0..K-1 of RUN:STEP's circuit split  analysis=noise
`circuitshift report RUN` draws them (robustness vs level; churn against the noise band).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from analysis import robustness as R
from analysis.checkpoint import ScoringConfig
from analysis.datasets import available_splits, dataset_provenance, load_split
from analysis.errors import UserError
from analysis.models import load_model
from ingest.jobs.finetune import architecture_of
from queries import exploration as X
from queries.api import CircuitDefinition, Store, parse_ref
from queries.connection import session_driver
from queries.writer import CheckpointData, CircuitWriter, RunRecord


@dataclass(frozen=True)
class RobustnessConfig:
    """What `circuitshift robustness` scores and stores (see the module docstring for the runs)."""

    models: tuple[tuple[str, str], ...]  # (label, path); label 'random': a random init of PATH's architecture
    data: Path
    scoring: ScoringConfig
    task: str | None = None
    run_prefix: str | None = None
    of_run: str | None = None
    levels: bool = True
    splits: bool = True
    noise_of: str | None = None  # RUN:STEP
    samples: int = 5
    seed: int = 0



def store_circuits(writer, run_id: str, label: str, circuits, tags: dict, arch, *, task: str,
                   dataset_hash: str, seed: int | None = None) -> None:
    """Store scored circuits (analysis.robustness.ScoredCircuit) as the checkpoints of one run, tagged
    with what they are (`analysis`, `of_run`, ...) so the store's queries and the report find them."""
    all_tags = {"model_label": label, **tags}
    writer.ensure_run(RunRecord(id=run_id, task=task, dataset_hash=dataset_hash, method="robustness",
                                data_split=tags["analysis"], seed=seed, extra=all_tags), arch)
    for c in circuits:
        writer.write_checkpoint(run_id, arch, CheckpointData(c.step, c.names, c.scores, c.in_graph, meta=c.meta))
    writer.tag_run(run_id, all_tags)

def run_robustness(rc: RobustnessConfig) -> list[dict]:
    """Score and store the runs; returns the edge-Jaccard summary rows {model, what, edge_jaccard}."""
    data, of_run, noise_of, samples, seed, cfg = rc.data, rc.of_run, rc.noise_of, rc.samples, rc.seed, rc.scoring
    prov = dataset_provenance(data)
    task = rc.task or prov.get("task") or data.name
    prefix = rc.run_prefix or f"rob-{task}"
    avail = available_splits(data)
    level_sets = R.level_splits(avail) if rc.levels else {}
    split_sets = R.disjoint_splits(avail) if rc.splits else {}
    if rc.levels and len(level_sets) < 2:
        raise UserError(f"{data} has no perturb_* splits: make it with `--perturb all` (or use --no-levels)")
    if noise_of:
        parse_ref(noise_of)
    loaded = {}
    for label, path in rc.models:
        adapter = load_model(path)
        model = R.random_model_like(adapter.model, seed) if label == "random" else adapter.model
        loaded[label] = (model, adapter.tokenizer)

    summary = []
    with session_driver() as (driver, database):
        writer = CircuitWriter(driver, database)
        store = Store(driver, database)

        def store_run(run_id, label, circuits, tags, model):
            store_circuits(writer, run_id, label, circuits, tags, architecture_of(model), task=task,
                           dataset_hash=prov.get("content_hash", ""))

        def progress(step, res):
            click.echo(f"  step {step}: {res.metrics['n_circuit_edges']} circuit edges", err=True)

        for label, (model, tok) in loaded.items():
            if level_sets:
                click.echo(f"{label}: circuits at perturbation levels {list(level_sets)}", err=True)
                sets = {lv: load_split(data, name) for lv, name in level_sets.items()}
                run_id = f"{prefix}-{label}"
                store_run(run_id, label, R.score_sets(model, tok, sets, cfg, progress),
                          {"analysis": "robustness", "of_run": of_run or ""}, model)
                for lv in list(level_sets)[1:]:
                    j = store.jaccard(f"{run_id}:0", f"{run_id}:{lv}", CircuitDefinition())
                    summary.append({"model": label, "what": f"perturb {lv}%", "edge_jaccard": j["edge_jaccard"]})
            if len(split_sets) >= 2:
                click.echo(f"{label}: circuits on disjoint splits {list(split_sets)}", err=True)
                sets = {k: load_split(data, name) for k, name in split_sets.items()}
                run_id = f"{prefix}-{label}-splits"
                store_run(run_id, label, R.score_sets(model, tok, sets, cfg, progress),
                          {"analysis": "splits", "of_run": of_run or ""}, model)
                ks = list(split_sets)
                vals = [store.jaccard(f"{run_id}:{a}", f"{run_id}:{b}", CircuitDefinition())["edge_jaccard"]
                        for i, a in enumerate(ks) for b in ks[i + 1:]]
                summary.append({"model": label, "what": "disjoint splits (mean pairwise)",
                                "edge_jaccard": sum(vals) / len(vals)})
        if noise_of:
            run, step = parse_ref(noise_of)
            label, (model, tok) = next(iter(loaded.items()))
            click.echo(f"noise baseline of {noise_of}: {samples} bootstrap resamples with {label}", err=True)
            pairs = load_split(data, "circuit")
            sets = dict(enumerate(R.bootstrap_samples(pairs, samples, seed)))
            store_run(f"{run}~noise", label, R.score_sets(model, tok, sets, cfg, progress),
                      {"analysis": "noise", "of_run": run, "noise_step": step, "samples": samples}, model)
            vs = X.churn_against_noise(store, run, CircuitDefinition())
            n = vs["noise"]["edges"]
            click.echo(f"noise edge churn between resamples: mean {n['mean']:.1f}, sd {n['sd']:.1f}, "
                       f"max {n['max']}")
            for t in vs["transitions"]:
                click.echo(f"  {t['from_step']}->{t['to_step']}: {t['edges_changed']} edges changed "
                           f"({'above' if t['edges_above_noise'] else 'within'} noise)")
    return summary
