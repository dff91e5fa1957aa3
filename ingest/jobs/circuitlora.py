"""CircuitLoRA end to end (method.md 4).

    plan_from_circuits   critical layers from the store's query over two stored circuits -> a plan
    random_plan          RandomLoRA: the same ranks on k layers drawn with a seed
    store_plan           the plan's JSON in the store, linked to the circuits it came from
    train_plan           phase 2: a LoRA run with the plan's ranks, alphas and per-group learning rates
    run_auto             phase 1 (LoRA r=2, one epoch, the rebuttal's cheap version) -> plan -> phase 2

The method comparison over these runs is ingest/jobs/experiment.py.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from analysis.checkpoint import ScoringConfig
from analysis.circuitlora import CircuitLoRAPlan, ModelShape, build_plan, paper_critical_lr, random_layers
from analysis.datasets import dataset_provenance
from analysis.errors import UserError
from analysis.provenance import content_hash
from analysis.training import TrainConfig, defaults_key, task_defaults
from ingest.jobs.finetune import IngestConfig, run_ingest
from queries.api import CircuitDefinition, Store, parse_ref
from queries.writer import CircuitWriter, PlanRecord

PHASE1 = "phase1"
# CircuitLoRA planned from two stored union circuits (method.md 5): CircuitLoRA_U (Table 3)
UNION_KIND = "circuitlora_u"


def display_label(label: str) -> str:
    if label == "pretrained":
        return "Pre-trained"
    if label == "full":
        return "Full FT"
    if label == "adalora":
        return "AdaLoRA"
    kind, *nums = label.split("-")
    if kind == "lora":
        return f"LoRA (r={nums[0][1:]})"
    names = {"circuitlora": "CircuitLoRA", "randomlora": "RandomLoRA", UNION_KIND: "CircuitLoRA_U"}
    return names.get(kind, kind) + f" ({nums[0]},{nums[1]})"


# -- plans -------------------------------------------------------------------------------------------

def data_defaults_key(data: str, task: str | None = None) -> str | None:
    """The per-task defaults key (method.md 3.3) of a dataset folder: its manifest's task and params
    (Add/Sub 200 -> add_sub_200), else `task`."""
    manifest = dataset_provenance(data) if Path(data).exists() else {}
    return defaults_key(manifest.get("task") or task, manifest.get("params"))


def default_lrs(task: str | None, r_c: int, lr_other: float | None, lr_critical: float | None) -> tuple[float, float]:
    other = lr_other if lr_other is not None else task_defaults(task).lora_lr
    critical = lr_critical if lr_critical is not None else paper_critical_lr(task, r_c, other)
    return float(other), float(critical)


def plan_from_circuits(store: Store, before: str, after: str, *, model: str | None = None, top: int = 5,
                       r_o: int = 8, r_c: int = 32, lr_other: float | None = None,
                       lr_critical: float | None = None, task: str | None = None,
                       definition: CircuitDefinition = CircuitDefinition()) -> CircuitLoRAPlan:
    """Critical layers of BEFORE -> AFTER (the store's CRITICAL_LAYERS query) as a plan. The model
    (for module names and shapes) defaults to the AFTER circuit's run, then BEFORE's."""
    crit = store.critical_layers(before, after, definition, top)
    if model is None or task is None:
        for ref in (after, before):
            source = store.run_source(parse_ref(ref)[0])
            if source:
                model = model or source["model"] or None
                task = task or source["task"] or None
    if not model:
        raise UserError(f"the runs of {before} and {after} name no model (a union or an import?): give --model")
    other, critical = default_lrs(task, r_c, lr_other, lr_critical)
    shape = ModelShape.from_config(model)
    source = {"before": before, "after": after, "definition": asdict(definition), "top": top,
              "deltas": crit["deltas"], "all_layers": crit["all_layers"], "all_deltas": crit["all_deltas"]}
    return build_plan(shape, crit["layers"], r_o, r_c, other, critical, model=model, kind="circuit",
                      source=source, task=task)


def random_plan(model: str, k: int, seed: int, *, r_o: int = 8, r_c: int = 32, lr_other: float | None = None,
                lr_critical: float | None = None, task: str | None = None) -> CircuitLoRAPlan:
    """RandomLoRA: k layers from `random.Random(seed).sample(range(n_layers), k)`, same ranks and rates."""
    shape = ModelShape.from_config(model)
    layers = random_layers(shape.n_layers, k, seed)
    other, critical = default_lrs(task, r_c, lr_other, lr_critical)
    return build_plan(shape, layers, r_o, r_c, other, critical, model=model, kind="random",
                      source={"random_seed": seed, "k": k, "drawn": layers}, task=task)


def plan_id(plan: CircuitLoRAPlan) -> str:
    return f"plan-{plan.label}-{content_hash(plan.to_dict())[:12]}"


def store_plan(driver, database, plan: CircuitLoRAPlan) -> str:
    """Store the plan's JSON as a (:Plan), linked to the circuits it came from; returns its id."""
    store = Store(driver, database)
    sources = []
    for role in ("before", "after"):
        ref = plan.source.get(role)
        if ref:
            sources.append({"role": role, "uid": store.resolve(ref).uid})
    pid = plan_id(plan)
    CircuitWriter(driver, database).write_plan(PlanRecord(
        id=pid, kind=plan.kind, label=plan.label, json=plan.to_json(), critical_layers=plan.critical_layers,
        r_o=plan.r_o, r_c=plan.r_c, parameter_ratio=plan.parameter_ratio, before=plan.source.get("before"),
        after=plan.source.get("after"), model=plan.model, task=plan.task, sources=sources))
    return pid


def load_stored_plan(store: Store, pid: str) -> CircuitLoRAPlan:
    text = store.plan_json(pid)
    if text is None:
        raise UserError(f"no plan {pid!r} in the database")
    return CircuitLoRAPlan.from_dict(json.loads(text))


def describe_plan(plan: CircuitLoRAPlan) -> list[str]:
    src = plan.source
    origin = (f"critical layers of {src.get('before')} -> {src.get('after')} (top {src.get('top')})"
              if plan.kind == "circuit" else f"random layers, seed {src.get('random_seed')}")
    return [f"{display_label(plan.label)} for {plan.model} ({plan.model_type}, {plan.n_layers} layers)",
            f"  layers {plan.critical_layers}: {origin}",
            f"  critical modules: rank {plan.r_c}, alpha {plan.alpha_c}, lr {plan.lr_critical:g} "
            f"({len(plan.critical_modules)} modules)",
            f"  other modules:    rank {plan.r_o}, alpha {plan.alpha_o}, lr {plan.lr_other:g}",
            f"  trainable {plan.trainable_parameters:,} / (base {plan.base_parameters:,} + trainable) = "
            f"{100 * plan.parameter_ratio:.4f}%"]


# -- training ----------------------------------------------------------------------------------------

@dataclass
class RunSettings:
    """What every run of a command shares: model, data, training schedule, scoring, where state goes."""

    model: str
    data: str
    train: TrainConfig = field(default_factory=TrainConfig)  # schedule: steps/epochs, batch, warmup, seed
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    device: str | None = None
    state_dir: str = ".circuitshift"


def ingest_run(driver, database, s: RunSettings, run_id: str, train: TrainConfig, progress: bool,
               echo) -> dict:
    """One fine-tuning run of these settings with schedule `train`, stored."""
    cfg = IngestConfig(model=s.model, data=s.data, run_id=run_id, train=train, scoring=s.scoring,
                       device=s.device, state_dir=s.state_dir)
    return run_ingest(cfg, driver, database, progress=progress, echo=echo)


def with_train(train: TrainConfig, **changes) -> TrainConfig:
    """`train` with some settings changed."""
    d = train.record()
    d.update(changes)
    return TrainConfig(**d)


def train_plan(driver, database, plan: CircuitLoRAPlan, s: RunSettings, run_id: str, progress=False,
               echo=print) -> dict:
    """Phase 2: fine-tune with the plan (stored and linked to the run)."""
    pid = store_plan(driver, database, plan)
    train = with_train(s.train, **plan.train_overrides())
    out = ingest_run(driver, database, s, run_id, train, progress, echo)
    if out["trainable_parameters"] != plan.trainable_parameters:
        raise UserError(f"run {run_id} trains {out['trainable_parameters']:,} parameters, the plan says "
                        f"{plan.trainable_parameters:,}: was the plan made for another model?")
    CircuitWriter(driver, database).link_run_plan(run_id, pid)
    return {**out, "plan": pid}


def run_phase1(driver, database, s: RunSettings, run_id: str, rank: int = 2, epochs: float = 1.0,
               max_steps: int | None = None, progress=False, echo=print) -> tuple[str, str, dict]:
    """Phase 1, the rebuttal's cheap version: LoRA r=2 for one epoch; circuits at step 0 (the
    pre-trained model) and at the end. Returns (before, after, result)."""
    train = with_train(s.train, method="lora", rank=rank, epochs=epochs, max_steps=max_steps, checkpoints=1,
                  rank_pattern=None, alpha_pattern=None, lr_groups=None)
    out = ingest_run(driver, database, s, run_id, train, progress, echo)
    return f"{run_id}:0", f"{run_id}:{out['total_steps']}", out


def run_auto(driver, database, s: RunSettings, run_id: str, *, top: int = 5, r_o: int = 8, r_c: int = 32,
             lr_critical: float | None = None, random_k: int | None = None, phase1_epochs: float = 1.0,
             phase1_steps: int | None = None, task: str | None = None, progress=False, echo=print) -> dict:
    """Phase 1 -> plan -> phase 2 in one call, all stored. With `random_k`: RandomLoRA (no phase 1)."""
    # CircuitLoRA's non-critical modules: the paper's LoRA lr of the task (3e-4), not a rank-specific one
    lr_other = s.train.learning_rate or task_defaults(data_defaults_key(s.data, task)).lora_lr
    if random_k:
        plan = random_plan(s.model, random_k, s.train.seed, r_o=r_o, r_c=r_c, lr_other=lr_other,
                           lr_critical=lr_critical, task=task)
        phase1 = None
    else:
        echo(f"phase 1: LoRA r=2, {phase1_steps or phase1_epochs} {'steps' if phase1_steps else 'epoch(s)'}")
        before, after, phase1 = run_phase1(driver, database, s, f"{run_id}-{PHASE1}", epochs=phase1_epochs,
                                           max_steps=phase1_steps, progress=progress, echo=echo)
        plan = plan_from_circuits(Store(driver, database), before, after, model=s.model, top=top, r_o=r_o,
                                  r_c=r_c, lr_other=lr_other, lr_critical=lr_critical, task=task)
    for line in describe_plan(plan):
        echo(line)
    plan_path = Path(s.state_dir) / "runs" / run_id / "circuitlora-plan.json"
    plan.save(plan_path)
    echo("phase 2: training with the plan")
    out = train_plan(driver, database, plan, s, run_id, progress, echo)
    return {**out, "plan_file": str(plan_path), "phase1": phase1, "plan_obj": plan}
