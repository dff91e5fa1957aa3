"""`circuitshift demo`: the whole pipeline end to end on a small local model (README command 1).

1. start the local Neo4j (or use NEO4J_URI), 2. build a 4-layer GPT-NeoX with a word-level tokenizer
that splits numbers into digits, 3. pre-train it briefly on a generic mix so checkpoint 0 is weak but
not random (analysis/pretrain.py), 4. generate Add/Sub(100), 5. fully fine-tune it with 10
checkpoints, scoring and storing every checkpoint's circuit, 6. print the summary and what to paste
into Neo4j Browser.

Digits, not one token per number: with a token per number, a+b is a lookup over 10,000 pairs that a
4-layer model does not learn in the time a demo has (measured: 26-43% held-out after 1,500 steps);
digit by digit it is an algorithm it learns (measured: 3.5% -> 97% in 1,800 steps). Answers are then
1-3 tokens, scored teacher-forced over the answer positions (analysis/adapter.py).

Deterministic on one machine: seeds everywhere, one torch thread (`--threads`) and PyTorch's
deterministic algorithms, so a rerun with a fresh state folder prints the same numbers; a rerun with the
same state finds everything stored and only prints the summary.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, replace
from pathlib import Path

import click
import torch

from analysis.checkpoint import ScoringConfig
from analysis.errors import UserError
from analysis.pretrain import WORDS, PretrainConfig, pretrain
from analysis.provenance import content_hash
from analysis.tasks.build import DatasetSpec, make_dataset
from analysis.tiny import build_tiny_model
from analysis.tokenizer import build_word_tokenizer
from analysis.training import TrainConfig
from ingest.jobs.local_server import start_local_server
from ingest.jobs.real_demo import RealDemoConfig, run_real_demo
from ingest.jobs.summary import ingest_and_summarise
from queries.cypher.guide import LATEST_CIRCUIT
from queries.server.local import default_state_dir
from queries.settings import Neo4jSettings

DEMO_COUNT = 4000  # Add/Sub(100) pairs whose clean and corrupted answers have equal digit counts


def deterministic(threads: int) -> None:
    """Same numbers on every run on one machine: a fixed thread count (the default count is the
    machine's core count, and float sums depend on how work is split) and deterministic kernels."""
    if threads < 1:
        raise UserError(f"--threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


def run_demo(run_id: str, seed: int, pretrain_steps: int, finetune_steps: int, checkpoints: int,
             examples: int, top_n: int, threads: int, device: str | None, bolt_port: int | None,
             http_port: int | None) -> None:
    """The small local model's demo, steps 1-6 of the module docstring."""
    t0 = time.perf_counter()
    deterministic(threads)
    # separator " ": the word tokenizer makes "\n" a token of its own, so the paper's "prompt\nanswer"
    # would teach the model to answer "\n" after "=", which circuits and accuracy never see; BOS: the
    # prompts circuits and accuracy read start with it (method.md 1.9)
    train = TrainConfig(method="full", learning_rate=2e-3, max_steps=finetune_steps, checkpoints=checkpoints,
                        batch_size=32, grad_accum=1, seed=seed, warmup_steps=30, weight_decay=0.5,
                        separator=" ", bos=True)
    scoring = ScoringConfig(steps=5, batch_size=50, top_n=top_n, max_examples=examples)
    state = default_state_dir()
    if not os.environ.get("NEO4J_URI"):
        start_local_server(bolt_port, http_port, timeout=180.0)
    pretrained = pretrained_model(state / "demo", pretrain_steps, seed, threads, device or "cpu")
    data = demo_data(pretrained)
    click.echo(f"Fine-tuning on Add/Sub(100), scoring the circuit at {checkpoints + 1} checkpoints...")
    ingest_and_summarise(str(pretrained), None, data, None, None, train, scoring, run_id, device, False,
                         state_dir=state)
    browser_hint(state, run_id, finetune_steps)
    click.echo(f"\ndemo finished in {time.perf_counter() - t0:.0f} s ({threads} torch thread(s))")


def run_real_model_demo(model: str, seed: int, given: dict, threads: int | None, device: str | None,
                        bolt_port: int | None, http_port: int | None) -> None:
    """`demo --model M`: jobs/real_demo.py with its defaults, except the options `given` explicitly
    (run_id, finetune_steps, checkpoints, examples); torch threads fixed only when given (a 135M model
    wants every core)."""
    t0 = time.perf_counter()
    deterministic(threads if threads is not None else torch.get_num_threads())
    cfg = replace(RealDemoConfig(model=model, seed=seed,
                                 run_id=f"demo-{Path(model).stem.split('.')[0].lower()}"), **given)
    if not os.environ.get("NEO4J_URI"):
        start_local_server(bolt_port, http_port, timeout=180.0)
    state = default_state_dir()
    run_real_demo(cfg, device, state)
    browser_hint(state, cfg.run_id, cfg.finetune_steps)
    click.echo(f"\ndemo finished in {time.perf_counter() - t0:.0f} s")


def pretrained_model(root: Path, steps: int, seed: int, threads: int, device: str) -> Path:
    """The demo's pre-trained model, built once per recipe (cached under `root`)."""
    cfg = PretrainConfig(steps=steps, seed=seed)
    recipe = {"pretrain": asdict(cfg), "threads": threads, "device": device, "recipe": 3, "digits": True}
    key = content_hash(recipe)[:12]
    out = root / f"pretrained-{key}"
    if not (out / "config.json").exists():
        base = root / f"base-{key}"
        click.echo("Building a 4-layer GPT-NeoX (4 heads, d_model 128) with a word-level, digit-splitting "
                   "tokenizer...")
        tok = build_word_tokenizer(base, max_number=9, extra_words=WORDS)
        build_tiny_model(base, arch="gpt_neox", n_layers=4, n_heads=4, d_model=128, seed=seed, tokenizer=tok)
        click.echo(f"Pre-training {steps} steps on small-number arithmetic, arithmetic in words, counting "
                   "and copying...")
        pretrain(base, out, cfg, device=device)
    return out


def demo_data(model: Path) -> Path:
    """Add/Sub(100) for the model's tokenizer (answers of any token length), generated once."""
    out = model.parent / f"data-{model.name}"
    if not (out / "manifest.json").exists():
        make_dataset(DatasetSpec(task="add_sub", tokenizer=model, out=out, n=100, count=DEMO_COUNT,
                                 answer_tokens="any", overwrite=True))
    return out


def browser_hint(state: Path, run_id: str, last_step: int) -> None:
    """Where Browser is and the query that shows the final circuit."""
    uri = Neo4jSettings().uri
    http = "http://127.0.0.1:7474/browser/"
    try:
        run = json.loads((state / "neo4j" / "run" / "server.json").read_text())
        http = f"http://127.0.0.1:{run['http_port']}/browser/"
    except (OSError, ValueError, KeyError):
        pass
    click.echo(f"\nNeo4j Browser: {http}  (connect to {uri} as neo4j; password in "
               f"{state / 'neo4j-password'} or NEO4J_PASSWORD)")
    click.echo("Paste this to see the final checkpoint's circuit, components linked to components:\n")
    click.echo(LATEST_CIRCUIT.replace("$run", repr(run_id)))
    click.echo(f"\nMore: circuitshift query churn {run_id} | circuitshift query critical-layers "
               f"{run_id}:0 {run_id}:{last_step}")
