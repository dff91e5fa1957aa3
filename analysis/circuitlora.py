"""CircuitLoRA (method.md 4): critical layers -> per-module LoRA ranks, alphas and learning rates.

A plan is computed from a model's *shape* only (module names and weight shapes, read from a model or
from its config on the meta device), so it needs no weights and no database:

    shape = ModelShape.from_config("path/or/hub-name")
    plan = build_plan(shape, critical_layers=[0, 4, 6, 5, 2], r_o=8, r_c=32, lr_other=3e-4, lr_critical=4e-4)
    plan.lora_config_kwargs()   # r, lora_alpha, target_modules, rank_pattern, alpha_pattern for peft
    plan.lr_groups              # AdamW parameter groups: critical modules at lr_critical
    plan.parameter_ratio        # trainable / (base + trainable), exactly as the paper (method.md 3.2)

Every module of a critical layer gets rank r_c and alpha 2 r_c *in place of* the normal adapter; every
other target module gets r_o and alpha 2 r_o (paper: "(8, 32)" and "(16, 64)"; the second is labelled
"(32, 64)" in Tables 1 and 4, a typo, method.md 4). RandomLoRA draws its layers with
`random.Random(seed).sample(range(n_layers), k)` (the paper's `random.sample(range(24), 5)`).

peft matches a rank/alpha pattern key with `re.match(rf"(.*\\.)?({key})$", module_name)` and silently
falls back to the default rank when nothing matches (peft 0.21 only warns). Our keys are the escaped,
anchored full module names (`^gpt_neox\\.layers\\.4\\.attention\\.query_key_value$`), and every key is
checked to match at least one targeted module; an unmatched key is an error.

Layers are numbered as in the circuit store: `input` and `aL.hH`/`mL` -> L, so circuit layer L is the
model's decoder layer L.
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from analysis.architectures import lookup
from analysis.errors import UserError, read_json_file

# method.md 3.3: CircuitLoRA's learning rate for critical modules, per task (and r_c where it differs);
# the other modules use the task's LoRA rate (3e-4).
PAPER_OTHER_LR = 3e-4
CRITICAL_LR = {
    "add_sub": {None: 4e-4}, "mul_div": {None: 2e-4}, "sequence": {32: 6e-4, 64: 5e-4, None: 6e-4},
    "lcm": {32: 4e-4, 64: 6e-5, None: 4e-4}, "function": {None: 4e-4}, "compositional": {None: 6e-4},
}


def task_family(task: str | None) -> str:
    t = (task or "").lower()
    return "add_sub" if t.startswith("add_sub") else t


def paper_critical_lr(task: str | None, r_c: int, lr_other: float) -> float:
    """The critical-module learning rate: the paper's per-task rate (method.md 3.3), scaled by
    lr_other / 3e-4 when the other modules do not use the paper's 3e-4 (e.g. a tiny model)."""
    by_rc = CRITICAL_LR.get(task_family(task), {None: 4e-4})
    paper = by_rc.get(r_c, by_rc[None])
    return paper * lr_other / PAPER_OTHER_LR


@dataclass(frozen=True)
class LoraModule:
    """A module peft gives an adapter: its full name, decoder layer and weight shape."""

    name: str
    layer: int
    in_features: int
    out_features: int

    @property
    def per_rank(self) -> int:
        """LoRA parameters per unit of rank: A is r x in, B is out x r."""
        return self.in_features + self.out_features


@dataclass
class ModelShape:
    """What a plan needs from a model: its target modules (by layer) and its parameter count."""

    model_type: str
    n_layers: int
    base_parameters: int
    modules: list[LoraModule]
    target_modules: list[str]

    @classmethod
    def from_model(cls, model) -> "ModelShape":
        """From a loaded transformers model (not peft-wrapped). Target modules and layer naming: the
        registry's (:mod:`analysis.architectures`)."""
        model_type = model.config.model_type
        arch = lookup(model_type)
        targets = arch.lora_targets
        layer_re = re.compile(arch.layer_regex)
        modules = []
        for name, mod in model.named_modules():
            if name.rsplit(".", 1)[-1] not in targets:
                continue
            weight = getattr(mod, "weight", None)
            if weight is None or weight.dim() != 2:
                continue
            m = layer_re.match(name)
            if not m:
                raise UserError(f"target module {name} of {model_type} lies outside the decoder layers "
                                f"({arch.layer_regex})")
            if arch.fan_in_fan_out:  # Conv1D (GPT-2) stores (in, out)
                fan_in, fan_out = weight.shape
            else:
                fan_out, fan_in = weight.shape
            modules.append(LoraModule(name, int(m.group(1)), int(fan_in), int(fan_out)))
        if not modules:
            raise UserError(f"no LoRA target module ({', '.join(targets)}) found in the {model_type} model")
        n_layers = int(getattr(model.config, "num_hidden_layers", 0) or 1 + max(m.layer for m in modules))
        base = sum(p.numel() for p in model.parameters())
        return cls(model_type, n_layers, int(base), modules, list(targets))

    @classmethod
    def from_config(cls, config_or_path) -> "ModelShape":
        """From a config (object, local folder or hub name), built on the meta device: no weights."""
        # imported here: plans are read and checked without torch (analysis.training imports this module)
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        config = config_or_path
        if isinstance(config_or_path, (str, Path)):
            try:
                config = AutoConfig.from_pretrained(str(config_or_path))
            except OSError as exc:
                raise UserError(f"cannot read the config of {config_or_path}: "
                                f"{' '.join(str(exc).split())[:200]}") from None
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        return cls.from_model(model)

    def layer_modules(self, layer: int) -> list[LoraModule]:
        return [m for m in self.modules if m.layer == layer]


def module_key(name: str) -> str:
    """The escaped, anchored rank/alpha pattern key of one module."""
    return "^" + re.escape(name) + "$"


def peft_key_matches(key: str, module_name: str) -> bool:
    """peft 0.21's own rule (`peft.utils.other.get_pattern_key`)."""
    return re.match(rf"(.*\.)?({key})$", module_name) is not None


def check_pattern_keys(patterns: Iterable[str], module_names: Sequence[str], what: str = "rank_pattern") -> None:
    """Raise when a pattern key matches no targeted module (peft would ignore it silently)."""
    names = list(module_names)
    for key in patterns:
        try:
            re.compile(key)
        except re.error as exc:
            raise UserError(f"{what} key {key!r} is not a valid regular expression: {exc}") from None
        if not any(peft_key_matches(key, n) for n in names):
            example = names[0] if names else "(none)"
            raise UserError(f"{what} key {key!r} matches none of the {len(names)} LoRA target modules "
                            f"(e.g. {example}); peft would ignore it")


def random_layers(n_layers: int, k: int, seed: int) -> list[int]:
    """RandomLoRA's layers: `random.Random(seed).sample(range(n_layers), k)` (method.md 4)."""
    if not 1 <= k <= n_layers:
        raise UserError(f"--random-layers {k} must be between 1 and the model's {n_layers} layers")
    return random.Random(seed).sample(range(n_layers), k)


@dataclass
class CircuitLoRAPlan:
    """Per-module LoRA ranks, alphas and learning rates, and the parameter ratio they give."""

    model: str
    model_type: str
    kind: str                      # 'circuit' (critical layers from two circuits) or 'random'
    critical_layers: list[int]
    r_o: int
    r_c: int
    alpha_o: int
    alpha_c: int
    lr_other: float
    lr_critical: float
    target_modules: list[str]
    critical_modules: list[str]
    rank_pattern: dict[str, int]
    alpha_pattern: dict[str, int]
    lr_groups: list[dict]
    trainable_parameters: int
    base_parameters: int
    parameter_ratio: float          # trainable / (base + trainable)
    n_layers: int
    source: dict = field(default_factory=dict)  # before/after circuits and deltas, or the random seed
    task: str | None = None

    @property
    def label(self) -> str:
        return f"{'circuitlora' if self.kind == 'circuit' else 'randomlora'}-{self.r_o}-{self.r_c}"

    def lora_config_kwargs(self) -> dict:
        return {"r": self.r_o, "lora_alpha": self.alpha_o, "target_modules": list(self.target_modules),
                "rank_pattern": dict(self.rank_pattern), "alpha_pattern": dict(self.alpha_pattern),
                "lora_dropout": 0.0, "bias": "none"}

    def train_overrides(self) -> dict:
        """The `TrainConfig` fields that make a LoRA run follow this plan."""
        return {"method": "lora", "rank": self.r_o, "learning_rate": self.lr_other,
                "rank_pattern": dict(self.rank_pattern), "alpha_pattern": dict(self.alpha_pattern),
                "lr_groups": [dict(g) for g in self.lr_groups]}

    def to_dict(self) -> dict:
        return {"format": "circuitshift.circuitlora.plan/1", **asdict(self), "label": self.label}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def save(self, path: Path | str) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(self.to_json() + "\n")
        return p

    @classmethod
    def from_dict(cls, d: dict) -> "CircuitLoRAPlan":
        if not isinstance(d, dict) or d.get("format") != "circuitshift.circuitlora.plan/1":
            raise UserError("not a CircuitLoRA plan (format circuitshift.circuitlora.plan/1)")
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def load(cls, path: Path | str) -> "CircuitLoRAPlan":
        return cls.from_dict(read_json_file(path, "CircuitLoRA plan"))


def lora_trainable(shape: ModelShape, rank_of: dict[str, int]) -> int:
    """Trainable LoRA parameters: sum over target modules of r_m (in_m + out_m) (bias frozen)."""
    return sum(rank_of[m.name] * m.per_rank for m in shape.modules)


def parameter_ratio(trainable: int, base: int) -> float:
    """method.md 3.2: trainable / (base parameters + trainable)."""
    return trainable / (base + trainable)


def build_plan(shape: ModelShape, critical_layers: Sequence[int], r_o: int, r_c: int, lr_other: float,
               lr_critical: float, model: str = "", kind: str = "circuit", source: dict | None = None,
               task: str | None = None) -> CircuitLoRAPlan:
    """The plan for `critical_layers` of a model of this shape."""
    if r_o < 1 or r_c < 1:
        raise UserError(f"ranks must be >= 1 (got r_o={r_o}, r_c={r_c})")
    for lr, what in ((lr_other, "other"), (lr_critical, "critical")):
        if not (0 < lr < 1) or not math.isfinite(lr):
            raise UserError(f"the {what} learning rate {lr} is out of range (0, 1)")
    layers = sorted({int(x) for x in critical_layers})
    if not layers:
        raise UserError("a CircuitLoRA plan needs at least one critical layer")
    bad = [x for x in layers if not 0 <= x < shape.n_layers]
    if bad:
        raise UserError(f"critical layer {bad[0]} does not exist: the model has layers 0..{shape.n_layers - 1}")
    critical = [m for m in shape.modules if m.layer in set(layers)]
    missing = [x for x in layers if not shape.layer_modules(x)]
    if missing:
        raise UserError(f"layer {missing[0]} has no LoRA target module")
    rank_pattern = {module_key(m.name): r_c for m in critical}
    alpha_pattern = {module_key(m.name): 2 * r_c for m in critical}
    names = [m.name for m in shape.modules]
    check_pattern_keys(rank_pattern, names, "rank_pattern")
    check_pattern_keys(alpha_pattern, names, "alpha_pattern")
    rank_of = {m.name: r_o for m in shape.modules}
    rank_of.update({m.name: r_c for m in critical})
    trainable = lora_trainable(shape, rank_of)
    lr_groups = [{"name": "critical", "lr": float(lr_critical),
                  "pattern": r"(^|\.)(" + "|".join(re.escape(m.name) for m in critical) + r")\.lora_"}]
    return CircuitLoRAPlan(
        model=str(model), model_type=shape.model_type, kind=kind, critical_layers=layers, r_o=r_o, r_c=r_c,
        alpha_o=2 * r_o, alpha_c=2 * r_c, lr_other=float(lr_other), lr_critical=float(lr_critical),
        target_modules=list(shape.target_modules), critical_modules=[m.name for m in critical],
        rank_pattern=rank_pattern, alpha_pattern=alpha_pattern, lr_groups=lr_groups,
        trainable_parameters=trainable, base_parameters=shape.base_parameters,
        parameter_ratio=parameter_ratio(trainable, shape.base_parameters), n_layers=shape.n_layers,
        source=dict(source or {}), task=task)


def lora_ratio(shape: ModelShape, r: int) -> float:
    """Plain LoRA r on every target module (the paper's LoRA rows)."""
    return parameter_ratio(lora_trainable(shape, {m.name: r for m in shape.modules}), shape.base_parameters)


def check_wrapped(peft_model, rank_pattern: dict, alpha_pattern: dict, r: int, alpha: int) -> dict:
    """After `get_peft_model`: every adapter has the rank and alpha its pattern says (or the default).
    Returns {module name: (r, alpha)}; raises when peft did something else."""
    seen = {}
    for name, mod in peft_model.named_modules():
        ranks = getattr(mod, "r", None)
        if not isinstance(ranks, dict) or "default" not in ranks or not hasattr(mod, "lora_alpha"):
            continue
        base_name = name.split("base_model.model.", 1)[-1]
        want_r = next((v for k, v in rank_pattern.items() if peft_key_matches(k, base_name)), r)
        want_a = next((v for k, v in alpha_pattern.items() if peft_key_matches(k, base_name)), alpha)
        got = (ranks["default"], mod.lora_alpha["default"])
        if got != (want_r, want_a):
            raise UserError(f"peft gave {base_name} rank/alpha {got}, the plan says {(want_r, want_a)}")
        seen[base_name] = got
    return seen
