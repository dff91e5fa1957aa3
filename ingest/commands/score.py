"""`circuitshift score`: EAP / EAP-IG scores of every edge of a model's graph, written as JSON (the job:
ingest/jobs/score.py, loaded with torch only when the command runs)."""

from __future__ import annotations

from pathlib import Path

import click

METHOD_NAMES = "eap, eap-ig-inputs, eap-ig-activations, clean-corrupted"


@click.command("score")
@click.option("--model", "model_path", required=True,
              help="Local model folder, .gguf file, shipped model (smollm2) or HF hub name ORG/NAME.")
@click.option("--data", "data_path", required=True, type=click.Path(path_type=Path),
              help="Dataset folder (its circuit split) or a CSV with clean,corrupted,label[,corrupted_label].")
@click.option("--method", default="eap-ig-inputs", show_default=True, help=f"One of: {METHOD_NAMES}.")
@click.option("--steps", type=int, default=None, help="IG steps m (IG methods; default 5).")
@click.option("--ig-rule", default=None,
              help="right: k = 1..m (the paper's code; the default); left: k = 0..m-1 (hannamw/EAP-IG).")
@click.option("--metric", default="kl", show_default=True, help="kl (vocabulary mean) or logit-diff.")
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--split", default="circuit", show_default=True, help="Split of a dataset folder.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", default="float32", show_default=True, help="float32, float64, float16 or bfloat16.")
@click.option("--out", "out_path", required=True, type=click.Path(path_type=Path), help="Output FILE.json.")
@click.option("--compat", default=None,
              help="hannamw: hannamw/EAP-IG 795f560's exact numbers (batch-mean metric, its IG rules and "
                   "eap-ig-activations aggregation); default: circuitshift's per-example scores.")
@click.option("--backend", default="native", show_default=True,
              help="native (hooks on the HF model) or transformer-lens (TransformerBridge hooks; also scores "
                   "qwen2 and gemma).")
@click.option("--chunk", type=int, default=None,
              help="Score each batch in micro-batches of at most N examples (same scores, less memory); default: "
                   "the largest that fits the GPU's free memory by the printed estimate (the whole batch on the CPU).")
@click.option("--mib", is_flag=True,
              help="Also MIB's CPR and CMD of the scores (analysis.mib, under --metric): printed and in FILE.json.")
@click.option("--quiet", is_flag=True, help="No memory estimate or progress bar.")
def score(model_path, data_path, method, steps, ig_rule, metric, batch_size, split, device, dtype, out_path, quiet,
          compat, backend, chunk, mib):
    """Score every edge of MODEL's graph on DATA's prompt pairs and write FILE.json."""
    from ingest.jobs.score import ScoreRequest, score_to_file
    score_to_file(ScoreRequest(model_path=model_path, data_path=data_path, out_path=out_path, method=method,
                               steps=steps, ig_rule=ig_rule, metric=metric, batch_size=batch_size, split=split,
                               device=device, dtype=dtype, quiet=quiet, compat=compat, backend=backend,
                               chunk=chunk, mib=mib))
