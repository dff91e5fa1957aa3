"""GPU check of the ingest path without a database: LoRA fine-tuning with the HF Trainer on `cuda`, the
circuit of checkpoints 0, N/2 and N scored mid-training through `score_checkpoint`, and the check that
scoring leaves the weights being trained bit-for-bit unchanged (peft merge/unmerge + restore).

    python scripts/gpu_check.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments

    from analysis.checkpoint import ScoringConfig, score_checkpoint
    from analysis.tasks.build import DatasetSpec, make_dataset
    from analysis.datasets import load_split
    from analysis.tiny import build_tiny_model
    from analysis.training import CausalLMExamples, TrainConfig, wrap_for_training

    tmp = Path(tempfile.mkdtemp())
    model_dir = build_tiny_model(tmp / "m", n_layers=4, n_heads=4, d_model=128, seed=0)
    make_dataset(DatasetSpec(task="add_sub", tokenizer=model_dir, out=tmp / "d", n=100, count=1000))
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).to(args.device)
    cfg = TrainConfig(method="lora", rank=8, learning_rate=2e-3, max_steps=args.steps, checkpoints=2)
    model = wrap_for_training(model, cfg, args.steps)
    circuit = load_split(tmp / "d", "circuit")[:128]
    results = []

    class Check(TrainerCallback):
        def _score(self, model, step):
            before = {n: p.detach().clone() for n, p in model.named_parameters()}
            t = time.perf_counter()
            res = score_checkpoint(model, tok, circuit, ScoringConfig(batch_size=64, top_frac=0.05))
            exact = all(torch.equal(before[n], p) for n, p in model.named_parameters())
            grads = [n for n, p in model.named_parameters() if p.requires_grad]
            results.append({"step": step, "seconds": round(time.perf_counter() - t, 2),
                            "accuracy": res.metrics["accuracy"], "faithfulness": res.metrics["faithfulness"],
                            "weights_restored_exactly": exact, "trainable_after": len(grads),
                            "device": str(next(model.parameters()).device)})

        def on_train_begin(self, a, state, control, model=None, **kw):
            self._score(model, 0)

        def on_step_end(self, a, state, control, model=None, **kw):
            if state.global_step in (args.steps // 2, args.steps):
                self._score(model, state.global_step)

    targs = TrainingArguments(output_dir=str(tmp / "o"), per_device_train_batch_size=32, max_steps=args.steps,
                              learning_rate=cfg.learning_rate, save_strategy="no", report_to=[],
                              use_cpu=args.device == "cpu", disable_tqdm=True, logging_steps=10)
    Trainer(model=model, args=targs, train_dataset=CausalLMExamples(load_split(tmp / "d", "finetune"), tok),
            callbacks=[Check()]).train()
    print(json.dumps(results, indent=1))
    assert all(r["weights_restored_exactly"] for r in results)


if __name__ == "__main__":
    main()
