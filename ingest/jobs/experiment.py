"""The paper's method comparison (method.md 8, items 10-12, 14, 16) over CircuitLoRA's runs.

    run_experiment       the paper's set of methods over seeds, every run stored and tagged
    union_plans          CircuitLoRA_U: plans from two stored union circuits (method.md 5, Table 3)
    experiment_table     Table 1 form, computed by Cypher from the runs' final checkpoints
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

from analysis.circuitlora import CircuitLoRAPlan, ModelShape
from analysis.errors import UserError
from analysis.training import task_defaults
from ingest.jobs.circuitlora import (PHASE1, UNION_KIND, RunSettings, data_defaults_key, display_label,
                                     ingest_run, plan_from_circuits, random_plan, run_phase1, train_plan,
                                     with_train)
from queries.api import Store, parse_ref
from queries.writer import CircuitWriter, ExperimentRecord

# The paper's comparison set (Table 1 rows after "pre-trained", then AdaLoRA from the rebuttal).
PAPER_SET = ["full", "lora-r2", "lora-r8", "lora-r16", "lora-r32", "circuitlora-8-32", "randomlora-8-32",
             "circuitlora-16-64", "randomlora-16-64", "adalora"]
# CircuitLoRA_U (not in the default set: it needs two stored unions) sits after its CircuitLoRA row.
TABLE_ORDER = ["pretrained", "full", "lora-r2", "lora-r8", "lora-r16", "lora-r32", "circuitlora-8-32",
               f"{UNION_KIND}-8-32", "randomlora-8-32", "circuitlora-16-64", f"{UNION_KIND}-16-64",
               "randomlora-16-64", "adalora"]


def parse_label(label: str) -> dict:
    """'lora-r16' -> lora rank 16; 'circuitlora-8-32' / 'circuitlora_u-8-32' -> (r_o, r_c); 'full'; 'adalora'."""
    try:
        if label in ("full", "adalora"):
            return {"kind": label}
        kind, *rest = label.split("-")
        if kind == "lora" and len(rest) == 1 and rest[0].startswith("r"):
            return {"kind": "lora", "rank": int(rest[0][1:])}
        if kind in ("circuitlora", UNION_KIND, "randomlora") and len(rest) == 2:
            return {"kind": kind, "r_o": int(rest[0]), "r_c": int(rest[1])}
    except ValueError:
        pass
    raise UserError(f"unknown method {label!r}; use full, adalora, lora-rR, circuitlora-RO-RC, "
                    f"{UNION_KIND}-RO-RC (with --union-before/--union-after) or randomlora-RO-RC "
                    "(the paper's set: " + ", ".join(PAPER_SET) + ")")


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
    union_before: str | None = None    # CircuitLoRA_U: union of the pre-trained subtask circuits, RUN:STEP
    union_after: str | None = None     # ... and of the fine-tuned ones (`circuitshift query union`)

    def __post_init__(self):
        if not self.seeds:
            raise UserError("--seeds must be >= 1")
        kinds = [parse_label(label)["kind"] for label in self.labels]
        if len(set(self.labels)) != len(self.labels):
            raise UserError("a method is listed twice")
        refs = (self.union_before, self.union_after)
        if any(refs) and not all(refs):
            raise UserError("give both --union-before and --union-after (the base and the after union, RUN:STEP)")
        if UNION_KIND in kinds and not all(refs):
            label = self.labels[kinds.index(UNION_KIND)]
            raise UserError(f"{label} plans from two union circuits: give --union-before UNION_BASE:STEP and "
                            "--union-after UNION_AFTER:STEP (stored by `circuitshift query union`)")
        if all(refs) and UNION_KIND not in kinds:
            # refs nothing would read are a mistake, not a no-op: the table would lack the row asked for
            raise UserError(f"--union-before/--union-after are read only by {UNION_KIND}-RO-RC methods: add "
                            f"one to --methods (e.g. {UNION_KIND}-8-32)")
        for ref in refs:
            if ref:
                parse_ref(ref)


def union_circuit(store: Store, ref: str, option: str):
    """The stored union circuit `ref` names (a CircuitRef); anything else is a UserError naming `option`."""
    run, _ = parse_ref(ref)
    source = store.run_source(run)
    if source is None:
        raise UserError(f"{option} {ref}: no run {run!r} in the database (store the union with "
                        "`circuitshift query union A:STEP B:STEP --as RUN:STEP`)")
    if source["method"] != "union":
        # the report reads a plan as a union plan by its circuits' run (queries/cypher/reports.py)
        raise UserError(f"{option} {ref} is not a union circuit: run {run!r} is a {source['method']!r} run; "
                        "store one with `circuitshift query union A:STEP B:STEP --as RUN:STEP`")
    return store.resolve(ref)


def union_plans(store: Store, cfg: ExperimentConfig, lora_lr: float) -> dict[tuple[int, int], CircuitLoRAPlan]:
    """CircuitLoRA_U's plans (method.md 5): the critical layers of Delta(union base -> union after),
    with CircuitLoRA's rules (top, r_o, r_c, rates), one per (r_o, r_c) among the labels. Checked before
    anything trains: both refs are stored unions of a model with --model's layers."""
    s = cfg.settings
    n_layers = ModelShape.from_config(s.model).n_layers
    for ref, option in ((cfg.union_before, "--union-before"), (cfg.union_after, "--union-after")):
        arch = union_circuit(store, ref, option).arch
        if arch.n_layers != n_layers:
            raise UserError(f"{option} {ref} is a circuit of a {arch.n_layers}-layer model; {s.model} has "
                            f"{n_layers} layers")
    plans = {}
    for label in cfg.labels:
        p = parse_label(label)
        if p["kind"] == UNION_KIND:
            plans[(p["r_o"], p["r_c"])] = plan_from_circuits(
                store, cfg.union_before, cfg.union_after, model=s.model, top=cfg.top, r_o=p["r_o"], r_c=p["r_c"],
                lr_other=lora_lr, lr_critical=cfg.lr_critical, task=cfg.task)
    return plans


def run_experiment(driver, database, cfg: ExperimentConfig, progress=False, echo=print) -> dict:
    """Run every method for every seed (runs already stored are skipped by the ingest job), tag each
    run in the store, and return the table computed from the store."""
    s, task = cfg.settings, cfg.task
    writer = CircuitWriter(driver, database)
    # --lr for every LoRA-family run; by default each LoRA run gets the paper's lr for its rank and task
    # (method.md 3.3), and CircuitLoRA/RandomLoRA's non-critical modules the task's LoRA lr
    lora_lr = cfg.lr if cfg.lr is not None else task_defaults(data_defaults_key(s.data, task)).lora_lr
    # before the experiment is recorded: a bad union ref leaves nothing behind
    u_plans = union_plans(Store(driver, database), cfg, lora_lr) if cfg.union_after else {}
    settings = {"train": s.train.record(), "scoring": s.scoring.record(), "top": cfg.top, "lr": cfg.lr,
                "full_lr": cfg.full_lr, "adalora_lr": cfg.adalora_lr, "lr_critical": cfg.lr_critical,
                "phase1_epochs": cfg.phase1_epochs, "phase1_steps": cfg.phase1_steps, "data": s.data}
    if cfg.union_after:
        settings.update(union_before=cfg.union_before, union_after=cfg.union_after)
    writer.write_experiment(ExperimentRecord(id=cfg.experiment, task=task, model=s.model, seeds=list(cfg.seeds),
                                             labels=list(cfg.labels), settings=json.dumps(settings, sort_keys=True)))
    t_start = time.perf_counter()
    quiet = lambda *_: None  # noqa: E731

    def tag(run_id, label, seed, out):
        writer.tag_experiment_run(cfg.experiment, run_id, label, seed, out["trainable_parameters"],
                                  out["total_parameters"])

    plans: dict[tuple[int, int], CircuitLoRAPlan] = {}
    if any(parse_label(lb)["kind"] == "circuitlora" for lb in cfg.labels):
        # Phase 1 once per experiment (the paper finds the critical layers once per task).
        seed0 = cfg.seeds[0]
        p1 = f"{cfg.experiment}.{PHASE1}.s{seed0}"
        t0 = time.perf_counter()
        s1 = RunSettings(**{**asdict(s), "train": with_train(s.train, seed=seed0, learning_rate=lora_lr),
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
    for (r_o, r_c), plan in u_plans.items():
        echo(f"  {display_label(f'{UNION_KIND}-{r_o}-{r_c}')}: critical layers {plan.critical_layers} of "
             f"{cfg.union_before} -> {cfg.union_after}, ratio {100 * plan.parameter_ratio:.4f}%")

    for seed in cfg.seeds:
        for label in cfg.labels:
            p = parse_label(label)
            run_id = f"{cfg.experiment}.{label}.s{seed}"
            rs = RunSettings(**{**asdict(s), "train": with_train(s.train, seed=seed), "scoring": s.scoring})
            t0 = time.perf_counter()
            if p["kind"] == "full":
                train = with_train(rs.train, method="full", learning_rate=cfg.full_lr)
                out = ingest_run(driver, database, rs, run_id, train, progress, quiet)
            elif p["kind"] == "adalora":
                # method.md 3.4: init_r 32 -> target_r 16 (rank=32 in TrainConfig's convention)
                train = with_train(rs.train, method="adalora", rank=32,
                              learning_rate=cfg.adalora_lr if cfg.adalora_lr is not None else None)
                out = ingest_run(driver, database, rs, run_id, train, progress, quiet)
            elif p["kind"] == "lora":
                train = with_train(rs.train, method="lora", rank=p["rank"], learning_rate=cfg.lr)
                out = ingest_run(driver, database, rs, run_id, train, progress, quiet)
            elif p["kind"] == "circuitlora":
                out = train_plan(driver, database, plans[(p["r_o"], p["r_c"])], rs, run_id, progress, quiet)
            elif p["kind"] == UNION_KIND:  # the plan links the run to both unions: the report's union_plan
                out = train_plan(driver, database, u_plans[(p["r_o"], p["r_c"])], rs, run_id, progress, quiet)
            else:  # RandomLoRA: k layers drawn with this run's seed
                plan = random_plan(s.model, cfg.top, seed, r_o=p["r_o"], r_c=p["r_c"], lr_other=lora_lr,
                                   lr_critical=cfg.lr_critical, task=task)
                out = train_plan(driver, database, plan, rs, run_id, progress, quiet)
            tag(run_id, label, seed, out)
            final = Store(driver, database).checkpoint_metrics(run_id)[-1]
            echo(f"seed {seed}  {display_label(label):<22} step {final['step']:>4}: accuracy "
                 f"{final['accuracy']:6.2f}%  ({time.perf_counter() - t0:.0f} s)")
    table = experiment_table(Store(driver, database), cfg.experiment)
    table["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    return table


def experiment_table(store: Store, experiment: str) -> dict:
    """Table 1 form from the store: mean and sample std over seeds of the final accuracy (Cypher's
    avg and stDev), and the parameter ratio trainable / (base + trainable)."""
    info = store.experiment_info(experiment)
    if info is None:
        raise UserError(f"no experiment {experiment!r} in the database")
    labels = info["labels"] or []
    order = ["pretrained"] + sorted(labels, key=lambda lb: TABLE_ORDER.index(lb) if lb in TABLE_ORDER else len(TABLE_ORDER))
    rows = store.experiment_table_rows(experiment, exclude=[PHASE1], order=order)
    table = []
    for r in rows:
        std = r["std"] if r["n"] > 1 else None
        table.append({"method": display_label(r["label"]), "label": r["label"], "seeds": r["n"],
                      "accuracy_mean_%": round(r["mean"], 2),  # stored in percent
                      "accuracy_std_%": None if std is None else round(std, 2),
                      "parameter_ratio_%": round(100 * r["parameter_ratio"], 4)})
    per_run = store.experiment_runs(experiment)
    return {"experiment": experiment, "task": info["task"], "model": info["model"],
            "seeds": info["seeds"], "table": table, "runs": per_run,
            "statistic": "mean and sample standard deviation (Cypher avg, stDev) over seeds of the final "
                         "checkpoint's exact-match accuracy on the held-out circuit split"}


def markdown_table(t: dict) -> str:
    lines = ["| Method | Accuracy % (mean ± std) | Parameter ratio |", "|---|---|---|"]
    for r in t["table"]:
        std = "" if r["accuracy_std_%"] is None else f" ± {r['accuracy_std_%']:.2f}"
        ratio = "100%" if r["label"] == "full" else f"{r['parameter_ratio_%']:.4f}%"
        lines.append(f"| {r['method']} | {r['accuracy_mean_%']:.2f}{std} | {ratio} |")
    return "\n".join(lines)
