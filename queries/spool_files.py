"""The spool's files: one checkpoint's complete result per file, written so a crash never half-writes one.

Why files: a fine-tuning job must not lose a scored checkpoint (minutes of EAP-IG on a large model)
because the store was briefly unreachable, so the result goes to local disk and is replayed later.

Layout: `<spool>/<run folder>/run.json` names the run (id, config hash); each checkpoint is
`<step:09d>.json.gz`, a gzip stream of one header line `{"format", "version", "sha256", "run", "step"}`
and the payload JSON (run record, architecture, checkpoint). The checksum covers the payload's exact
bytes, so a damaged file is recognised and never half-replayed. Files are written to a temporary name,
fsynced and renamed (then the folder is fsynced): a reader sees a whole file or none.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import secrets
import zlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from analysis.errors import UserError
from queries.components import Architecture
from queries.server.local import default_state_dir
from queries.writer import CheckpointData, RunRecord

FORMAT = "circuitshift-spool"
VERSION = 1
MARKER = "run.json"
_FILE = re.compile(r"^(-?\d+)\.json\.gz$")


@dataclass(frozen=True)
class SpoolEntry:
    """One spooled checkpoint: which run (as its folder's marker says), which step, where."""

    run: str
    step: int
    path: Path


def default_spool_dir() -> Path:
    """`<state folder>/spool` (the state folder is `CIRCUITSHIFT_STATE_DIR`, default `.circuitshift`)."""
    return default_state_dir() / "spool"


def run_folder(spool_dir: Path, run_id: str) -> Path:
    """A file-system-safe folder per run id: readable prefix plus a hash (ids may hold any character)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)[:48] or "_"
    return Path(spool_dir) / f"{slug}-{hashlib.sha256(run_id.encode()).hexdigest()[:12]}"


def read_marker(folder: Path) -> dict:
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return {}


def pending(spool_dir: Path | None = None, run: str | None = None) -> list[SpoolEntry]:
    """What is still spooled (for `run`, or every run), in replay order: by run folder, then step."""
    spool_dir = Path(spool_dir) if spool_dir is not None else default_spool_dir()
    if run is not None:
        folders = [run_folder(spool_dir, run)]
    else:
        folders = sorted(p for p in spool_dir.iterdir() if p.is_dir()) if spool_dir.is_dir() else []
    out = []
    for folder in folders:
        if not folder.is_dir():
            continue
        label = run if run is not None else read_marker(folder).get("run", folder.name)
        steps = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _FILE.match(p.name)))
        out += [SpoolEntry(label, step, path) for step, path in steps]
    return out


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, blob: bytes) -> None:
    """temp + fsync + rename + fsync of the folder; on any failure the temporary file is removed."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _plain(value):
    """JSON fallback for numpy scalars and arrays in metrics."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def encode(run: RunRecord, arch: Architecture, data: CheckpointData, reason: str) -> bytes:
    """The gzip bytes of one spool file."""
    payload = json.dumps({
        "run": asdict(run), "arch": asdict(arch), "reason": reason,
        "checkpoint": {"step": int(data.step), "level": data.level, "names": [str(n) for n in data.names],
                       "scores": [float(s) for s in data.scores],
                       "in_graph": [bool(f) for f in data.in_graph], "meta": data.meta}},
        default=_plain, separators=(",", ":")).encode()
    header = json.dumps({"format": FORMAT, "version": VERSION, "run": run.id, "step": int(data.step),
                         "sha256": hashlib.sha256(payload).hexdigest()}).encode()
    return gzip.compress(header + b"\n" + payload, compresslevel=1)


def spool_checkpoint(spool_dir: Path, run: RunRecord, arch: Architecture, data: CheckpointData,
                     reason: str) -> SpoolEntry:
    """Write one checkpoint's complete result to the spool; a full or unwritable disk is one line."""
    folder = run_folder(spool_dir, run.id)
    path = folder / f"{int(data.step):09d}.json.gz"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        marker = {"run": run.id, "config_hash": run.config_hash}
        if read_marker(folder) != marker:
            write_atomic(folder / MARKER, json.dumps(marker).encode())
        write_atomic(path, encode(run, arch, data, reason))
    except OSError as exc:
        raise UserError(f"cannot spool checkpoint {data.step} of run {run.id!r} to {folder}: "
                        f"{exc.strerror or exc}; the store is unavailable too ({reason}), so this "
                        "checkpoint is not saved") from None
    return SpoolEntry(run.id, int(data.step), path)


def _damaged(path: Path, why: str) -> UserError:
    return UserError(f"spool file {path} is damaged ({why}); it is kept and nothing of it was written: "
                     "restore it, or move it away so a rerun scores that checkpoint again")


def load(entry: SpoolEntry) -> tuple[RunRecord, Architecture, CheckpointData]:
    """Read and verify one spool file; anything wrong with it is one UserError naming the file."""
    path = entry.path
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as exc:
        raise _damaged(path, f"not a whole gzip file: {' '.join(str(exc).split())[:80]}") from None
    head, sep, payload = raw.partition(b"\n")
    try:
        header = json.loads(head)
        fmt, version, digest = header["format"], header["version"], header["sha256"]
    except (ValueError, TypeError, KeyError):
        raise _damaged(path, "no spool header") from None
    if fmt != FORMAT or version != VERSION:
        raise UserError(f"spool file {path} is in format {fmt!r} version {version!r}; this circuitshift "
                        f"reads {FORMAT!r} version {VERSION}: it is kept, replay it with the version "
                        "that wrote it")
    if not sep or hashlib.sha256(payload).hexdigest() != digest:
        raise _damaged(path, "checksum mismatch")
    try:
        body = json.loads(payload)
        known = {f.name for f in fields(RunRecord)}
        run = RunRecord(**{k: v for k, v in body["run"].items() if k in known})
        arch = Architecture(**body["arch"])
        cp = body["checkpoint"]
        data = CheckpointData(step=cp["step"], names=cp["names"], scores=cp["scores"],
                              in_graph=cp["in_graph"], level=cp["level"], meta=cp["meta"])
    except (ValueError, TypeError, KeyError, AttributeError, UserError) as exc:
        raise _damaged(path, f"bad payload: {type(exc).__name__}") from None
    if path.parent.name != run_folder(path.parent.parent, run.id).name:  # moved between run folders
        raise UserError(f"spool file {path} holds a checkpoint of run {run.id!r}, not of {entry.run!r}: "
                        "refusing to replay it into another run")
    if data.step != entry.step:
        raise _damaged(path, f"its name says step {entry.step} but it holds step {data.step}")
    return run, arch, data


def remove(entry: SpoolEntry) -> None:
    """Delete a replayed file; the run's folder (and marker) goes once it holds no checkpoint."""
    entry.path.unlink(missing_ok=True)
    _fsync_dir(entry.path.parent)
    folder = entry.path.parent
    if not any(_FILE.match(p.name) for p in folder.iterdir()):
        (folder / MARKER).unlink(missing_ok=True)
        try:
            folder.rmdir()
        except OSError:
            pass  # temporary files of a concurrent writer: leave the folder
