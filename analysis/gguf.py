"""GGUF files (llama.cpp's format): checking one, its sha256, and converting it once to an HF folder.

transformers reads a GGUF itself (``from_pretrained(folder, gguf_file=name)``), but it dequantizes every
tensor on each load (~30 s for SmolLM2-135M on 2 CPU cores). So a file is converted ONCE into the model
cache, ``<cache>/models/<first 16 hex of its sha256>/`` (float32 model + tokenizer, ``save_pretrained``,
written into a temporary folder and renamed, so a crash never leaves half a model there), and every
later load reads that folder like any other. The cache root is ``$CIRCUITSHIFT_CACHE``, else
``$XDG_CACHE_HOME/circuitshift``, else ``~/.cache/circuitshift`` (the Neo4j jars' cache in
``queries.server.local`` lives there too, but it is per Neo4j version and ``analysis`` never imports
``queries``). The sha256 is both the cache key and the model's revision in provenance; hashing a large
file takes seconds, so it is remembered per path, size and mtime in ``<cache>/models/sha256.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from analysis.errors import UserError

MAGIC = b"GGUF"
MARKER = "circuitshift-gguf.json"  # written last into a converted folder: what it was converted from


def cache_root() -> Path:
    base = os.environ.get("CIRCUITSHIFT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "circuitshift")
    return Path(base)


def models_cache() -> Path:
    return cache_root() / "models"


def _one_line(exc: BaseException, limit: int = 200) -> str:
    return " ".join(str(exc).split())[:limit] or type(exc).__name__


def check_magic(path: Path) -> None:
    """A one-line UserError unless the file starts like a GGUF (cheap: 4 bytes)."""
    try:
        with Path(path).open("rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {_one_line(exc)}") from None
    if head != MAGIC:
        raise UserError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)")


def check_gguf(path: Path) -> str:
    """The file's ``general.architecture``; a one-line UserError for a file that is not a whole GGUF.

    gguf's reader raises assorted ValueErrors/IndexErrors on a non-GGUF, an empty or a truncated file;
    a file whose header parses but whose last tensor ends past the end of the file is truncated too.
    """
    import gguf

    path = Path(path)
    check_magic(path)
    try:
        reader = gguf.GGUFReader(str(path), "r")
        end = max((t.data_offset + t.n_bytes for t in reader.tensors), default=0)
        field = reader.fields.get("general.architecture")
        arch = bytes(field.parts[field.data[0]]).decode() if field is not None else None
    except Exception as exc:  # the reader's errors for damaged files are of many types
        raise UserError(f"{path} is a truncated or corrupt GGUF file ({_one_line(exc, 120)})") from None
    if end > path.stat().st_size:
        raise UserError(f"{path} is a truncated GGUF file ({path.stat().st_size:,} of {end:,} bytes)")
    if not reader.tensors or not arch:
        raise UserError(f"{path} is a GGUF file without a model (no tensors or no general.architecture)")
    return arch


def sha256_of(path: Path) -> str:
    """Hex sha256 of the file (8 MiB chunks), remembered per resolved path, size and mtime."""
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    index = models_cache() / "sha256.json"
    try:
        known = json.loads(index.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(8 << 20), b""):
            h.update(chunk)
    known[key] = h.hexdigest()
    try:
        _write_atomic(index, json.dumps(known, indent=1, sort_keys=True))
    except OSError:
        pass  # an unwritable cache only costs the hash next time
    return known[key]


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def gguf_config(path: Path):
    """The transformers config a GGUF describes (metadata only: no tensor is read).

    A UserError when transformers has no GGUF mapping for the architecture (e.g. a model llama.cpp
    knows but transformers' loader does not).
    """
    from transformers import AutoConfig

    check_gguf(path)
    try:
        return AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
    except (ValueError, KeyError, OSError, NotImplementedError) as exc:
        raise UserError(f"transformers cannot load {path}: {_one_line(exc)}") from None


def cached_folder(path: Path) -> Path | None:
    """The GGUF's converted folder if it is in the cache already.

    Found by content (sha256), so the file is the very one converted: no need to parse it again
    (parsing SmolLM2's 49k-token vocabulary from the metadata alone takes ~7 s here).
    """
    check_magic(path)
    final = models_cache() / sha256_of(path)[:16]
    return final if (final / MARKER).exists() else None


def converted_folder(path: Path) -> Path:
    """The HF folder a GGUF converts to in the cache (made now if it is not there yet)."""
    path = Path(path)
    found = cached_folder(path)
    if found is not None:
        return found
    sha = sha256_of(path)
    final = models_cache() / sha[:16]
    _convert(path, sha, final)
    return final


def _convert(path: Path, sha: str, final: Path) -> None:
    """Dequantize the GGUF to a float32 model + tokenizer and save both into ``final``, atomically."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
    from transformers import __version__ as transformers_version

    print(f"converting {path.name} to a float32 HF folder once (cached in {final})", file=sys.stderr)
    folder, name = str(path.parent), path.name
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                     quantization_config=GgufConfig(dequantize=True),
                                                     local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    except (ValueError, KeyError, OSError, NotImplementedError) as exc:
        raise UserError(f"transformers cannot load {path}: {_one_line(exc)}") from None
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
    try:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / MARKER).write_text(json.dumps({"gguf": name, "sha256": sha, "transformers": transformers_version,
                                              "dtype": "float32"}, indent=1))
        if final.exists():  # an unfinished folder (no marker) from an older, interrupted layout
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / MARKER).exists():  # not another process winning the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
