"""The paper's fine-tuning defaults (method.md 3.1-3.4) reach the runs: per-task epochs and learning
rates for every Add/Sub range and the compositional subtasks, rank-specific LoRA rates, AdaLoRA's own
schedule, lr and epochs, and a warm-up that is applied as given."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli
from ingested import ingest_config, tiny_model
from analysis.errors import UserError
from analysis.training import TrainConfig, adalora_schedule, defaults_key


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("defaults")
    return tiny_model(root), root


def _hparams(driver, database, run_id) -> dict:
    recs, _, _ = driver.execute_query("MATCH (r:Run {id: $id}) RETURN r.hparams AS hp", {"id": run_id},
                                      database_=database)
    return json.loads(recs[0]["hp"])


@pytest.mark.parametrize("task, params, key", [
    ("add_sub", {"n": 200}, "add_sub_200"), ("add_sub", {"n": 500}, "add_sub_500"), ("add_sub", {}, "add_sub_100"),
    ("compositional_add_sub", {}, "compositional"), ("compositional_mul_div", {}, "compositional"),
    ("mul_div", {}, "mul_div"), ("ioi", {}, "ioi")])
def test_defaults_key_of_every_task(task, params, key):
    assert defaults_key(task, params) == key


def test_add_sub_200_run_trains_four_epochs_at_its_rates(db, tiny, tmp_path):
    """The manifest says add_sub with n=200: 4 epochs (not the fallback 2), LoRA 3e-4, full FT 6e-6."""
    from analysis.tasks.build import DatasetSpec, make_dataset
    from ingest.jobs.finetune import run_ingest

    driver, database = db
    model, root = tiny
    data = tmp_path / "data200"
    make_dataset(DatasetSpec(task="add_sub", tokenizer=model, out=data, n=200, count=60))
    for method, lr in (("lora", 3e-4), ("full", 6e-6)):
        cfg = ingest_config(model, data, tmp_path, f"as200-{method}", method=method, max_steps=None, checkpoints=1)
        cfg.train.learning_rate = None
        out = run_ingest(cfg, driver, database, progress=False, echo=lambda *_: None)
        hp = _hparams(driver, database, f"as200-{method}")
        # 48 fine-tuning rows / batch 8 = 6 steps per epoch, 4 epochs
        assert (hp["epochs"], hp["learning_rate"], hp["task_defaults"]) == (4, lr, "add_sub_200")
        assert out["total_steps"] == hp["total_steps"] == 24


def test_rank_specific_learning_rates():
    lr = lambda task, **kw: TrainConfig(**kw).resolved(task).learning_rate  # noqa: E731
    assert lr("add_sub_400", rank=32) == 2e-4 and lr("add_sub_400", rank=16) == 3e-4
    assert [lr("lcm", rank=r) for r in (2, 8, 16, 32)] == [3e-4, 3e-4, 4e-4, 2e-4]
    assert lr("add_sub_400", method="full") == 5e-6 and lr("lcm", method="full") == 4e-6
    # CircuitLoRA's base rate is the non-critical modules' 3e-4, whatever its r_o
    assert lr("lcm", rank=16, rank_pattern={"x": 32}) == 3e-4


def test_adalora_defaults_and_schedule():
    cfg = TrainConfig(method="adalora").resolved("add_sub_100")
    assert (cfg.learning_rate, cfg.epochs, cfg.warmup_steps, cfg.rank) == (8e-3, 8, 25, 32)
    assert TrainConfig(method="ia3").resolved("sequence").epochs == 2
    # the notebook's 1120-step run: tinit 25, deltaT 50; tfinal 1100 leaves no budgeting phase (peft
    # refuses it), shortened to leave one deltaT
    assert adalora_schedule(1120) == {"tinit": 25, "tfinal": 1045, "deltaT": 50, "total_step": 1120}
    assert adalora_schedule(2240) == {"tinit": 50, "tfinal": 2090, "deltaT": 100, "total_step": 2240}
    with pytest.raises(UserError, match="AdaLoRA needs at least 3 training steps"):
        adalora_schedule(2)


def test_adalora_reaches_its_target_rank(tiny, tmp_path):
    """Trained with the job's allocator callback, AdaLoRA ends at target_r = r/2 per module on average."""
    import torch
    from transformers import Trainer, TrainingArguments

    from analysis.datasets import load_split
    from analysis.tasks.build import DatasetSpec, make_dataset
    from analysis.training import CausalLMExamples, wrap_for_training
    from ingest.jobs.finetune import AdaLoraAllocator, load_for_training

    model_dir, _ = tiny
    make_dataset(DatasetSpec(task="add_sub", tokenizer=model_dir, out=tmp_path / "d", n=100, count=60))
    model, tok, _ = load_for_training(str(model_dir), "cpu")
    total = 12
    cfg = TrainConfig(method="adalora", rank=4, max_steps=total, checkpoints=1).resolved("add_sub_100")
    wrapped = wrap_for_training(model, cfg, total)
    pc = wrapped.peft_config["default"]
    assert (pc.init_r, pc.target_r) == (4, 2) and (pc.tinit, pc.tfinal, pc.deltaT) == (1, 10, 1)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, max_steps=total,
                             learning_rate=cfg.learning_rate, warmup_steps=1, report_to=[], use_cpu=True,
                             save_strategy="no", disable_tqdm=True, remove_unused_columns=False)
    Trainer(model=wrapped, args=args, train_dataset=CausalLMExamples(load_split(tmp_path / "d", "finetune"), tok),
            callbacks=[AdaLoraAllocator()]).train()
    masks = pc.rank_pattern
    assert masks, "update_and_allocate never fixed a rank pattern"
    kept = sum(int(torch.as_tensor(m).sum()) for m in masks.values())
    assert kept == 2 * len(masks) < 4 * len(masks)


def test_warmup_is_applied_as_given(db, tiny, tmp_path):
    """Warm-up 3 of 6 steps: the learning rate rises for 3 steps and peaks at step 4 (it used to be
    capped at total // 5 = 1 step: a peak at step 2)."""
    from analysis.tasks.build import DatasetSpec, make_dataset
    from ingest.jobs.finetune import run_ingest

    driver, database = db
    model, _ = tiny
    data = tmp_path / "d"
    make_dataset(DatasetSpec(task="add_sub", tokenizer=model, out=data, n=100, count=60))
    cfg = ingest_config(model, data, tmp_path, "warm", max_steps=6, checkpoints=1)
    cfg.train.warmup_steps = 3
    run_ingest(cfg, driver, database, progress=False, echo=lambda *_: None)
    state = json.loads((tmp_path / "state/runs/warm/trainer/checkpoint-6/trainer_state.json").read_text())
    lrs = [h["learning_rate"] for h in state["log_history"] if "learning_rate" in h]  # the rate of steps 1..6
    assert lrs[0] < lrs[1] < lrs[2] < lrs[3] == max(lrs) == pytest.approx(5e-3)
    assert _hparams(driver, database, "warm")["warmup_steps"] == 3


def test_warmup_longer_than_the_run_is_an_error(tiny, cli_env, tmp_path):
    model, _ = tiny
    proc = run_cli(["ingest", "run", "--model", str(model), "--task", "add_sub", "--count", "60",
                    "--max-steps", "4", "--checkpoints", "1", "--warmup-steps", "4", "--quiet"], env=cli_env)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: a warm-up of 4 steps does not fit in 4 training steps; pass a shorter --warmup-steps"]
