"""Tiny fine-tuning runs written by the real producer (`ingest.jobs.finetune.run_ingest`), for the tests of what
reads the store (summary, report, figures, queries): the numbers are whatever the job stored, in its
units, never a hand-made fixture.

A random tiny model gets ~0% accuracy, which reads the same as a fraction and as a percentage. So
`known_accuracy_data` relabels half of the circuit rows with the untrained model's own next token: the
stored step-0 accuracy must then equal the percentage computed here independently (about 50, which a
fraction can never be).
"""

from __future__ import annotations

from pathlib import Path

from analysis.checkpoint import ScoringConfig
from analysis.training import TrainConfig

EXAMPLES = 16  # circuit-split rows each checkpoint is scored on


def tiny_model(root: Path) -> Path:
    from analysis.tiny import build_tiny_model
    return build_tiny_model(root / "model", arch="gpt_neox", n_layers=2, n_heads=2, d_model=32, seed=0)


def predicted(model_dir: Path, prompts: list[str]) -> list[str]:
    """The model's argmax next token after BOS + prompt, decoded and stripped (method.md 1.9)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for p in prompts:
            ids = [tok.bos_token_id] + tok(p, add_special_tokens=False)["input_ids"]
            out.append(tok.decode([int(model(torch.tensor([ids])).logits[0, -1].argmax())]).strip())
    return out


def known_accuracy_data(model_dir: Path, out: Path, **spec) -> float:
    """An Add/Sub dataset whose first EXAMPLES circuit rows the untrained model gets right for about
    half; returns its exact step-0 accuracy in percent."""
    from analysis.datasets import load_split, pairs_csv_text
    from analysis.tasks.build import DatasetSpec, make_dataset

    make_dataset(DatasetSpec(task="add_sub", tokenizer=model_dir, out=out, n=100, count=200, **spec))
    pairs = load_split(out, "circuit")
    guesses = predicted(model_dir, [p.clean for p in pairs[:EXAMPLES]])
    for i, g in enumerate(guesses[: EXAMPLES // 2]):
        if g:
            pairs[i] = type(pairs[i])(pairs[i].clean, pairs[i].corrupted, g, pairs[i].corrupted_label)
    (out / "circuit.csv").write_text(pairs_csv_text(pairs))
    right = sum(g == p.label.strip() for g, p in zip(guesses, pairs[:EXAMPLES]))
    return 100.0 * right / EXAMPLES


def ingest_config(model, data, root, run_id, *, method="lora", max_steps=4, checkpoints=2, **scoring):
    from ingest.jobs.finetune import IngestConfig
    train = TrainConfig(method=method, rank=2, learning_rate=5e-3, max_steps=max_steps, checkpoints=checkpoints,
                        batch_size=8, grad_accum=1, warmup_steps=1, seed=3)
    score = ScoringConfig(**{"steps": 2, "batch_size": 16, "max_examples": EXAMPLES, "top_frac": 0.3, **scoring})
    return IngestConfig(model=str(model), data=str(data), run_id=run_id, train=train, scoring=score,
                        device="cpu", state_dir=str(root / "state"))


def ingest(driver, database, model, data, root, run_id, **kw) -> dict:
    from ingest.jobs.finetune import run_ingest
    return run_ingest(ingest_config(model, data, root, run_id, **kw), driver, database, progress=False,
                      echo=lambda *_: None)
