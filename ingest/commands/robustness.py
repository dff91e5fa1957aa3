"""`circuitshift robustness`: circuit robustness and the resampling-noise baseline; the job and the runs
it stores are described in ingest/jobs/robustness.py."""

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
    from analysis.checkpoint import ScoringConfig  # torch: loaded only once the command runs
    from ingest.jobs.robustness import RobustnessConfig, run_robustness

    cfg = ScoringConfig(steps=steps, batch_size=batch_size, top_frac=top_frac, max_examples=max_examples,
                        metric=metric)
    summary = run_robustness(RobustnessConfig(
        models=tuple(_parse_models(models)), data=data, scoring=cfg, task=task, run_prefix=run_prefix,
        of_run=of_run, levels=levels, splits=splits, noise_of=noise_of, samples=samples, seed=seed))
    for row in summary:
        click.echo(f"{row['model']:>12}  {row['what']:<32} edge Jaccard {row['edge_jaccard']:.3f}")
