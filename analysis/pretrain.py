"""A brief generic pre-training for demo models, so that checkpoint 0 is weak but not random.

No pre-trained model can be downloaded here, so the demo builds a small GPT-NeoX and teaches it a mix
of related skills: arithmetic on small numbers (both operands <= 30), counting sequences, and copying
a number. Add/Sub within 100 then starts well below its fine-tuned accuracy, as the paper's Pythia does.
The loop is plain PyTorch, readable top to bottom, and deterministic for a seed.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

PREFIX = "Calculate the result of the following arithmetic expression and provide only the final answer: "


@dataclass
class PretrainConfig:
    """Pre-training of the demo model."""

    steps: int = field(default=2000, metadata={"help": "Optimizer steps."})
    batch_size: int = field(default=32, metadata={"help": "Sequences per step."})
    learning_rate: float = field(default=1e-3, metadata={"help": "AdamW peak learning rate."})
    warmup: int = field(default=100, metadata={"help": "Linear warm-up steps, then cosine decay."})
    max_operand: int = field(default=30, metadata={"help": "Largest operand of the arithmetic lines."})
    seed: int = field(default=0, metadata={"help": "Seed of the corpus, init order and batches."})


def corpus_line(rng: random.Random, max_operand: int) -> tuple[str, str]:
    """(prompt, answer) of one random line of the mix. The answer follows the prompt directly (no
    newline): circuits and accuracy read the next token after the prompt's last token."""
    kind = rng.random()
    if kind < 0.5:
        a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
        if rng.random() < 0.5:
            return f"{PREFIX}{a} + {b} = ", str(a + b)
        a, b = max(a, b), min(a, b)
        return f"{PREFIX}{a} - {b} = ", str(a - b)
    if kind < 0.8:
        start, step = rng.randint(0, 150), rng.randint(1, 5)
        terms = [start + i * step for i in range(4)]
        return "Derive the following sequence: " + ", ".join(map(str, terms)) + ", ", str(start + 4 * step)
    x = rng.randint(0, 199)
    return f"Repeat the number: {x} = ", str(x)


def pretrain(model_dir: Path | str, out_dir: Path | str, cfg: PretrainConfig | None = None,
             device: str = "cpu", progress: bool = True) -> dict:
    """Pre-train the model in `model_dir` on the mix; save it (and its tokenizer) to `out_dir`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = cfg or PretrainConfig()
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).to(device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.warmup) * 0.5 * (
        1 + torch.cos(torch.tensor(min(1.0, s / cfg.steps) * torch.pi)).item()))
    eos = tok.eos_token_id
    it = range(cfg.steps)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc="pre-training", unit="step")
    losses = []
    for step in it:
        seqs, labels = [], []
        for _ in range(cfg.batch_size):
            prompt, answer = corpus_line(rng, cfg.max_operand)
            p = tok(prompt, add_special_tokens=False)["input_ids"]
            a = tok(answer, add_special_tokens=False)["input_ids"] + [eos]
            seqs.append(p + a)
            labels.append([-100] * len(p) + a)  # learn the answer (and to stop), as fine-tuning does
        width = max(map(len, seqs))
        ids = torch.tensor([s + [eos] * (width - len(s)) for s in seqs], device=device)
        lab = torch.tensor([s + [-100] * (width - len(s)) for s in labels], device=device)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device)
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
            "base_model": str(model_dir)}
    (out / "circuitshift_pretrain.json").write_text(json.dumps(info, indent=2))
    return info
