"""Fine-tuning setups of the paper (method.md section 3): configs, data, peft models, checkpoint steps.

Nothing here touches the database; `ingest/jobs/finetune.py` runs the training loop and the store callback.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Sequence

from analysis.architectures import lookup
from analysis.circuitlora import ModelShape, check_pattern_keys, check_wrapped
from analysis.errors import UserError

METHODS = ("lora", "full", "adalora", "ia3")


@dataclass(frozen=True)
class TaskDefaults:
    """The paper's per-task schedule (method.md 3.3): epochs, LoRA lr (by rank where the paper gives
    one), full-FT lr."""

    epochs: float
    lora_lr: float
    full_lr: float
    lora_lr_by_rank: tuple[tuple[int, float], ...] = ()

    def lora_lr_for(self, rank: int) -> float:
        return dict(self.lora_lr_by_rank).get(rank, self.lora_lr)


# method.md 3.3. Full-FT lr for Add/Sub 300 is not given: 200's (6e-6) is used.
TASK_DEFAULTS = {
    "add_sub_100": TaskDefaults(2, 3e-4, 8e-6), "add_sub_200": TaskDefaults(4, 3e-4, 6e-6),
    "add_sub_300": TaskDefaults(4, 3e-4, 6e-6), "add_sub_400": TaskDefaults(4, 3e-4, 5e-6, ((32, 2e-4),)),
    "add_sub_500": TaskDefaults(4, 3e-4, 4e-6), "mul_div": TaskDefaults(2, 3e-4, 4e-6),
    "sequence": TaskDefaults(4, 3e-4, 8e-6), "lcm": TaskDefaults(2, 3e-4, 4e-6, ((16, 4e-4), (32, 2e-4))),
    "function": TaskDefaults(2, 3e-4, 8e-6), "compositional": TaskDefaults(4, 3e-4, 8e-6),
}
FALLBACK_DEFAULTS = TaskDefaults(2, 3e-4, 8e-6)
# method.md 3.4: AdaLoRA and IA3 have their own lr and epochs (AdaLoRA also warm-up 25), whatever the task.
PEFT_LR = {"adalora": 8e-3, "ia3": 8e-3}
PEFT_EPOCHS = {"adalora": 8, "ia3": 2}
DEFAULT_WARMUP = {"adalora": 25}
# method.md 3.4: the AdaLoRA notebook's schedule (steps of its 1120-step run).
ADALORA_SCHEDULE = {"tinit": 25, "tfinal": 1100, "deltaT": 50, "total_step": 1120}


def adalora_schedule(total: int) -> dict:
    """tinit / tfinal / deltaT for a run of `total` steps: the notebook's, scaled by total / 1120 (a
    1120-step run gets exactly 25 / 1100 / 50). Its tinit + tfinal exceed total_step, a schedule with no
    rank-budgeting phase, which peft >= 0.14 refuses; so tfinal is shortened to leave one deltaT of
    budgeting after the warm-up (1120 steps: 25 / 1045 / 50), the smallest change peft accepts."""
    paper = ADALORA_SCHEDULE
    scale = total / paper["total_step"]
    tinit = max(1, round(paper["tinit"] * scale))
    delta = max(1, round(paper["deltaT"] * scale))
    if total < tinit + delta + 1:
        raise UserError(f"AdaLoRA needs at least {tinit + delta + 1} training steps for its schedule "
                        f"(warm-up {tinit}, one allocation interval {delta}); this run has {total}")
    tfinal = min(round(paper["tfinal"] * scale), total - tinit - delta)
    return {"tinit": tinit, "tfinal": tfinal, "deltaT": delta, "total_step": total}


def defaults_key(task: str | None, params: dict | None = None) -> str | None:
    """The TASK_DEFAULTS key of a task: `add_sub` + {n: 200} -> `add_sub_200` (n defaults to 100, as the
    generator's); the compositional subtasks train as the compositional task (method.md 5: 4 epochs)."""
    if not task:
        return None
    if task == "add_sub":
        return f"add_sub_{int((params or {}).get('n') or 100)}"
    if task.startswith("compositional_"):
        return "compositional"
    return task


def task_defaults(task: str | None) -> TaskDefaults:
    """The paper's defaults of a TASK_DEFAULTS key or task name; the fallback for other tasks."""
    return TASK_DEFAULTS.get(task or "") or TASK_DEFAULTS.get(defaults_key(task) or "", FALLBACK_DEFAULTS)


@dataclass
class TrainConfig:
    """Fine-tuning hyper-parameters (defaults: the paper's, method.md 3.1)."""

    method: str = field(default="lora", metadata={"help": "lora, full, adalora or ia3."})
    rank: int = field(default=32, metadata={"help": "LoRA rank r (alpha = 2r, dropout 0)."})
    learning_rate: float | None = field(default=None, metadata={"help": "Default: per task and method."})
    epochs: float | None = field(default=None, metadata={"help": "Default: per task (method.md 3.3)."})
    max_steps: int | None = field(default=None, metadata={"help": "Optimizer steps; overrides epochs."})
    batch_size: int = field(default=8, metadata={"help": "Per-device batch size."})
    grad_accum: int = field(default=4, metadata={"help": "Gradient accumulation (effective batch 32)."})
    warmup_steps: int | None = field(default=None, metadata={
        "help": "Linear warm-up steps; default 50 (method.md 3.1), 25 for AdaLoRA (3.4). Never capped."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    max_length: int | None = field(default=None, metadata={"help": "Token length; default longest + 1."})
    checkpoints: int = field(default=10, metadata={"help": "Evenly spaced checkpoints after step 0."})
    seed: int = field(default=42, metadata={"help": "Seed of model init, data order and dropout."})
    separator: str = field(default="\n", metadata={"help": (
        "Between prompt and answer in the fine-tuning text: the paper's '\\n' (method.md 1.9). Circuits "
        "and accuracy read the prompt without it, so with a tokenizer where '\\n' is a token of its own "
        "the model learns to answer '\\n' after '='; ' ' keeps training and measurement consistent.")})
    bos: bool = field(default=False, metadata={"help": (
        "Start each fine-tuning text with BOS, as circuits and accuracy read prompts (method.md 1.9). "
        "The paper's Pythia text has none (Pythia's tokenizer adds none); a small model trained from "
        "scratch answers differently after a BOS it never saw.")})
    # CircuitLoRA (analysis/circuitlora.py): peft rank/alpha patterns and AdamW parameter groups.
    rank_pattern: dict | None = field(default=None, metadata={"help": "peft rank_pattern (lora only)."})
    alpha_pattern: dict | None = field(default=None, metadata={"help": "peft alpha_pattern (lora only)."})
    lr_groups: list | None = field(default=None, metadata={
        "help": "[{name, lr, pattern}]: trainable parameters whose name matches `pattern` (re.search) "
                "train at `lr`; the rest at learning_rate."})

    def __post_init__(self):
        if self.method not in METHODS:
            raise UserError(f"unknown fine-tuning method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.rank < 1:
            raise UserError(f"--rank must be >= 1, got {self.rank}")
        if self.checkpoints < 1:
            raise UserError(f"--checkpoints must be >= 1, got {self.checkpoints}")
        for name in ("batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1")
        if self.learning_rate is not None and not (0 < self.learning_rate < 1):
            raise UserError(f"learning rate {self.learning_rate} is out of range (0, 1)")
        if self.max_steps is not None and self.max_steps < self.checkpoints:
            raise UserError(f"--max-steps {self.max_steps} is fewer than --checkpoints {self.checkpoints}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise UserError(f"--warmup-steps must be >= 0, got {self.warmup_steps}")
        if self.epochs is not None and self.epochs <= 0:
            raise UserError(f"--epochs must be > 0, got {self.epochs}")
        if (self.rank_pattern or self.alpha_pattern) and self.method != "lora":
            raise UserError("rank/alpha patterns (CircuitLoRA) need --method lora")
        for g in self.lr_groups or []:
            if not {"name", "lr", "pattern"} <= set(g) or not (0 < float(g["lr"]) < 1):
                raise UserError(f"bad learning-rate group {g!r}: needs name, pattern and lr in (0, 1)")

    def record(self) -> dict:
        """The config as stored with a run; the CircuitLoRA fields only when set, so configs (and config
        hashes) of plain runs are the same as before those fields existed."""
        d = asdict(self)
        for key in ("rank_pattern", "alpha_pattern", "lr_groups"):
            if d[key] is None:
                del d[key]
        if not d["bos"]:
            del d["bos"]
        return d

    def resolved(self, task: str | None) -> "TrainConfig":
        """Fill learning rate, epochs and warm-up from the paper's tables (method.md 3.1-3.4). `task` is
        a TASK_DEFAULTS key (`add_sub_200`; see `defaults_key`) or a task name."""
        d = task_defaults(task)
        lr, epochs = self.learning_rate, self.epochs
        if lr is None:
            lr = (d.full_lr if self.method == "full" else PEFT_LR.get(self.method)
                  or (d.lora_lr if self.rank_pattern else d.lora_lr_for(self.rank)))
        if epochs is None:
            epochs = PEFT_EPOCHS.get(self.method, d.epochs)
        warmup = self.warmup_steps if self.warmup_steps is not None else DEFAULT_WARMUP.get(self.method, 50)
        return TrainConfig(**{**asdict(self), "learning_rate": lr, "epochs": epochs, "warmup_steps": warmup})


def total_steps(cfg: TrainConfig, n_train: int) -> int:
    if cfg.max_steps is not None:
        return cfg.max_steps
    per_epoch = math.ceil(n_train / (cfg.batch_size * cfg.grad_accum))
    return max(1, math.ceil(per_epoch * cfg.epochs))


def check_warmup(warmup: int, total: int) -> None:
    """The warm-up is applied as given (method.md 3.1: 50 steps), never silently shortened."""
    if warmup >= total:
        raise UserError(f"a warm-up of {warmup} steps does not fit in {total} training steps; "
                        "pass a shorter --warmup-steps")


def checkpoint_steps(total: int, n: int) -> list[int]:
    """Step 0 plus n evenly spaced steps ending at `total` (method.md 3.5)."""
    if n > total:
        raise UserError(f"{n} checkpoints do not fit in {total} training steps")
    return [0] + [round(total * i / n) for i in range(1, n + 1)]


def training_texts(pairs: Sequence, separator: str = "\n") -> list[tuple[str, str]]:
    """(prompt, answer) with the fine-tuning format `prompt\\nanswer` (method.md 1.9) by default."""
    return [(p.clean + separator, str(p.label)) for p in pairs]


class CausalLMExamples:
    """Tokenized fine-tuning examples: loss on the answer and the trailing EOS padding (method.md 1.9:
    pad = eos and padded positions are not masked, so the model learns to stop)."""

    def __init__(self, pairs: Sequence, tokenizer, max_length: int | None = None, separator: str = "\n",
                 bos: bool = False):
        import torch  # here: TrainConfig stays importable without torch

        eos = tokenizer.eos_token_id
        if eos is None:
            raise UserError("the tokenizer has no EOS token; fine-tuning needs one for padding")
        start = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos] if bos else []
        rows = []
        for prompt, answer in training_texts(pairs, separator):
            p = start + tokenizer(prompt, add_special_tokens=False)["input_ids"]
            a = tokenizer(answer, add_special_tokens=False)["input_ids"]
            rows.append((p, a))
        longest = max(len(p) + len(a) for p, a in rows) + 1
        self.max_length = max_length or longest
        self.items = []
        for p, a in rows:
            ids = (p + a)[: self.max_length]
            labels = ([-100] * len(p) + a)[: self.max_length]
            pad = self.max_length - len(ids)
            self.items.append({
                "input_ids": torch.tensor(ids + [eos] * pad),
                "attention_mask": torch.ones(self.max_length, dtype=torch.long),
                "labels": torch.tensor(labels + [eos] * pad),
            })

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def target_modules(model_type: str) -> list[str]:
    """The LoRA target modules of an architecture (the registry's, :mod:`analysis.architectures`)."""
    return list(lookup(model_type).lora_targets)


def wrap_for_training(model, cfg: TrainConfig, total: int):
    """The model to train: peft-wrapped for lora/adalora/ia3 (as method.md 3.2-3.4), itself for full."""
    if cfg.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    # imported here: peft imports torch, and TrainConfig must stay importable without it (the CLI)
    from peft import AdaLoraConfig, IA3Config, LoraConfig, get_peft_model

    arch = lookup(model.config.model_type)
    targets = list(arch.lora_targets)
    fan_in_fan_out = arch.fan_in_fan_out  # GPT-2's Conv1D stores weights transposed
    if cfg.method == "lora":
        rank_pattern, alpha_pattern = dict(cfg.rank_pattern or {}), dict(cfg.alpha_pattern or {})
        if rank_pattern or alpha_pattern:  # CircuitLoRA: an unmatched key is an error, not ignored
            names = [m.name for m in ModelShape.from_model(model).modules]
            check_pattern_keys(rank_pattern, names, "rank_pattern")
            check_pattern_keys(alpha_pattern, names, "alpha_pattern")
        pc = LoraConfig(r=cfg.rank, lora_alpha=2 * cfg.rank, lora_dropout=0.0, bias="none",
                        target_modules=targets, fan_in_fan_out=fan_in_fan_out, task_type="CAUSAL_LM",
                        rank_pattern=rank_pattern, alpha_pattern=alpha_pattern)
        if rank_pattern or alpha_pattern:
            wrapped = get_peft_model(model, pc)
            check_wrapped(wrapped, rank_pattern, alpha_pattern, cfg.rank, 2 * cfg.rank)
            return wrapped
    elif cfg.method == "adalora":
        # method.md 3.4: init_r 32 -> target_r 16 (rank = init_r), the notebook's schedule
        pc = AdaLoraConfig(init_r=cfg.rank, target_r=max(1, cfg.rank // 2), **adalora_schedule(total),
                           beta1=0.85, beta2=0.85, orth_reg_weight=0.05, lora_alpha=32, lora_dropout=0.0,
                           target_modules=targets, fan_in_fan_out=fan_in_fan_out, task_type="CAUSAL_LM")
    else:
        pc = IA3Config(target_modules=targets, feedforward_modules=list(arch.ia3_feedforward),
                       fan_in_fan_out=fan_in_fan_out, task_type="CAUSAL_LM")
    return get_peft_model(model, pc)


def build_optimizer(model, cfg: TrainConfig):
    """AdamW with per-group learning rates (method.md 3.3: CircuitLoRA's critical modules); None when
    the config has no groups (the Trainer then builds its default optimizer)."""
    if not cfg.lr_groups:
        return None
    import torch  # here: TrainConfig stays importable without torch

    groups = [{"name": g["name"], "lr": float(g["lr"]), "re": re.compile(g["pattern"]), "params": []}
              for g in cfg.lr_groups]
    rest = {"name": "default", "lr": float(cfg.learning_rate), "params": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        group = next((g for g in groups if g["re"].search(name)), rest)
        group["params"].append(p)
    empty = [g["name"] for g in groups if not g["params"]]
    if empty:
        raise UserError(f"learning-rate group {empty[0]!r} matches no trainable parameter")
    param_groups = [{"params": g["params"], "lr": g["lr"], "weight_decay": cfg.weight_decay, "name": g["name"]}
                    for g in [*groups, rest] if g["params"]]
    return torch.optim.AdamW(param_groups, lr=float(cfg.learning_rate), weight_decay=cfg.weight_decay)


def trainable_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
