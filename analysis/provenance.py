"""Where a result came from: code version, package versions, content hashes.

Every stored result carries these, so a number in the database can be traced to the code and data that
made it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

PACKAGES = ("circuitshift", "torch", "transformers", "peft", "transformer-lens", "neo4j")


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the circuitshift checkout (with `+dirty` when it has uncommitted changes)."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5).stdout.strip()
        if not sha:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def code_version() -> str:
    """`circuitshift <version> (<git commit>)`: the one string stored as `code_version`."""
    version = package_versions().get("circuitshift", "unknown")
    commit = git_commit()
    return f"circuitshift {version}" + (f" ({commit})" if commit else "")


def content_hash(obj) -> str:
    """sha256 of a JSON-serialisable object (sorted keys), or of bytes/str, as hex."""
    if isinstance(obj, str):
        data = obj.encode()
    elif isinstance(obj, bytes):
        data = obj
    else:
        data = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(data).hexdigest()


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_sha256(model, dtype: str = "float32") -> str:
    """sha256 over a model's floating-point weights (state-dict names sorted, each cast to `dtype` and
    hashed as raw bytes): tests and benchmarks check with it that they rebuilt the very weights a stored
    reference was made from."""
    import torch  # here, so that importing provenance stays torch-free for `circuitshift db`

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if t.is_floating_point():
            h.update(name.encode())
            h.update(t.detach().to(getattr(torch, dtype)).contiguous().numpy().tobytes())
    return h.hexdigest()
