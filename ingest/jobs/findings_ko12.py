"""Key Observations 1 and 2 of `circuitshift experiment findings` (ingest/findings_job.py), and what
every Key Observation shares (the context, storing scored circuits as runs).

    ko2_edges_vs_nodes   a full fine-tuning run, and per checkpoint a resampling-noise run: circuits of
                         bootstrap resamples of the circuit split under that checkpoint's weights
    ko1_robustness       pre-trained, fine-tuned and random models on perturbed data and disjoint splits

Every circuit is a normal stored run with provenance (ingest runs, or robustness-style runs tagged with
`analysis`, `of_run`, `findings`); every figure is read back from the store by its queries.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from pathlib import Path

from transformers import TrainerCallback

from analysis import findings as F
from analysis import robustness as R
from analysis.checkpoint import ScoringConfig
from analysis.datasets import available_splits, dataset_provenance, load_split
from analysis.errors import UserError
from analysis.models import load_model
from analysis.training import TrainConfig, checkpoint_steps
from ingest.jobs.findings_setup import FindingsPreset
from ingest.jobs.finetune import IngestConfig, architecture_of, run_ingest
from ingest.jobs.robustness import store_circuits as store_run_circuits
from queries import findings as QF
from queries.api import CircuitDefinition, Store
from queries.writer import CircuitWriter

HEAD = CircuitDefinition()  # each checkpoint's stored circuit, head level: the definition of every figure


@dataclass
class Ctx:
    """What every Key Observation of one findings run shares."""

    driver: object
    database: str | None
    preset: FindingsPreset
    fid: str                    # findings id: prefix of every run id
    state: Path                 # state folder (models, data, training state)
    device: str = "cpu"
    echo: object = print
    used: list = field(default_factory=list)   # {run, ko, role} of every run used

    @property
    def store(self) -> Store:
        return Store(self.driver, self.database)

    @property
    def scoring(self) -> ScoringConfig:
        p = self.preset
        return ScoringConfig(steps=p.ig_steps, batch_size=50, top_frac=p.top_frac, max_examples=p.examples)

    def use(self, run: str, ko: str, role: str) -> str:
        self.used.append({"run": run, "ko": ko, "role": role})
        return run


class WeightSnapshots(TrainerCallback):
    """Keeps a copy of the weights at step 0 and at each scored step (the Trainer keeps only its last
    two saved states), so each checkpoint's resampling noise can be scored under its own weights."""

    def __init__(self, steps):
        self.steps, self.weights = set(steps), {}

    def _keep(self, model, step):
        self.weights[step] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == 0 and 0 in self.steps:
            self._keep(model, 0)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step in self.steps:
            self._keep(model, state.global_step)


def store_circuits(ctx: Ctx, run_id: str, label: str, circuits, tags: dict, model, task: str,
                   dataset_hash: str) -> str:
    """Store scored circuits (analysis.robustness.ScoredCircuit) as the checkpoints of one run."""
    store_run_circuits(CircuitWriter(ctx.driver, ctx.database), run_id, label, circuits,
                       {"findings": ctx.fid, **tags}, architecture_of(model), task=task,
                       dataset_hash=dataset_hash, seed=ctx.preset.seed)
    return run_id


def score_and_store(ctx: Ctx, run_id: str, label: str, model, tok, sets: dict, tags: dict, task: str,
                    dataset_hash: str) -> str:
    """Score one circuit per pair set (step -> pairs) unless the run is already stored whole."""
    done = set(CircuitWriter(ctx.driver, ctx.database).complete_steps(run_id))
    if not set(sets) <= done:
        store_circuits(ctx, run_id, label, R.score_sets(model, tok, sets, ctx.scoring), tags, model, task,
                       dataset_hash)
    return run_id


def pairwise_changes(store: Store, refs: list[str]) -> list[dict]:
    """Edges and nodes changed (symmetric difference) between every pair of circuits."""
    out = []
    for a, b in itertools.combinations(refs, 2):
        j = store.jaccard(a, b, HEAD)
        out.append({"a": a, "b": b, "edges_changed": j["edge_union"] - j["edge_inter"],
                    "nodes_changed": j["node_union"] - j["node_inter"], "edge_jaccard": j["edge_jaccard"]})
    return out


# -- KO2 ---------------------------------------------------------------------------------------------

def ko2_edges_vs_nodes(ctx: Ctx, model_dir: Path, data: Path) -> dict:
    """Full fine-tuning with scored checkpoints; per checkpoint, the churn between circuits of
    bootstrap resamples under that checkpoint's weights; each transition judged against the noise of
    its two checkpoints (pooled)."""
    p, run = ctx.preset, f"{ctx.fid}-ko2-full"
    train = TrainConfig(method="full", learning_rate=p.finetune_lr, max_steps=p.finetune_steps,
                        checkpoints=p.checkpoints, batch_size=p.batch_size, grad_accum=1, seed=p.seed,
                        warmup_steps=max(1, min(30, p.finetune_steps // 10)), weight_decay=0.5,
                        separator=p.separator, bos=True)
    steps = checkpoint_steps(p.finetune_steps, p.checkpoints)
    snaps = WeightSnapshots(steps)
    cfg = IngestConfig(model=str(model_dir), data=str(data), run_id=run, train=train, scoring=ctx.scoring,
                       device=ctx.device, state_dir=str(ctx.state))
    ctx.echo(f"KO2: full fine-tuning {p.finetune_steps} steps, circuits at steps {steps}")
    run_ingest(cfg, ctx.driver, ctx.database, progress=False, echo=lambda *_: None, extra_callbacks=[snaps])
    ctx.use(run, "KO2", "fine-tuning run")
    adapter = load_model(str(model_dir))
    pairs = load_split(data, "circuit")[:p.examples]
    prov = dataset_provenance(data)
    noise: dict[int, list[dict]] = {}
    for step in steps:
        nrun = f"{run}~noise@{step}"
        done = set(CircuitWriter(ctx.driver, ctx.database).complete_steps(nrun))
        if len(done) < p.noise_samples:
            if step not in snaps.weights:
                raise UserError(f"run {run} is stored but its step-{step} weights are gone (a rerun after an "
                                f"interruption): delete the runs of {ctx.fid} and run again")
            adapter.model.load_state_dict(snaps.weights[step])
            sets = dict(enumerate(R.bootstrap_samples(pairs, p.noise_samples, seed=p.seed + step)))
            store_circuits(ctx, nrun, "checkpoint", R.score_sets(adapter.model, adapter.tokenizer, sets,
                                                                 ctx.scoring),
                           {"analysis": "noise", "of_run": run, "noise_step": step, "samples": p.noise_samples},
                           adapter.model, prov.get("task", ""), prov.get("content_hash", ""))
        ctx.use(nrun, "KO2", f"noise at step {step}")
        noise[step] = pairwise_changes(ctx.store, [f"{nrun}:{k}" for k in range(p.noise_samples)])
    out = ko2_judge(ctx.store, run, noise)
    out["ko3_base"] = save_ko3_base(ctx, out["checkpoints"], snaps, adapter)
    return out


def save_ko3_base(ctx: Ctx, checkpoints: list[dict], snaps: WeightSnapshots, adapter) -> dict:
    """KO3's starting model: the first KO2 checkpoint after step 0 at or above ko3_base_accuracy, else
    the last but one, saved as a model folder (a model that has begun to learn, as the paper's
    Pythia had: LoRA variants can then be told apart within a few hundred steps)."""
    later = checkpoints[1:]
    pick = next((c for c in later if c["accuracy"] >= ctx.preset.ko3_base_accuracy), later[max(0, len(later) - 2)])
    out = ctx.state / "findings" / f"ko3-base-{ctx.fid}-step{pick['step']}"
    if not (out / "config.json").exists():
        if pick["step"] not in snaps.weights:
            raise UserError(f"the step-{pick['step']} weights of {ctx.fid}'s KO2 run are gone (a rerun after "
                            f"an interruption): delete the runs of {ctx.fid} and run again")
        adapter.model.load_state_dict(snaps.weights[pick["step"]])
        adapter.model.save_pretrained(str(out))
        adapter.tokenizer.save_pretrained(str(out))
    return {"step": pick["step"], "accuracy_%": pick["accuracy"], "model": str(out)}


def ko2_judge(store: Store, run: str, noise: dict[int, list[dict]]) -> dict:
    churn = store.churn(run, HEAD)["transitions"]
    rate = store.change_rate(run, HEAD)
    metrics = QF.run_metrics(store, run)
    s0n, s0e = churn[0]["nodes_before"], churn[0]["edges_before"]
    rows, diffs, excess = [], [], []
    for t in churn:
        pool = noise[t["from_step"]] + noise[t["to_step"]]
        n_edges = [x["edges_changed"] for x in pool]
        n_nodes = [x["nodes_changed"] for x in pool]
        node_rate, edge_rate = 100.0 * t["nodes_changed"] / s0n, 100.0 * t["edges_changed"] / s0e
        diffs.append(edge_rate - node_rate)
        excess.append(t["edges_changed"] - max(n_edges))
        rows.append({"transition": f"{t['from_step']}->{t['to_step']}", "nodes_changed": t["nodes_changed"],
                     "edges_changed": t["edges_changed"], "node_change_%": node_rate, "edge_change_%": edge_rate,
                     "edge_noise_mean": sum(n_edges) / len(n_edges), "edge_noise_max": max(n_edges),
                     "node_noise_max": max(n_nodes), "edges_above_noise": t["edges_changed"] > max(n_edges),
                     "nodes_above_noise": t["nodes_changed"] > max(n_nodes)})
    v_rate = F.judge("edge change rate exceeds node change rate, per transition (points of % of S_0)",
                     F.measure(diffs, unit=" pts", what="transitions"), 0.0)
    v_noise = F.judge("edge churn exceeds the resampling noise of its checkpoints (edges above the noise max)",
                      F.measure(excess, what="transitions"), 0.0,
                      why_inconclusive="the interval of the excess over the noise max reaches 0: some transitions change "
                                       "no more edges than resampling alone does")
    verdicts = [v_rate, v_noise]
    return {"key": "KO2", "title": "Edges change more than nodes",
            "quote": "Fine-tuning performs more significant edge modifications than node modifications.",
            "verdict": F.combine(verdicts), "subclaims": [v.as_dict() for v in verdicts],
            "node_change_rate_%": rate["node_change_rate"], "edge_change_rate_%": rate["edge_change_rate"],
            "transitions": rows, "checkpoints": metrics, "run": run,
            "accuracy_first_%": metrics[0]["accuracy"], "accuracy_last_%": metrics[-1]["accuracy"],
            "noise": {str(k): v for k, v in noise.items()}}


# -- KO1 ---------------------------------------------------------------------------------------------

def ko1_robustness(ctx: Ctx, models: dict, data: Path) -> dict:
    """Circuits of each model (label -> (model, tokenizer)) at every perturbation level and on every
    disjoint split; faithfulness of the clean circuits; Jaccard vs level and across splits."""
    p, prov = ctx.preset, dataset_provenance(data)
    perturbed = {round(100 * st["level"]): st for st in prov.get("perturbations", {}).get("levels", [])}
    too_few = [lv for lv, st in perturbed.items() if st["perturbed"] < 0.5 * st["chosen"]]
    avail = available_splits(data)
    levels, splits = R.level_splits(avail), R.disjoint_splits(avail)
    out_models, verdicts = {}, []
    for label, (model, tok) in models.items():
        ctx.echo(f"KO1: {label}: circuits at levels {list(levels)} and on {len(splits)} disjoint splits")
        lrun = score_and_store(ctx, f"{ctx.fid}-ko1-{label}", label, model, tok,
                               {lv: load_split(data, name)[:p.examples] for lv, name in levels.items()},
                               {"analysis": "robustness", "of_run": f"{ctx.fid}-ko2-full"}, prov.get("task", ""),
                               prov.get("content_hash", ""))
        srun = score_and_store(ctx, f"{ctx.fid}-ko1-{label}-splits", label, model, tok,
                               {k: load_split(data, name)[:p.examples] for k, name in splits.items()},
                               {"analysis": "splits", "of_run": f"{ctx.fid}-ko2-full"}, prov.get("task", ""),
                               prov.get("content_hash", ""))
        ctx.use(lrun, "KO1", f"{label}: perturbation levels")
        ctx.use(srun, "KO1", f"{label}: disjoint splits")
        level_j = {lv: ctx.store.jaccard(f"{lrun}:0", f"{lrun}:{lv}", HEAD)["edge_jaccard"] for lv in list(levels)[1:]}
        split_j = [x["edge_jaccard"] for x in pairwise_changes(ctx.store, [f"{srun}:{k}" for k in splits])]
        faith = [m["faithfulness"] for m in QF.run_metrics(ctx.store, lrun) if m["step"] == 0]
        faith += [m["faithfulness"] for m in QF.run_metrics(ctx.store, srun)]
        acc = [m["accuracy"] for m in QF.run_metrics(ctx.store, srun)]
        mf, mj, ms = (F.measure(faith, "%", "clean circuits"), F.measure(list(level_j.values()), what="levels"),
                      F.measure(split_j, what="split pairs"))
        out_models[label] = {"faithfulness": asdict(mf), "faithfulness_values_%": faith,
                             "level_jaccard": {str(k): v for k, v in level_j.items()},
                             "split_jaccard": split_j, "accuracy_%": asdict(F.measure(acc, "%", "splits")),
                             "runs": [lrun, srun]}
        if label != "random":  # the paper's claim is about trained models; random is the contrast
            verdicts += [F.judge(f"{label}: faithfulness above 80% (Fig. 2)", mf, 80.0),
                         F.judge(f"{label}: edge Jaccard under perturbation above 0.9 (Fig. 2)", mj, 0.9)
                         if not too_few else
                         F.Verdict(f"{label}: edge Jaccard under perturbation above 0.9 (Fig. 2)", mj, 0.9,
                                   outcome=F.INCONCLUSIVE, reason=f"levels {too_few}: fewer than half the chosen "
                                   "rows could be perturbed (the dataset leaves no new prompts)"),
                         F.judge(f"{label}: edge Jaccard across disjoint splits above 0.9 (rebuttal)", ms, 0.9)]
    return {"key": "KO1", "title": "Faithful and robust circuits in pre-trained and fine-tuned models",
            "quote": "Circuits can be identified in both pre-trained and fine-tuned models with high "
                     "faithfulness and robustness, regardless of their significant performance differences.",
            "verdict": F.combine(verdicts), "subclaims": [v.as_dict() for v in verdicts],
            "levels_%": list(levels), "models": out_models, "data": str(data),
            "perturbed_rows": {str(lv): st for lv, st in perturbed.items()}}
