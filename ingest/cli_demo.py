"""`circuitshift demo`: the whole pipeline end to end on a small local model (README command 1).

1. start the local Neo4j (or use NEO4J_URI), 2. build a 4-layer GPT-NeoX with a word-level tokenizer,
3. pre-train it briefly on a generic mix so checkpoint 0 is weak but not random, 4. generate
Add/Sub(100), 5. fine-tune it with 10 checkpoints, scoring and storing every checkpoint's circuit,
6. print the summary and what to paste into Neo4j Browser. Deterministic: same seed, same numbers;
a rerun finds everything stored and only prints the summary.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

BROWSER_QUERY = """MATCH (c:Checkpoint {run: 'demo'}) WHERE c.complete WITH c ORDER BY c.step DESC LIMIT 1
MATCH (a:Component)-[e:CIRCUIT_EDGE {ck: c.uid}]->(b:Component) RETURN a, e, b"""


@click.command()
@click.option("--run-id", default="demo", show_default=True)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--pretrain-steps", type=int, default=2000, show_default=True)
@click.option("--finetune-steps", type=int, default=1500, show_default=True,
              help="Optimizer steps of fine-tuning (effective batch 32).")
@click.option("--checkpoints", type=int, default=10, show_default=True)
@click.option("--examples", type=int, default=200, show_default=True,
              help="Held-out pairs each checkpoint's circuit is scored and evaluated on.")
@click.option("--device", default=None, help="cpu or cuda (default: cuda when available).")
def demo(run_id, seed, pretrain_steps, finetune_steps, checkpoints, examples, device):
    """Run the end-to-end demo on a small local GPT-NeoX (about 6 minutes on 2 CPU cores)."""
    from analysis.checkpoint import ScoringConfig
    from analysis.pretrain import PretrainConfig, pretrain
    from analysis.tiny import build_tiny_model
    from analysis.tokenizer import build_word_tokenizer
    from ingest.cli_ingest import run_ingest_cli
    from analysis.training import TrainConfig
    from queries.server.local import default_state_dir

    state = default_state_dir()
    if not os.environ.get("NEO4J_URI"):
        from ingest.cli_db import start
        ctx = click.get_current_context()
        ctx.invoke(start, bolt_port=None, http_port=None, timeout=180.0)
    base = state / "demo" / "base"
    pretrained = state / "demo" / f"pretrained-v2-{pretrain_steps}-s{seed}"
    if not (pretrained / "config.json").exists():
        click.echo("Building a 4-layer GPT-NeoX (4 heads, d_model 128) with a word-level tokenizer...")
        tok = build_word_tokenizer(base, max_number=999, extra_words=("Repeat", "number"))
        build_tiny_model(base, arch="gpt_neox", n_layers=4, n_heads=4, d_model=128, seed=seed, tokenizer=tok)
        click.echo(f"Pre-training {pretrain_steps} steps on small-number arithmetic, counting and copying...")
        pretrain(base, pretrained, PretrainConfig(steps=pretrain_steps, seed=seed), device=device or "cpu")
    # separator " ": the word tokenizer makes "\n" a token of its own, so the paper's "prompt\nanswer"
    # would teach the model to answer "\n" after "=", which circuits and accuracy never see
    train = TrainConfig(method="full", learning_rate=1e-3, max_steps=finetune_steps, checkpoints=checkpoints,
                        seed=seed, warmup_steps=30, separator=" ")
    scoring = ScoringConfig(steps=5, batch_size=50, top_frac=0.05, max_examples=examples)
    click.echo(f"Fine-tuning on Add/Sub(100), scoring the circuit at {checkpoints + 1} checkpoints...")
    run_ingest_cli(str(pretrained), "add_sub", None, 100, None, train, scoring, run_id, device, False,
                   state_dir=state)
    from queries.settings import Neo4jSettings
    uri = Neo4jSettings().uri
    http = "http://127.0.0.1:7474/browser/"
    try:
        import json
        run = json.loads((state / "neo4j" / "run" / "server.json").read_text())
        http = f"http://127.0.0.1:{run['http_port']}/browser/"
    except (OSError, ValueError, KeyError):
        pass
    click.echo(f"\nNeo4j Browser: {http}  (connect to {uri} as neo4j; password in "
               f"{state / 'neo4j-password'} or NEO4J_PASSWORD)")
    click.echo("Paste this to see the final checkpoint's circuit, components linked to components:\n")
    click.echo(BROWSER_QUERY.replace("'demo'", repr(run_id)))
    click.echo(f"\nMore: circuitshift query churn {run_id} | circuitshift query critical-layers "
               f"{run_id}:0 {run_id}:{finetune_steps}")
