"""Loading HF causal LMs (hub name or local folder) behind the one hook adapter.

``load_model`` is the real code path: ``AutoModelForCausalLM.from_pretrained`` and
``AutoTokenizer.from_pretrained`` accept a hub name where a hub is reachable, or a local folder
(tests use folders written by :mod:`analysis.tiny`).
"""

from __future__ import annotations

from pathlib import Path

from analysis.adapter import SUPPORTED_ARCHITECTURES, ModelAdapter, check_supported
from analysis.errors import UserError

DTYPES = ("float32", "float64", "float16", "bfloat16")


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
    return name.startswith((".", "/", "~")) or Path(name).expanduser().exists() or name.count("/") > 1


def load_model(name_or_path: str | Path, device: str = "cpu", dtype="float32") -> ModelAdapter:
    """A frozen model (eval mode, no parameter needs grad) wrapped in a :class:`ModelAdapter`.

    Raises a one-line UserError for a missing local path, a model that cannot be loaded, or an
    unsupported architecture (naming the supported ones).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    name = str(name_or_path)
    torch_dtype = resolve_dtype(dtype)
    if _looks_like_path(name) and not Path(name).expanduser().exists():
        raise UserError(f"model path {name} does not exist")
    if Path(name).expanduser().exists():
        p = Path(name).expanduser()
        if not (p / "config.json").exists():
            raise UserError(f"{p} is not a model folder (no config.json)")
        name = str(p)
    try:
        config = AutoConfig.from_pretrained(name)
    except OSError as exc:
        raise UserError(f"cannot load model {name!r}: {' '.join(str(exc).split())[:300]}") from None
    check_supported(getattr(config, "model_type", None))
    try:
        model = AutoModelForCausalLM.from_pretrained(name, dtype=torch_dtype)
        tokenizer = AutoTokenizer.from_pretrained(name)
    except OSError as exc:
        raise UserError(f"cannot load model {name!r}: {' '.join(str(exc).split())[:300]}") from None
    try:
        model = model.to(device)
    except (RuntimeError, AssertionError) as exc:
        raise UserError(f"cannot use device {device!r}: {' '.join(str(exc).split())[:200]}") from None
    return ModelAdapter(model, tokenizer, source=name)


__all__ = ["load_model", "resolve_dtype", "SUPPORTED_ARCHITECTURES", "DTYPES"]
