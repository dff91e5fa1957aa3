"""Build a whole dataset folder: generate (or import the paper's CSV), split, add robustness variants,
write with a manifest. `circuitshift data make` is a thin wrapper around `make_dataset`.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from analysis.datasets import read_pairs_csv, write_dataset
from analysis.errors import UserError
from analysis.tasks.base import Row, Task
from analysis.tasks.filters import TokenChecker, check_pair, leading_space, load_tokenizer
from analysis.tasks.generate import generate_rows, quotas, to_pairs
from analysis.tasks.perturb import perturb_rows
from analysis.tasks.registry import make_task
from analysis.tasks.splits import SplitConfig, disjoint_splits, split_indices

FORMAT_VERSION = 1


@dataclass(frozen=True)
class DatasetSpec:
    """Everything that determines a dataset (all of it lands in the manifest)."""
    task: str
    tokenizer: Path | str | None           # a tokenizer folder, .gguf or shipped name; optional only for --from-csv
    out: Path
    n: int | None = None                   # Add/Sub range N
    count: int | None = None               # examples; the task's paper count by default
    seed: int = 42                         # generation seed (splits use split.seed)
    split: SplitConfig = field(default_factory=SplitConfig)
    from_csv: Path | None = None           # import the paper's released CSV instead of generating
    perturb_levels: tuple[float, ...] = ()  # e.g. 0.1..0.9: perturb_10.csv .. perturb_90.csv
    disjoint: int = 0                      # number of disjoint robustness splits (0: none)
    disjoint_size: int = 200
    disjoint_source: str = "circuit"       # draw the disjoint splits from "circuit" or "all" rows
    overwrite: bool = False
    answer_tokens: str = "1"               # "1": single-token answers (the paper); "any": any length
    leading_space: bool | None = None      # answers follow the prompt with a space; None: the task's rule


def _tokenizer_info(path, tokenizer) -> dict:
    """What identifies the tokenizer: its files' hashes (a folder), the file's (a .gguf), or its name."""
    files = {}
    p = Path(str(path)).expanduser()
    for f in ([p / n for n in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json")]
              if p.is_dir() else [p] if p.is_file() else []):
        if f.is_file():
            files[f.name] = hashlib.sha256(f.read_bytes()).hexdigest()
    return {"path": str(p.resolve()) if p.exists() else str(path), "class": type(tokenizer).__name__,
            "vocab_size": len(tokenizer), "files_sha256": files}


def import_rows(task: Task, path: Path, checker: TokenChecker | None) -> tuple[list[Row], dict]:
    """Rows of a released CSV, parsed with the task's template; each row's corruption must be the
    task's kind and its label the task's answer. With a tokenizer, rows failing a filter are dropped
    and counted (the paper filtered with Pythia's tokenizer)."""
    rows, dropped = [], Counter()
    seen = set()
    for i, pair in enumerate(read_pairs_csv(path), start=2):
        try:
            inst, corr = task.parse_pair(pair.clean, pair.corrupted)
        except UserError as exc:
            raise UserError(f"{path}: line {i}: {exc}") from None
        kind = task.corruption_kind(inst, corr)
        if kind not in task.corruption_kinds:
            raise UserError(f"{path}: line {i}: the corruption is not a {task.name} corruption "
                            f"({' or '.join(task.corruption_kinds)})")
        if task.answer(inst) != pair.label.strip():
            raise UserError(f"{path}: line {i}: label {pair.label} but the prompt's answer is "
                            f"{task.answer(inst)}")
        why = check_pair(task, inst, corr, checker) if checker else None
        if why is None and task.key(inst) in seen:
            why = "duplicate clean prompt"
        if why:
            dropped[why] += 1
            continue
        seen.add(task.key(inst))
        rows.append(Row(inst, corr))
    return rows, dict(dropped)


def make_dataset(spec: DatasetSpec) -> dict:
    """Generate/import, split and write a dataset; returns its manifest."""
    task = make_task(spec.task, n=spec.n)
    if spec.from_csv is None:  # check the cheap options before loading a tokenizer
        quotas(make_task(task.base_task) if task.base_task else task, spec.count or task.default_count)
    tokenizer = checker = None
    if spec.tokenizer is not None:
        tokenizer = load_tokenizer(spec.tokenizer)
        checker = TokenChecker(tokenizer, spec.answer_tokens, spec.leading_space)
    elif spec.from_csv is None:
        raise UserError("--tokenizer is required to generate a dataset")
    # without a tokenizer nothing is filtered, but the answer format still applies to the labels
    answer_format = checker or TokenChecker(None, spec.answer_tokens, spec.leading_space)
    if spec.disjoint_source not in ("circuit", "all"):
        raise UserError(f"disjoint splits come from 'circuit' or 'all', not {spec.disjoint_source!r}")
    if spec.perturb_levels and checker is None:
        raise UserError("perturbations need --tokenizer (perturbed prompts are filtered like new ones)")

    source: dict = {"kind": "generated"}
    if spec.from_csv is not None:
        if spec.count is not None:
            raise UserError("--count does not apply to --from-csv (every row of the file is imported)")
        rows, dropped = import_rows(task, Path(spec.from_csv), checker)
        if not rows:
            raise UserError(f"{spec.from_csv}: no row survived the filters ({dropped})")
        source = {"kind": "csv", "path": str(Path(spec.from_csv).resolve()),
                  "sha256": hashlib.sha256(Path(spec.from_csv).read_bytes()).hexdigest(),
                  "rows_dropped_by_filter": dropped}
    else:
        rows = generate_rows(task, spec.count or task.default_count, spec.seed, checker)

    ft_idx, circ_idx = split_indices(len(rows), spec.split)
    files = {"finetune": [rows[i] for i in ft_idx], "circuit": [rows[i] for i in circ_idx]}
    extras: dict = {}
    if spec.disjoint:
        pool = circ_idx if spec.disjoint_source == "circuit" else list(range(len(rows)))
        for k, idx in enumerate(disjoint_splits(pool, spec.disjoint, spec.disjoint_size, spec.split.seed)):
            files[f"split_{k}"] = [rows[i] for i in idx]
        extras["disjoint_splits"] = {"count": spec.disjoint, "size": spec.disjoint_size,
                                     "source": spec.disjoint_source, "seed": spec.split.seed}
    if spec.perturb_levels:
        stats = []
        taken = {task.key(r.clean) for r in rows}  # never collide with any row of the dataset
        for level in spec.perturb_levels:
            name = f"perturb_{round(level * 100):d}"
            files[name], st = perturb_rows(task, files["circuit"], level, spec.seed, checker, taken)
            stats.append({"file": f"{name}.csv", **st})
        extras["perturbations"] = {"of": "circuit", "max_attempts": 100, "levels": stats}

    groups = Counter(task.group_of(r.clean) for r in rows)
    manifest = {
        "format": FORMAT_VERSION,
        "task": task.name,
        "params": task.params(),
        "summary": task.summary,
        "count": len(rows),
        "groups": dict(sorted(groups.items())),
        "seed": spec.seed,
        "split": {"finetune": spec.split.finetune, "circuit": spec.split.circuit, "seed": spec.split.seed,
                  "method": "sklearn train_test_split(test_size=circuit, random_state=seed)"},
        "tokenizer": _tokenizer_info(spec.tokenizer, tokenizer) if tokenizer is not None else None,
        "label_leading_space": leading_space(task, answer_format),
        "answer_tokens": spec.answer_tokens,
        "source": source,
        **extras,
    }
    splits = {name: to_pairs(task, rs, checker or answer_format) for name, rs in files.items()}
    return write_dataset(spec.out, splits, manifest, overwrite=spec.overwrite)
