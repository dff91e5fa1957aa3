"""`circuitshift data make|show|tasks`: build and inspect task datasets (method.md sections 1 and 7)."""

from __future__ import annotations

from pathlib import Path

import click

from analysis.datasets import available_splits, dataset_provenance, load_split
from analysis.errors import UserError
from analysis.tasks.build import DatasetSpec, make_dataset
from analysis.tasks.perturb import parse_levels
from analysis.tasks.registry import TASKS
from analysis.tasks.splits import SplitConfig


FROM_CSV_HELP = ("Import a released CSV (clean,corrupted,label), e.g. ../shared/paper-data/add_sub_100.csv, "
                 "instead of generating; every row is checked against TASK's template and corruption. "
                 "With --tokenizer, rows failing a filter are dropped and counted in the manifest.")
ANSWER_TOKENS_HELP = ("1: answers must be single tokens (the paper, Pythia-like tokenizers); any: answers of "
                      "any length, e.g. numbers with a digit-splitting tokenizer (clean and corrupted answers "
                      "of equal token length; scoring is teacher-forced over the answer positions).")


@click.group()
def data():
    """Build and inspect task datasets (clean/corrupted prompt pairs)."""


def _task_list() -> str:
    return "; ".join(TASKS)


@data.command("make")
@click.argument("task")
@click.option("--tokenizer", "tokenizer", default=None,
              help="The tokenizer the filters use (single-token labels, equal clean/corrupted length): a "
                   "local Hugging Face model or tokenizer folder, a .gguf file, or a shipped model name "
                   "(smollm2). Required unless --from-csv.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Dataset folder to write.")
@click.option("--n", "n", type=int, default=None, help="Add/Sub range N: 100, 200, 300, 400 or 500 "
              "(default 100). Also spelled as the task name add_sub_200.")
@click.option("--count", type=int, default=None,
              help="Number of examples (default: the paper's: Add/Sub 5000, Mul/Div 2000, Sequence 5000, "
                   "LCM 2500, Function 5000, compositional 5000).")
@click.option("--seed", type=int, default=42, show_default=True, help="Generation seed.")
@click.option("--finetune-frac", type=float, default=None,
              help="Fraction for fine-tuning (default 0.8; the paper's Add/Sub 100 code used 0.9).")
@click.option("--circuit-frac", type=float, default=None,
              help="Fraction for circuit discovery/evaluation (default 1 - finetune fraction).")
@click.option("--split-seed", type=int, default=42, show_default=True,
              help="Seed of the split (identical to sklearn train_test_split(random_state=...)).")
@click.option("--from-csv", type=click.Path(path_type=Path), default=None, help=FROM_CSV_HELP)
@click.option("--perturb", "perturb", default=None,
              help="Robustness copies of the circuit split: 'all' (10%..90%) or a list like 0.1,0.5 or 10,50. "
                   "Written as perturb_10.csv ...")
@click.option("--disjoint-splits", type=int, default=0,
              help="Also write this many disjoint splits split_0.csv ... (the rebuttal used 5).")
@click.option("--split-size", type=int, default=200, show_default=True, help="Rows per disjoint split.")
@click.option("--disjoint-from", type=click.Choice(["circuit", "all"]), default="circuit", show_default=True,
              help="Draw the disjoint splits from the circuit split or from all rows.")
@click.option("--answer-tokens", type=click.Choice(["1", "any"]), default="1", show_default=True,
              help=ANSWER_TOKENS_HELP)
@click.option("--leading-space/--no-leading-space", "leading_space", default=None,
              help="Whether the answer follows the prompt with a space (it becomes part of the label). "
                   "Default: the task's rule (word answers yes, the paper's numbers no).")
@click.option("--overwrite", is_flag=True, help="Replace an existing dataset folder.")
def make(task, tokenizer, out, n, count, seed, finetune_frac, circuit_frac, split_seed, from_csv, perturb,
         disjoint_splits, split_size, disjoint_from, answer_tokens, leading_space, overwrite):
    """Generate TASK's dataset (or import one) and write it to --out.

    TASK is one of: add_sub (add_sub_100 .. add_sub_500), mul_div, sequence, lcm, function, compositional,
    compositional_add_sub, compositional_mul_div, comparison, ioi, capital. The folder holds
    manifest.json, finetune.csv and circuit.csv (plus split_K.csv / perturb_P.csv when asked).
    """
    if finetune_frac is None and circuit_frac is None:
        finetune_frac, circuit_frac = 0.8, 0.2
    elif circuit_frac is None:
        circuit_frac = round(1 - finetune_frac, 10)
    elif finetune_frac is None:
        finetune_frac = round(1 - circuit_frac, 10)
    if from_csv is not None and not Path(from_csv).exists():
        raise UserError(f"--from-csv {from_csv}: no such file")
    spec = DatasetSpec(task=task, tokenizer=tokenizer, out=out, n=n, count=count, seed=seed,
                       split=SplitConfig(finetune_frac, circuit_frac, split_seed), from_csv=from_csv,
                       perturb_levels=parse_levels(perturb) if perturb else (), disjoint=disjoint_splits,
                       disjoint_size=split_size, disjoint_source=disjoint_from, overwrite=overwrite,
                       answer_tokens=answer_tokens, leading_space=leading_space)
    manifest = make_dataset(spec)
    counts = ", ".join(f"{k} {v}" for k, v in manifest["counts"].items())
    click.echo(f"{manifest['task']} {manifest['params'] or ''} -> {out}: {counts}; "
               f"content hash {manifest['content_hash'][:16]}")


@data.command("show")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--rows", type=int, default=3, show_default=True, help="Example rows to print per split.")
def show(path, rows):
    """Print a dataset folder's manifest summary and a few rows of each split."""
    if not Path(path).exists():
        raise UserError(f"{path}: no such dataset folder")
    prov = dataset_provenance(path)
    if Path(path).is_dir():
        click.echo(f"task: {prov.get('task')} {prov.get('params') or ''}")
        click.echo(f"  {prov.get('summary', '')}")
        tok = prov.get("tokenizer") or {}
        click.echo(f"tokenizer: {tok.get('path')} ({tok.get('class')}, {tok.get('vocab_size')} tokens)")
        split = prov.get("split", {})
        click.echo(f"seed: {prov.get('seed')}; split finetune {split.get('finetune')} / circuit "
                   f"{split.get('circuit')} (seed {split.get('seed')})")
        click.echo(f"source: {(prov.get('source') or {}).get('kind')}; groups: {prov.get('groups')}")
        for level in (prov.get("perturbations") or {}).get("levels", []):
            click.echo(f"  {level['file']}: {level['perturbed']}/{level['chosen']} perturbed")
    click.echo(f"content hash: {prov['content_hash']}"
               + ("  (MODIFIED since written: now " + prov["content_hash_now"] + ")" if prov["modified"] else ""))
    names = available_splits(path) if Path(path).is_dir() else [None]
    for name in names:
        pairs = load_split(path, name) if name else load_split(path)
        click.echo(f"[{name or Path(path).name}] {len(pairs)} rows")
        for p in pairs[:rows]:
            extra = f" | corrupted answer {p.corrupted_label}" if p.corrupted_label else ""
            click.echo(f"  {p.clean!r} -> {p.label}\n    corrupted {p.corrupted!r}{extra}")


@data.command("tasks")
def tasks():
    """List the tasks `data make` knows."""
    for name, cls in TASKS.items():
        click.echo(f"{name:24s} {cls.default_count:5d}  {cls.summary}")
