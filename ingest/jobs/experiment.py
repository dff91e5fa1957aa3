"""The paper's method comparison (method.md 8, items 10-12, 14, 16) over CircuitLoRA's runs.

    run_experiment       the paper's set of methods over seeds, every run stored and tagged
    experiment_table     Table 1 form, computed by Cypher from the runs' final checkpoints
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

from analysis.circuitlora import CircuitLoRAPlan
from analysis.errors import UserError
from analysis.training import task_defaults
from ingest.jobs.circuitlora import (PHASE1, RunSettings, data_defaults_key, display_label, ingest_run,
                                     plan_from_circuits, random_plan, run_phase1, train_plan, with_train)
from queries.api import Store
from queries.writer import CircuitWriter, ExperimentRecord

# The paper's comparison set (Table 1 rows after "pre-trained", then AdaLoRA from the rebuttal).
PAPER_SET = ["full", "lora-r2", "lora-r8", "lora-r16", "lora-r32", "circuitlora-8-32", "randomlora-8-32",
             "circuitlora-16-64", "randomlora-16-64", "adalora"]
TABLE_ORDER = ["pretrained", *PAPER_SET]


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
    s, task = cfg.settings, cfg.task
    writer = CircuitWriter(driver, database)
    # --lr for every LoRA-family run; by default each LoRA run gets the paper's lr for its rank and task
    # (method.md 3.3), and CircuitLoRA/RandomLoRA's non-critical modules the task's LoRA lr
    lora_lr = cfg.lr if cfg.lr is not None else task_defaults(data_defaults_key(s.data, task)).lora_lr
    settings = {"train": s.train.record(), "scoring": s.scoring.record(), "top": cfg.top, "lr": cfg.lr,
                "full_lr": cfg.full_lr, "adalora_lr": cfg.adalora_lr, "lr_critical": cfg.lr_critical,
                "phase1_epochs": cfg.phase1_epochs, "phase1_steps": cfg.phase1_steps, "data": s.data}
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
