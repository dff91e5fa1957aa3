"""The main job: fine-tune a model and, at checkpoint 0 and at N evenly spaced checkpoints, score its
circuit with EAP-IG, evaluate it, and stream every scored edge into Neo4j while training goes on.

Use it from the CLI (`circuitshift ingest run`, ingest/commands/ingest.py) or add `CircuitCheckpointCallback` to your own
`transformers.Trainer` (README: "Your own Trainer").

Resumable and idempotent: the store says which checkpoints are complete; the Trainer's own checkpoints
(saved at every circuit checkpoint under `.circuitshift/runs/RUN/trainer`) hold optimizer, scheduler,
RNG and data-order state. Rerunning a run id resumes from the last saved training state and skips every
checkpoint the store already holds, so an interrupted run ends with exactly the checkpoints of an
uninterrupted one.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from analysis.checkpoint import ScoringConfig, score_checkpoint
from analysis.distributed import barrier, from_rank0, is_main_process, join_launched_group
from analysis.datasets import dataset_provenance, load_split
from analysis.errors import UserError
from analysis.graph import GraphSpec
from analysis.models import load_causal_lm, load_tokenizer
from analysis.provenance import code_version, content_hash, package_versions
from analysis.training import (CausalLMExamples, TrainConfig, build_optimizer, check_warmup, checkpoint_steps,
                               defaults_key, total_steps, trainable_parameters, wrap_for_training)
from queries.background import BackgroundWriter
from queries.components import Architecture
from queries.spool import SpoolingWriter
from queries.writer import CheckpointData, CircuitWriter, RunRecord


def architecture_of(model) -> Architecture:
    spec = GraphSpec.from_hf_config(model.config)
    return Architecture(spec.n_layers, spec.n_heads, spec.parallel_attn_mlp, spec.n_kv_heads)


class CircuitCheckpointCallback(TrainerCallback):
    """A `TrainerCallback` that, at step 0 and at each step in `steps`, scores the circuit of the model
    being trained on `pairs` (the held-out circuit split), evaluates accuracy and faithfulness, and
    writes all scored edges and metrics to Neo4j through the store's writer.

        callback = CircuitCheckpointCallback(driver, "neo4j", run, tokenizer, circuit_pairs,
                                             steps=[0, 25, 50], scoring=ScoringConfig())
        Trainer(model=model, args=args, train_dataset=ds, callbacks=[callback]).train()

    Checkpoints already complete in the store are skipped (so reruns are idempotent). At each
    circuit checkpoint it also asks the Trainer to save its state, so a rerun can resume there.
    In a distributed run (torchrun, accelerate launch) every rank scores and evaluates its shard of
    `pairs` (analysis.distributed); rank 0 alone reads the store (which steps are complete, broadcast
    to the others) and writes it, and `driver` may be None on the other ranks.
    """

    def __init__(self, driver, database: str | None, run: RunRecord, tokenizer, pairs: Sequence,
                 steps: Sequence[int], scoring: ScoringConfig | None = None, progress: bool = False,
                 on_checkpoint=None, spool_dir: str | Path | None = None, background: bool = True):
        # The store may blink during hours of training: checkpoints are spooled to disk while it is
        # unavailable and replayed when it is back (queries/spool.py); writes run off the training
        # path in a bounded background queue (queries/background.py).
        self.writer = None  # ranks other than 0 never touch the store
        if is_main_process():
            spooling = SpoolingWriter(CircuitWriter(driver, database), Path(spool_dir) if spool_dir else None,
                                      echo=lambda msg: print(msg, file=sys.stderr))
            self.writer = BackgroundWriter(spooling) if background else spooling
        self.run = run
        self.tokenizer = tokenizer
        self.pairs = list(pairs)
        self.steps = sorted(set(int(s) for s in steps))
        self.scoring = scoring or ScoringConfig()
        self.progress = progress
        self.on_checkpoint = on_checkpoint
        self._arch = None
        self._done: set[int] | None = None
        self.written: list[int] = []
        self._closed, self._left = False, []

    def _ensure(self, model):
        if self._arch is None:
            self._arch = architecture_of(model)

            def stored_steps():
                self.writer.ensure_run(self.run, self._arch)
                return sorted(self.writer.complete_steps(self.run.id))

            self._done = set(from_rank0(stored_steps))

    def _checkpoint(self, model, state, step: int) -> None:
        self._ensure(model)
        if step in self._done:
            return
        t0 = time.perf_counter()
        # every rank: the scoring's all-reduces need them all
        res = score_checkpoint(model, self.tokenizer, self.pairs, self.scoring, progress=self.progress)
        self._done.add(step)
        if self.writer is None:
            return
        loss = next((h["loss"] for h in reversed(state.log_history) if "loss" in h), None)
        meta = {**res.metrics, "epoch": float(state.epoch or 0.0), "train_loss": loss,
                "scoring": res.settings, "checkpoint_seconds": round(time.perf_counter() - t0, 3)}
        self.writer.write_checkpoint(self.run.id, self._arch, CheckpointData(
            step=step, names=res.names, scores=res.scores, in_graph=res.in_graph, level="qkv", meta=meta))
        self.written.append(step)
        if self.on_checkpoint is not None:
            self.on_checkpoint(step, meta)

    def close(self) -> list:
        """Write what is queued and replay the spool if the store is back; returns what is still
        spooled (one line each is printed by the caller). Raises a write error, never loses it."""
        if self._closed:
            return self._left
        self._closed = True
        if self.writer is None:
            return self._left
        left = self.writer.close() if hasattr(self.writer, "close") else self.writer.flush()
        self._left = list(left or [])
        return self._left

    def on_train_end(self, args, state, control, **kwargs):
        self.close()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == 0 and 0 in self.steps:
            self._checkpoint(model, state, 0)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step in self.steps:
            self._checkpoint(model, state, state.global_step)
            control.should_save = True
        return control


@dataclass
class IngestConfig:
    """Everything one ingest run depends on (its hash guards reruns of the same run id)."""

    model: str = field(metadata={"help": "HF hub name or local model folder."})
    data: str = field(metadata={"help": "Dataset folder (finetune.csv + circuit.csv + manifest)."})
    run_id: str = field(metadata={"help": "Name of the run in the store."})
    train: TrainConfig = field(default_factory=TrainConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    task: str | None = field(default=None, metadata={"help": "Task name (for per-task defaults)."})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, ...; default: cuda if any."})
    state_dir: str = field(default=".circuitshift", metadata={"help": "Where training state is kept."})

    def resolved_dict(self) -> dict:
        d = asdict(self)
        d.pop("state_dir")
        d.pop("device")
        d["scoring"] = self.scoring.record()
        return d


def load_for_training(name: str, device: str):
    """(model, tokenizer, info) to train: any source the one loader accepts (a folder, a .gguf file, a
    shipped model, a hub name), in float32, with the revision (weights or GGUF sha256) in ``info``."""
    return load_causal_lm(name, dtype="float32", device=device, trainable=True)


def run_ingest(cfg: IngestConfig, driver, database: str | None, progress: bool = True,
               echo=print, extra_callbacks: Sequence = ()) -> dict:
    """Fine-tune, scoring the circuit at every checkpoint into the store. Returns the summary.
    `extra_callbacks`: more TrainerCallbacks, run after the circuit callback (e.g. weight snapshots).

    Under a launcher (torchrun, accelerate launch) each process runs this with the same config: DDP
    training as the Trainer does it, each checkpoint scored in shards; only rank 0 touches the store
    (`driver` may be None on the others) and echoes."""
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    shard = join_launched_group(device)
    if shard.world > 1 and device == "cuda":  # one GPU per process (join_launched_group selected it)
        device = f"cuda:{torch.cuda.current_device()}"
    main = shard.rank == 0
    if not main:
        echo = _silent
    data = Path(cfg.data)
    if not data.is_dir():
        raise UserError(f"dataset folder {data} does not exist (make one with `circuitshift data make`)")
    train_pairs, circuit_pairs = load_split(data, "finetune"), load_split(data, "circuit")
    manifest = dataset_provenance(data)
    task = cfg.task or manifest.get("task")
    defaults = cfg.task or defaults_key(manifest.get("task"), manifest.get("params"))
    train_cfg = cfg.train.resolved(defaults)
    total = total_steps(train_cfg, len(train_pairs))
    steps = checkpoint_steps(total, train_cfg.checkpoints)
    check_warmup(train_cfg.warmup_steps, total)

    torch.manual_seed(train_cfg.seed)
    model, tokenizer, model_info = load_for_training(cfg.model, device)
    examples = CausalLMExamples(train_pairs, tokenizer, train_cfg.max_length, train_cfg.separator,
                                train_cfg.bos)
    model = wrap_for_training(model, train_cfg, total)
    trainable, n_params = trainable_parameters(model)
    resolved = {**cfg.resolved_dict(), "train": train_cfg.record(), "total_steps": total,
                "checkpoint_steps": steps, "dataset_hash": manifest.get("content_hash")}
    run = RunRecord(
        id=cfg.run_id, model=cfg.model, revision=model_info.revision, task=task or "",
        dataset_hash=manifest.get("content_hash_now") or manifest.get("content_hash", ""),
        data_split="finetune -> training; circuit -> scoring and accuracy", method=train_cfg.method,
        hparams={**train_cfg.record(), "total_steps": total, "max_length": examples.max_length,
                 "task_defaults": defaults,
                 "trainable_parameters": trainable, "total_parameters": n_params,
                 "parameter_ratio": trainable / n_params},  # trainable / (base + trainable), method.md 3.2
        seed=train_cfg.seed, code_version=code_version(),
        extra={"scoring": cfg.scoring.record(), "checkpoint_steps": steps, "dataset": manifest,
               "model_source": model_info.as_dict(),
               "packages": package_versions(), "device": device, "data_path": str(data),
               **({"processes": shard.world} if shard.world > 1 else {})},
        config_hash=content_hash(resolved))

    out_dir = Path(cfg.state_dir) / "runs" / cfg.run_id / "trainer"
    out_dir.mkdir(parents=True, exist_ok=True)
    if main:
        (out_dir.parent / "config.json").write_text(json.dumps(resolved, indent=2, default=str))

    def report(step, meta):
        echo(f"checkpoint {step:>5}: accuracy {meta['accuracy']:.1f}%  faithfulness "
             f"{meta['faithfulness']:.1f}%  circuit {meta['n_circuit_edges']} edges / "
             f"{meta['n_circuit_nodes']} nodes  ({meta['checkpoint_seconds']:.1f} s)")

    callback = CircuitCheckpointCallback(driver, database, run, tokenizer, circuit_pairs, steps,
                                         cfg.scoring, progress=progress, on_checkpoint=report,
                                         spool_dir=Path(cfg.state_dir) / "spool")
    args = TrainingArguments(
        output_dir=str(out_dir), per_device_train_batch_size=train_cfg.batch_size,
        gradient_accumulation_steps=train_cfg.grad_accum, learning_rate=train_cfg.learning_rate,
        weight_decay=train_cfg.weight_decay, warmup_steps=train_cfg.warmup_steps,
        max_steps=total, lr_scheduler_type="linear", logging_steps=max(1, total // 50),
        save_strategy="no", save_total_limit=2, seed=train_cfg.seed, data_seed=train_cfg.seed,
        report_to=[], use_cpu=(device == "cpu"), disable_tqdm=not progress, dataloader_num_workers=0,
        remove_unused_columns=False, fp16=False, bf16=False,
        ddp_backend="gloo" if shard.world > 1 and device == "cpu" else None)  # DDP on CPU needs gloo
    callbacks = [callback, *extra_callbacks] + ([AdaLoraAllocator()] if train_cfg.method == "adalora" else [])
    # CircuitLoRA: AdamW parameter groups with per-group learning rates (method.md 3.3); else the default
    trainer = Trainer(model=model, args=args, train_dataset=examples, callbacks=callbacks,
                      optimizers=(build_optimizer(model, train_cfg), None))
    _quiet_logs(trainer, progress)
    _save_config_with_checkpoints(trainer, resolved)

    def stored_state():
        # a rerun of this run id with other settings is refused now, before any training or resuming
        CircuitWriter(driver, database).ensure_run(run, architecture_of(model))
        return last_complete_checkpoint(out_dir), sorted(CircuitWriter(driver, database).complete_steps(cfg.run_id))

    last, done = from_rank0(stored_state)  # rank 0 reads the store and the saved state; all ranks act on it
    done = set(done)
    if last is None and done and done != {0}:
        echo(f"run {cfg.run_id}: store has steps {sorted(done)} but no saved training state; "
             "retraining from step 0 (stored checkpoints are kept, not rescored)")
    if set(steps) <= done:
        echo(f"run {cfg.run_id}: all {len(steps)} checkpoints already stored")
    else:
        if last:
            echo(f"resuming run {cfg.run_id} from {Path(last).name}")
            if train_cfg.method == "full":
                _load_full_weights(model, last)
        trainer.train(resume_from_checkpoint=last)
    for entry in callback.close():  # what the store could not take yet stays in the spool
        echo(f"still spooled (the store was unavailable): run {entry.run} step {entry.step}: {entry.path}; "
             f"replay with `circuitshift ingest replay {entry.run}`")
    return {"run": cfg.run_id, "steps": steps, "written": callback.written, "total_steps": total,
            "trainable_parameters": trainable, "total_parameters": n_params,
            "parameter_ratio": trainable / n_params, "device": device}


def _silent(*args, **kwargs) -> None:
    """The echo of ranks other than 0: rank 0 speaks for the run."""


class AdaLoraAllocator(TrainerCallback):
    """AdaLoRA's rank allocation: `update_and_allocate(global_step)` after every optimizer step, before
    the gradients are zeroed (method.md 3.4; peft's documented training loop)."""

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        target = model.base_model if hasattr(model, "base_model") else model
        if hasattr(target, "update_and_allocate"):
            target.update_and_allocate(state.global_step)


def _load_full_weights(model, checkpoint: str) -> None:
    """Load a fully fine-tuned checkpoint's weights through `from_pretrained`.

    transformers 5.23 saves GPT-NeoX's `lm_head` as `embed_out.weight` (its legacy name) but the
    Trainer's resume loads the file without that renaming, reports the key as unexpected and leaves
    `lm_head` at its initial weights: the resumed run silently diverges (measured: 2.6e-3 max weight
    difference after 4 steps). `from_pretrained` applies the renaming, so we load through it; the
    Trainer's own load then rewrites every other weight with the same values.
    """
    restored = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    model.load_state_dict(restored.state_dict())
    del restored


def last_complete_checkpoint(out_dir: Path) -> str | None:
    """The newest Trainer checkpoint that was saved whole (our config file is written after the save,
    in `on_save`); partial ones left by a kill are removed."""
    best = None
    for ck in sorted(out_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])):
        if (ck / "circuitshift_config.json").exists():
            best = ck
        else:
            shutil.rmtree(ck, ignore_errors=True)
    return str(best) if best else None


def export_model(state_dir: Path | str, run_id: str, out: Path | str) -> dict:
    """Write RUN's fine-tuned model, from its final saved training state with LoRA (AdaLoRA, IA3)
    adapters merged, as a plain model folder with the base model's tokenizer: what `circuitshift
    robustness --model finetuned=OUT` loads. Returns what was written."""
    run_dir = Path(state_dir) / "runs" / run_id
    if not (run_dir / "config.json").exists():
        raise UserError(f"no training state for run {run_id!r} under {Path(state_dir)}; was it trained here?")
    config = json.loads((run_dir / "config.json").read_text())
    last = last_complete_checkpoint(run_dir / "trainer")
    step = int(Path(last).name.split("-")[1]) if last else None
    if step != config["total_steps"]:
        raise UserError(f"run {run_id!r} has no saved final training state (step {config['total_steps']}); "
                        "finish it with `circuitshift ingest run` first")
    method = config["train"]["method"]
    if method == "full":  # the checkpoint is the whole model
        model = AutoModelForCausalLM.from_pretrained(last, dtype=torch.float32)
    else:
        base, _, _ = load_causal_lm(config["model"], dtype="float32", trainable=True)
        model = PeftModel.from_pretrained(base, last).merge_and_unload()
    tokenizer = load_tokenizer(config["model"])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    info = {"run": run_id, "step": step, "method": method, "base_model": config["model"], "out": str(out)}
    (out / "circuitshift_export.json").write_text(json.dumps(info, indent=2))
    return info


def _quiet_logs(trainer, progress: bool) -> None:
    """Keep the loss in `log_history` (stored with each checkpoint) without printing every log dict."""
    class _BarOnly(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            pass

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if progress:
        trainer.add_callback(_BarOnly())


def _save_config_with_checkpoints(trainer, resolved: dict) -> None:
    """nanoGPT's habit: the resolved config travels inside every saved checkpoint."""
    class _SaveConfig(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            barrier()  # every rank's part of the checkpoint (its RNG state) is saved before it is whole
            ck = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if is_main_process() and ck.is_dir():
                (ck / "circuitshift_config.json").write_text(json.dumps(resolved, indent=2, default=str))

    trainer.add_callback(_SaveConfig())
