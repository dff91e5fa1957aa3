"""CircuitLoRA end to end (method.md 4) and the paper's method comparison (method.md 8, items 10-12, 14, 16).

    plan_from_circuits   critical layers from the store's query over two stored circuits -> a plan
    random_plan          RandomLoRA: the same ranks on k layers drawn with a seed
    store_plan           the plan's JSON in the store, linked to the circuits it came from
    train_plan           phase 2: a LoRA run with the plan's ranks, alphas and per-group learning rates
    run_auto             phase 1 (LoRA r=2, one epoch, the rebuttal's cheap version) -> plan -> phase 2
    run_experiment       the paper's set of methods over seeds, every run stored and tagged
    experiment_table     Table 1 form, computed by Cypher from the runs' final checkpoints
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from analysis.checkpoint import ScoringConfig
from analysis.circuitlora import CircuitLoRAPlan, ModelShape, build_plan, paper_critical_lr, random_layers
from analysis.errors import UserError
from analysis.training import TrainConfig, defaults_key, task_defaults
from queries import experiments as X
from queries import library as Q
from queries.api import CircuitDefinition, Store, parse_ref

PHASE1 = "phase1"

# The paper's comparison set (Table 1 rows after "pre-trained", then AdaLoRA from the rebuttal).
PAPER_SET = ["full", "lora-r2", "lora-r8", "lora-r16", "lora-r32", "circuitlora-8-32", "randomlora-8-32",
             "circuitlora-16-64", "randomlora-16-64", "adalora"]
TABLE_ORDER = ["pretrained", *PAPER_SET]


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
    return {"circuitlora": "CircuitLoRA", "randomlora": "RandomLoRA"}.get(kind, kind) + f" ({nums[0]},{nums[1]})"


def parse_label(label: str) -> dict:
    """'lora-r16' -> lora rank 16; 'circuitlora-8-32' -> (r_o, r_c); 'full'; 'adalora'."""
    try:
        if label in ("full", "adalora"):
            return {"kind": label}
        kind, *rest = label.split("-")
        if kind == "lora" and len(rest) == 1 and rest[0].startswith("r"):
            return {"kind": "lora", "rank": int(rest[0][1:])}
        if kind in ("circuitlora", "randomlora") and len(rest) == 2:
            return {"kind": kind, "r_o": int(rest[0]), "r_c": int(rest[1])}
    except ValueError:
        pass
    raise UserError(f"unknown method {label!r}; use full, adalora, lora-rR, circuitlora-RO-RC or "
                    "randomlora-RO-RC (the paper's set: " + ", ".join(PAPER_SET) + ")")


def ensure_schema(driver, database) -> None:
    for statement in X.SCHEMA:
        driver.execute_query(statement, database_=database)


def _write(driver, database, statement, **params):
    records, _, _ = driver.execute_query(statement, params, database_=database, routing_="w")
    return [r.data() for r in records]


# -- plans -------------------------------------------------------------------------------------------

def data_defaults_key(data: str, task: str | None = None) -> str | None:
    """The per-task defaults key (method.md 3.3) of a dataset folder: its manifest's task and params
    (Add/Sub 200 -> add_sub_200), else `task`."""
    from analysis.datasets import dataset_provenance
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
            rows = store.read(X.RUN_SOURCE, run=parse_ref(ref)[0])
            if rows:
                model = model or rows[0]["model"] or None
                task = task or rows[0]["task"] or None
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
    from analysis.provenance import content_hash
    return f"plan-{plan.label}-{content_hash(plan.to_dict())[:12]}"


def store_plan(driver, database, plan: CircuitLoRAPlan) -> str:
    """Store the plan's JSON as a (:Plan), linked to the circuits it came from; returns its id."""
    ensure_schema(driver, database)
    store = Store(driver, database)
    sources = []
    for role in ("before", "after"):
        ref = plan.source.get(role)
        if ref:
            sources.append({"role": role, "uid": store.resolve(ref).uid})
    pid = plan_id(plan)
    _write(driver, database, X.MERGE_PLAN, id=pid, kind=plan.kind, label=plan.label, json=plan.to_json(),
           critical_layers=plan.critical_layers, r_o=plan.r_o, r_c=plan.r_c,
           parameter_ratio=plan.parameter_ratio, before=plan.source.get("before"),
           after=plan.source.get("after"), model=plan.model, task=plan.task, sources=sources)
    return pid


def load_stored_plan(store: Store, pid: str) -> CircuitLoRAPlan:
    rows = store.read(X.PLAN_BY_ID, id=pid)
    if not rows:
        raise UserError(f"no plan {pid!r} in the database")
    return CircuitLoRAPlan.from_dict(json.loads(rows[0]["json"]))


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


def _ingest(driver, database, s: RunSettings, run_id: str, train: TrainConfig, progress: bool, echo) -> dict:
    from ingest.job import IngestConfig, run_ingest
    cfg = IngestConfig(model=s.model, data=s.data, run_id=run_id, train=train, scoring=s.scoring,
                       device=s.device, state_dir=s.state_dir)
    return run_ingest(cfg, driver, database, progress=progress, echo=echo)


def _with(train: TrainConfig, **changes) -> TrainConfig:
    d = train.record()
    d.update(changes)
    return TrainConfig(**d)


def train_plan(driver, database, plan: CircuitLoRAPlan, s: RunSettings, run_id: str, progress=False,
               echo=print) -> dict:
    """Phase 2: fine-tune with the plan (stored and linked to the run)."""
    pid = store_plan(driver, database, plan)
    train = _with(s.train, **plan.train_overrides())
    out = _ingest(driver, database, s, run_id, train, progress, echo)
    if out["trainable_parameters"] != plan.trainable_parameters:
        raise UserError(f"run {run_id} trains {out['trainable_parameters']:,} parameters, the plan says "
                        f"{plan.trainable_parameters:,}: was the plan made for another model?")
    _write(driver, database, X.LINK_RUN_PLAN, run=run_id, plan=pid)
    return {**out, "plan": pid}


def run_phase1(driver, database, s: RunSettings, run_id: str, rank: int = 2, epochs: float = 1.0,
               max_steps: int | None = None, progress=False, echo=print) -> tuple[str, str, dict]:
    """Phase 1, the rebuttal's cheap version: LoRA r=2 for one epoch; circuits at step 0 (the
    pre-trained model) and at the end. Returns (before, after, result)."""
    train = _with(s.train, method="lora", rank=rank, epochs=epochs, max_steps=max_steps, checkpoints=1,
                  rank_pattern=None, alpha_pattern=None, lr_groups=None)
    out = _ingest(driver, database, s, run_id, train, progress, echo)
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


# -- the comparison ----------------------------------------------------------------------------------

@dataclass
class ExperimentConfig:
    """The paper's comparison (Table 1 form) on one model and task."""

    experiment: str
    settings: RunSettings
    seeds: list[int]
    labels: list[str] = field(default_factory=lambda: list(PAPER_SET))
    task: str | None = None
    top: int = 5
    lr: float | None = None            # LoRA lr (also CircuitLoRA/RandomLoRA's non-critical modules)
    full_lr: float | None = None
    adalora_lr: float | None = None
    lr_critical: float | None = None   # default: the paper's per-task rate scaled by lr / 3e-4
    phase1_epochs: float = 1.0
    phase1_steps: int | None = None

    def __post_init__(self):
        if not self.seeds:
            raise UserError("--seeds must be >= 1")
        for label in self.labels:
            parse_label(label)
        if len(set(self.labels)) != len(self.labels):
            raise UserError("a method is listed twice")


def run_experiment(driver, database, cfg: ExperimentConfig, progress=False, echo=print) -> dict:
    """Run every method for every seed (runs already stored are skipped by the ingest job), tag each
    run in the store, and return the table computed from the store."""
    ensure_schema(driver, database)
    s, task = cfg.settings, cfg.task
    # --lr for every LoRA-family run; by default each LoRA run gets the paper's lr for its rank and task
    # (method.md 3.3), and CircuitLoRA/RandomLoRA's non-critical modules the task's LoRA lr
    lora_lr = cfg.lr if cfg.lr is not None else task_defaults(data_defaults_key(s.data, task)).lora_lr
    settings = {"train": s.train.record(), "scoring": s.scoring.record(), "top": cfg.top, "lr": cfg.lr,
                "full_lr": cfg.full_lr, "adalora_lr": cfg.adalora_lr, "lr_critical": cfg.lr_critical,
                "phase1_epochs": cfg.phase1_epochs, "phase1_steps": cfg.phase1_steps, "data": s.data}
    _write(driver, database, X.MERGE_EXPERIMENT, id=cfg.experiment, task=task, model=s.model,
           seeds=list(cfg.seeds), labels=list(cfg.labels), settings=json.dumps(settings, sort_keys=True))
    t_start = time.perf_counter()
    quiet = lambda *_: None  # noqa: E731

    def tag(run_id, label, seed, out):
        _write(driver, database, X.TAG_EXPERIMENT_RUN, experiment=cfg.experiment, run=run_id, label=label,
               seed=seed, parameter_ratio=out["trainable_parameters"] / out["total_parameters"],
               trainable_parameters=out["trainable_parameters"])

    plans: dict[tuple[int, int], CircuitLoRAPlan] = {}
    if any(parse_label(lb)["kind"] == "circuitlora" for lb in cfg.labels):
        # Phase 1 once per experiment (the paper finds the critical layers once per task).
        seed0 = cfg.seeds[0]
        p1 = f"{cfg.experiment}.{PHASE1}.s{seed0}"
        t0 = time.perf_counter()
        s1 = RunSettings(**{**asdict(s), "train": _with(s.train, seed=seed0, learning_rate=lora_lr),
                            "scoring": s.scoring})
        before, after, out = run_phase1(driver, database, s1, p1, epochs=cfg.phase1_epochs,
                                        max_steps=cfg.phase1_steps, progress=progress, echo=quiet)
        tag(p1, PHASE1, seed0, out)
        echo(f"phase 1 ({p1}): {before} -> {after} in {time.perf_counter() - t0:.0f} s")
        for label in cfg.labels:
            p = parse_label(label)
            if p["kind"] == "circuitlora":
                plan = plan_from_circuits(Store(driver, database), before, after, model=s.model, top=cfg.top,
                                          r_o=p["r_o"], r_c=p["r_c"], lr_other=lora_lr,
                                          lr_critical=cfg.lr_critical, task=task)
                plans[(p["r_o"], p["r_c"])] = plan
                echo(f"  {display_label(label)}: critical layers {plan.critical_layers}, ratio "
                     f"{100 * plan.parameter_ratio:.4f}%")

    for seed in cfg.seeds:
        for label in cfg.labels:
            p = parse_label(label)
            run_id = f"{cfg.experiment}.{label}.s{seed}"
            rs = RunSettings(**{**asdict(s), "train": _with(s.train, seed=seed), "scoring": s.scoring})
            t0 = time.perf_counter()
            if p["kind"] == "full":
                train = _with(rs.train, method="full", learning_rate=cfg.full_lr)
                out = _ingest(driver, database, rs, run_id, train, progress, quiet)
            elif p["kind"] == "adalora":
                # method.md 3.4: init_r 32 -> target_r 16 (rank=32 in TrainConfig's convention)
                train = _with(rs.train, method="adalora", rank=32,
                              learning_rate=cfg.adalora_lr if cfg.adalora_lr is not None else None)
                out = _ingest(driver, database, rs, run_id, train, progress, quiet)
            elif p["kind"] == "lora":
                train = _with(rs.train, method="lora", rank=p["rank"], learning_rate=cfg.lr)
                out = _ingest(driver, database, rs, run_id, train, progress, quiet)
            elif p["kind"] == "circuitlora":
                out = train_plan(driver, database, plans[(p["r_o"], p["r_c"])], rs, run_id, progress, quiet)
            else:  # RandomLoRA: k layers drawn with this run's seed
                plan = random_plan(s.model, cfg.top, seed, r_o=p["r_o"], r_c=p["r_c"], lr_other=lora_lr,
                                   lr_critical=cfg.lr_critical, task=task)
                out = train_plan(driver, database, plan, rs, run_id, progress, quiet)
            tag(run_id, label, seed, out)
            final = Store(driver, database).read(Q.CHECKPOINT_METRICS, run=run_id)[-1]
            echo(f"seed {seed}  {display_label(label):<22} step {final['step']:>4}: accuracy "
                 f"{final['accuracy']:6.2f}%  ({time.perf_counter() - t0:.0f} s)")
    table = experiment_table(Store(driver, database), cfg.experiment)
    table["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    return table


def experiment_table(store: Store, experiment: str) -> dict:
    """Table 1 form from the store: mean and sample std over seeds of the final accuracy (Cypher's
    avg and stDev), and the parameter ratio trainable / (base + trainable)."""
    info = store.read(X.EXPERIMENT_INFO, experiment=experiment)
    if not info:
        raise UserError(f"no experiment {experiment!r} in the database")
    labels = info[0]["labels"] or []
    order = ["pretrained"] + sorted(labels, key=lambda lb: TABLE_ORDER.index(lb) if lb in TABLE_ORDER else len(TABLE_ORDER))
    rows = store.read(X.EXPERIMENT_TABLE, experiment=experiment, exclude=[PHASE1], order=order)
    table = []
    for r in rows:
        std = r["std"] if r["n"] > 1 else None
        table.append({"method": display_label(r["label"]), "label": r["label"], "seeds": r["n"],
                      "accuracy_mean_%": round(r["mean"], 2),  # stored in percent
                      "accuracy_std_%": None if std is None else round(std, 2),
                      "parameter_ratio_%": round(100 * r["parameter_ratio"], 4)})
    per_run = store.read(X.EXPERIMENT_RUNS, experiment=experiment)
    return {"experiment": experiment, "task": info[0]["task"], "model": info[0]["model"],
            "seeds": info[0]["seeds"], "table": table, "runs": per_run,
            "statistic": "mean and sample standard deviation (Cypher avg, stDev) over seeds of the final "
                         "checkpoint's exact-match accuracy on the held-out circuit split"}


def markdown_table(t: dict) -> str:
    lines = ["| Method | Accuracy % (mean ± std) | Parameter ratio |", "|---|---|---|"]
    for r in t["table"]:
        std = "" if r["accuracy_std_%"] is None else f" ± {r['accuracy_std_%']:.2f}"
        ratio = "100%" if r["label"] == "full" else f"{r['parameter_ratio_%']:.4f}%"
        lines.append(f"| {r['method']} | {r['accuracy_mean_%']:.2f}{std} | {ratio} |")
    return "\n".join(lines)

