"""A brief generic pre-training for demo models, so that checkpoint 0 is weak but not random.

No pre-trained model can be downloaded here, so the demo builds a small GPT-NeoX and teaches it a mix
of related skills, one kind per batch:

* `task`: the task's own format on small numbers only (`PREFIX a + b =`, operands <= 30);
* `words`: the same arithmetic over the whole range in other words (`41 plus 29 is` -> 70), short
  lines without the task's prefix: the skill is there, but not in the task's format;
* `sequence`: counting sequences; `copy`: repeating a number.

Add/Sub within 100 in the task's format then starts well below its fine-tuned accuracy, as the paper's
Pythia does, and fine-tuning has something to build on. Lines of one kind have similar lengths, so a
batch of short lines costs a fraction of a long one. The loop is plain PyTorch, readable top to bottom,
and deterministic for a seed and a thread count.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

PREFIX = "Calculate the result of the following arithmetic expression and provide only the final answer: "
WORDS = ("plus", "minus", "is", "Repeat", "number")  # vocabulary the mix needs beyond the task templates
KINDS = ("task", "words", "sequence", "copy")


@dataclass
class PretrainConfig:
    """Pre-training of the demo model."""

    steps: int = field(default=2000, metadata={"help": "Optimizer steps."})
    batch_size: int = field(default=32, metadata={"help": "Sequences per step."})
    learning_rate: float = field(default=1e-3, metadata={"help": "AdamW peak learning rate."})
    warmup: int = field(default=100, metadata={"help": "Linear warm-up steps, then cosine decay."})
    max_operand: int = field(default=30, metadata={"help": "Largest operand in the task's own format."})
    words_max: int = field(default=100, metadata={"help": "Largest operand of the `words` lines."})
    mix: tuple = field(default=(0.3, 0.4, 0.15, 0.15), metadata={"help": "Share of each kind (KINDS)."})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay."})
    bos: bool = field(default=True, metadata={
        "help": "Start every line with BOS, as circuits and accuracy read prompts (method.md 1.9)."})
    seed: int = field(default=0, metadata={"help": "Seed of the corpus, init order and batches."})


def _add_or_sub(rng: random.Random, top: int) -> tuple[int, str, int, int]:
    a, b = rng.randint(0, top), rng.randint(0, top)
    if rng.random() < 0.5:
        return a, "+", b, a + b
    a, b = max(a, b), min(a, b)
    return a, "-", b, a - b


def corpus_line(rng: random.Random, kind: str, cfg: PretrainConfig) -> tuple[str, str]:
    """(prompt, answer) of one line of `kind`. The answer follows the prompt directly (no newline):
    circuits and accuracy read the next token after the prompt's last token."""
    if kind == "task":
        a, op, b, v = _add_or_sub(rng, cfg.max_operand)
        return f"{PREFIX}{a} {op} {b} = ", str(v)
    if kind == "words":
        a, op, b, v = _add_or_sub(rng, cfg.words_max)
        return f"{a} {'plus' if op == '+' else 'minus'} {b} is ", str(v)
    if kind == "sequence":
        start, step = rng.randint(0, 150), rng.randint(1, 5)
        terms = [start + i * step for i in range(4)]
        return "Derive the following sequence: " + ", ".join(map(str, terms)) + ", ", str(start + 4 * step)
    x = rng.randint(0, 199)
    return f"Repeat the number: {x} = ", str(x)


def _batch(tok, lines: list[tuple[str, str]], bos: bool, device: str):
    """input_ids, labels (answer and one EOS, as fine-tuning) and attention mask, right-padded."""
    import torch

    eos = tok.eos_token_id
    seqs, labels = [], []
    for prompt, answer in lines:
        p = [tok.bos_token_id] * bos + tok(prompt, add_special_tokens=False)["input_ids"]
        a = tok(answer, add_special_tokens=False)["input_ids"] + [eos]
        seqs.append(p + a)
        labels.append([-100] * len(p) + a)
    width = max(map(len, seqs))
    pad = lambda rows, v: torch.tensor([r + [v] * (width - len(r)) for r in rows], device=device)  # noqa: E731
    return pad(seqs, eos), pad(labels, -100), pad([[1] * len(s) for s in seqs], 0)


def pretrain(model_dir: Path | str, out_dir: Path | str, cfg: PretrainConfig | None = None,
             device: str = "cpu", progress: bool = True) -> dict:
    """Pre-train the model in `model_dir` on the mix; save it (and its tokenizer) to `out_dir`."""
    import math

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = cfg or PretrainConfig()
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).to(device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.warmup) * 0.5 * (
        1 + math.cos(min(1.0, s / cfg.steps) * math.pi)))
    it = range(cfg.steps)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc="pre-training", unit="step")
    losses = []
    for step in it:
        kind = rng.choices(KINDS, weights=cfg.mix)[0]
        ids, lab, mask = _batch(tok, [corpus_line(rng, kind, cfg) for _ in range(cfg.batch_size)], cfg.bos, device)
        loss = model(input_ids=ids, attention_mask=mask, labels=lab).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if progress and step % 50 == 0:
            it.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.3f}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    info = {"pretrain": asdict(cfg), "final_loss": sum(losses[-50:]) / max(1, len(losses[-50:])),
            "base_model": str(model_dir), "torch_threads": torch.get_num_threads()}
    (out / "circuitshift_pretrain.json").write_text(json.dumps(info, indent=2))
    return info
