"""Clean/corrupted prompt pairs: the unit that fine-tuning, scoring and evaluation all read.

A dataset is a folder written by `circuitshift data make`: a `manifest.json` plus one CSV per split,
`finetune.csv` and `circuit.csv` (disjoint; 80/20 by default). Robustness variants live in the same
folder as extra split files, listed in the manifest's `files`:
  - `split_0.csv` .. `split_{k-1}.csv`: the rebuttal's disjoint splits (e.g. 5 x 200);
  - `perturb_10.csv` .. `perturb_90.csv`: a copy of `circuit.csv` with 10%..90% of the rows perturbed
    (method.md 7), row i perturbed or equal to row i of `circuit.csv`.
`load_split(folder, "perturb_30")` reads any of them. A single CSV with columns `clean,corrupted,label`
and an optional `corrupted_label` is also accepted everywhere. Prompts carry no trailing space or
newline (method.md section 1). A label is the exact text that follows the prompt: a leading space is
part of it (word answers such as " Paris"; the paper's numbers have none), and nothing strips it.
An answer may be several tokens (scoring is then teacher-forced over the answer positions).
`corrupted_label` is filled in wherever the corrupted prompt has a well-defined answer that passes the
dataset's answer rule (single token, or the clean answer's token length), and left empty otherwise.

The manifest (task, parameters, tokenizer, seed, split, counts, files, content hash) is the provenance
that runs record: call `dataset_provenance(path)`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

from analysis.errors import UserError


@dataclass(frozen=True)
class PromptPair:
    """One row of a dataset: clean and corrupted prompts, the clean answer and optionally the corrupted one."""

    clean: str
    corrupted: str
    label: str
    corrupted_label: str | None = None


SPLITS = ("finetune", "circuit")
MANIFEST = "manifest.json"
_SPLIT_NAME = re.compile(r"[A-Za-z0-9_]+")


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
            if not row["clean"] or not row["corrupted"] or not str(row["label"] or "").strip():
                raise UserError(f"{path}: line {i} has an empty clean, corrupted or label field")
            # labels are kept exactly as written: a leading space is part of the answer
            pairs.append(PromptPair(row["clean"], row["corrupted"], str(row["label"]),
                                    (row.get("corrupted_label") or None)))
    if not pairs:
        raise UserError(f"{path}: no rows")
    return pairs


def pairs_csv_text(pairs: list[PromptPair]) -> str:
    """The CSV text of pairs, byte-for-byte deterministic (the content hash depends on it)."""
    buf = io.StringIO()
    with_corrupted = any(p.corrupted_label is not None for p in pairs)
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["clean", "corrupted", "label"] + (["corrupted_label"] if with_corrupted else []))
    for p in pairs:
        writer.writerow([p.clean, p.corrupted, p.label]
                        + ([p.corrupted_label or ""] if with_corrupted else []))
    return buf.getvalue()


def _hash_files(files: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + files[name] + b"\0")
    return h.hexdigest()


def write_dataset(out_dir: Path | str, splits: dict[str, list[PromptPair]], manifest: dict,
                  overwrite: bool = False) -> dict:
    """Write `{name}.csv` per split and `manifest.json`; returns the manifest with counts and hash.

    The content hash covers the split files only (not the manifest), so it identifies the data.
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} exists and is not empty; choose another --out or pass --overwrite")
    for name in ("finetune", "circuit"):
        if name not in splits:
            raise UserError(f"a dataset needs a {name} split")
    blobs = {}
    for name, pairs in splits.items():
        if not _SPLIT_NAME.fullmatch(name):
            raise ValueError(f"bad split name {name!r}")
        blobs[f"{name}.csv"] = pairs_csv_text(pairs).encode()
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.csv"):  # an overwritten dataset must not keep stale split files
        if old.name not in blobs:
            old.unlink()
    for fname, blob in blobs.items():
        (out / fname).write_bytes(blob)
    manifest = dict(manifest)
    manifest["files"] = {f: {"rows": len(splits[f[:-4]]), "sha256": hashlib.sha256(b).hexdigest()}
                         for f, b in sorted(blobs.items())}
    manifest["counts"] = {name: len(pairs) for name, pairs in splits.items()}
    manifest["content_hash"] = _hash_files(blobs)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return manifest


def read_manifest(data: Path | str) -> dict:
    """The manifest of a dataset folder (a UserError if the folder has none)."""
    path = Path(data) / MANIFEST
    if not path.exists():
        raise UserError(f"{data}: not a dataset folder (no {MANIFEST})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg})") from None


def content_hash(data: Path | str) -> str:
    """sha256 of a dataset's split files (a folder: the files its manifest lists) or of one CSV."""
    data = Path(data)
    if data.is_dir():
        names = list(read_manifest(data).get("files", {})) or sorted(p.name for p in data.glob("*.csv"))
        return _hash_files({n: (data / n).read_bytes() for n in names})
    if not data.exists():
        raise UserError(f"{data}: no such file")
    return _hash_files({data.name: data.read_bytes()})


def dataset_provenance(data: Path | str) -> dict:
    """What a run records about its data: the manifest (or a stub for a bare CSV) plus the hash of the
    files as they are now; `modified` is True when they no longer match the manifest."""
    data = Path(data)
    if data.is_dir():
        manifest = read_manifest(data)
        now = content_hash(data)
        return {**manifest, "path": str(data.resolve()), "content_hash_now": now,
                "modified": now != manifest.get("content_hash")}
    now = content_hash(data)
    return {"task": None, "path": str(data.resolve()), "content_hash": now, "content_hash_now": now,
            "modified": False}


def available_splits(data: Path | str) -> list[str]:
    data = Path(data)
    files = read_manifest(data).get("files") if (data / MANIFEST).exists() else None
    names = [f[:-4] for f in files] if files else [p.stem for p in sorted(data.glob("*.csv"))]
    return sorted(names, key=lambda s: (0, SPLITS.index(s), "") if s in SPLITS else (1, 0, s))


def load_split(data: Path | str, split: str = "circuit") -> list[PromptPair]:
    """Pairs of one split of a dataset folder (finetune, circuit, split_0, perturb_30, ...), or all
    rows of a CSV file."""
    data = Path(data)
    if data.is_dir():
        names = available_splits(data)
        if split not in names or not _SPLIT_NAME.fullmatch(split):
            raise UserError(f"unknown split {split!r} in {data}; choose one of {', '.join(names)}")
        return read_pairs_csv(data / f"{split}.csv")
    return read_pairs_csv(data)
