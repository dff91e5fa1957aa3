"""Clean/corrupted prompt pairs: the unit that fine-tuning, scoring and evaluation all read.

A dataset is a folder written by `circuitshift data make` (a `manifest.json` plus one CSV per split:
`finetune.csv`, `circuit.csv`) or a single CSV with columns `clean,corrupted,label` and an optional
`corrupted_label`. Prompts carry no trailing space or newline (method.md section 1).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from analysis.errors import UserError

SPLITS = ("finetune", "circuit")


@dataclass(frozen=True)
class PromptPair:
    clean: str
    corrupted: str
    label: str
    corrupted_label: str | None = None


def read_pairs_csv(path: Path) -> list[PromptPair]:
    """Read `clean,corrupted,label[,corrupted_label]` rows; a clear error for anything else."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"clean", "corrupted", "label"} - set(reader.fieldnames or [])
        if missing:
            raise UserError(f"{path}: missing column(s) {', '.join(sorted(missing))}; "
                            "expected clean,corrupted,label[,corrupted_label]")
        pairs = []
        for i, row in enumerate(reader, start=2):
            if not row["clean"] or not row["corrupted"] or row["label"] in (None, ""):
                raise UserError(f"{path}: line {i} has an empty clean, corrupted or label field")
            pairs.append(PromptPair(row["clean"], row["corrupted"], str(row["label"]).strip(),
                                    (row.get("corrupted_label") or None)))
    if not pairs:
        raise UserError(f"{path}: no rows")
    return pairs


def load_split(data: Path | str, split: str = "circuit") -> list[PromptPair]:
    """Pairs of one split of a dataset folder, or all rows of a CSV file."""
    data = Path(data)
    if data.is_dir():
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        return read_pairs_csv(data / f"{split}.csv")
    return read_pairs_csv(data)
