"""`circuitshift robustness`: circuits on perturbed data, on disjoint splits, and the resampling-noise
baseline, stored in Neo4j as runs so that the store's queries (Jaccard, churn) answer them.

Stored runs (each checkpoint is one circuit; tags on the Run say what it is):
  PREFIX-LABEL          steps = perturbation level % (0 = the clean circuit split)   analysis=robustness
  PREFIX-LABEL-splits   steps = disjoint split index                                 analysis=splits
  RUN~noise             steps = bootstrap sample 0..K-1 of RUN:STEP's circuit split  analysis=noise
`circuitshift report RUN` draws them (robustness vs level; churn against the noise band).
"""

from __future__ import annotations

from pathlib import Path

import click

from analysis.errors import UserError


def _parse_models(specs: tuple[str, ...]) -> list[tuple[str, str]]:
    out = []
    for spec in specs:
        label, sep, path = spec.partition("=")
        if not sep:
            label, path = Path(spec).name or "model", spec
        if not label or not path:
            raise UserError(f"--model {spec!r}: use LABEL=PATH (e.g. finetuned=out/final, random=PATH)")
        out.append((label, path))
    return out


@click.command()
@click.option("--model", "models", multiple=True, required=True,
              help="LABEL=PATH, repeatable (e.g. finetuned=..., pretrained=...). The label 'random' "
                   "scores a randomly initialised model of PATH's architecture.")
@click.option("--data", "data", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Dataset folder from `circuitshift data make ... --perturb all --disjoint-splits 5`.")
@click.option("--task", default=None, help="Task label stored on the runs (default: the dataset's task).")
@click.option("--run-prefix", default=None, help="Run id prefix (default rob-TASK).")
@click.option("--of", "of_run", default=None, help="Link the robustness runs to this fine-tuning RUN "
              "(its report then draws them).")
@click.option("--levels/--no-levels", default=True, show_default=True, help="Score the perturbed copies.")
@click.option("--splits/--no-splits", default=True, show_default=True, help="Score the disjoint splits.")
@click.option("--noise-of", default=None, metavar="RUN:STEP",
              help="Also store the noise baseline of RUN:STEP: the FIRST --model (that checkpoint's "
                   "weights) scored on --samples bootstrap resamples of the circuit split, as run RUN~noise.")
@click.option("--samples", type=int, default=5, show_default=True, help="Bootstrap resamples for --noise-of.")
@click.option("--seed", type=int, default=0, show_default=True, help="Resampling / random-init seed.")
@click.option("--steps", type=int, default=5, show_default=True, help="IG steps m.")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--top-frac", type=float, default=0.05, show_default=True, help="Circuit = top fraction, pruned.")
@click.option("--max-examples", type=int, default=None, help="Use at most N pairs per set.")
@click.option("--metric", type=click.Choice(["kl", "logit-diff"]), default="kl", show_default=True)
def robustness(models, data, task, run_prefix, of_run, levels, splits, noise_of, samples, seed, steps,
               batch_size, top_frac, max_examples, metric):
    """Circuit robustness (method.md 7) and a resampling-noise baseline for churn."""
    from analysis.checkpoint import ScoringConfig
    from analysis.datasets import available_splits, dataset_provenance, load_split
    from analysis.models import load_model
    from analysis import robustness as R
    from ingest.job import architecture_of
    from queries import exploration as X
    from queries.api import CircuitDefinition, Store, parse_ref
    from queries.connection import session_driver
    from queries.writer import CheckpointData, CircuitWriter, RunRecord

    parsed = _parse_models(models)
    prov = dataset_provenance(data)
    task = task or prov.get("task") or data.name
    prefix = run_prefix or f"rob-{task}"
    cfg = ScoringConfig(steps=steps, batch_size=batch_size, top_frac=top_frac, max_examples=max_examples,
                        metric=metric)
    avail = available_splits(data)
    level_sets = R.level_splits(avail) if levels else {}
    split_sets = R.disjoint_splits(avail) if splits else {}
    if levels and len(level_sets) < 2:
        raise UserError(f"{data} has no perturb_* splits: make it with `--perturb all` (or use --no-levels)")
    if noise_of:
        parse_ref(noise_of)
    loaded = {}
    for label, path in parsed:
        adapter = load_model(path)
        model = R.random_model_like(adapter.model, seed) if label == "random" else adapter.model
        loaded[label] = (model, adapter.tokenizer)

    summary = []
    with session_driver() as (driver, database):
        writer = CircuitWriter(driver, database)
        store = Store(driver, database)

        def store_run(run_id, label, circuits, tags, model):
            arch = architecture_of(model)
            writer.ensure_run(RunRecord(id=run_id, task=task, dataset_hash=prov.get("content_hash", ""),
                                        method="robustness", data_split=tags["analysis"],
                                        extra={"model_label": label, **tags}), arch)
            for c in circuits:
                writer.write_checkpoint(run_id, arch, CheckpointData(c.step, c.names, c.scores, c.in_graph,
                                                                     meta=c.meta))
            driver.execute_query(X.TAG_RUN, {"id": run_id, "tags": {"model_label": label, **tags}},
                                 database_=database)

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
    for row in summary:
        click.echo(f"{row['model']:>12}  {row['what']:<32} edge Jaccard {row['edge_jaccard']:.3f}")
