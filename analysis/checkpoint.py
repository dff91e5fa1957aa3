"""One checkpoint's circuit: score every edge (EAP-IG), select the circuit (top 5%, pruned), evaluate
it (faithfulness, circuit and model accuracy, all in percent): method.md sections 2.3-2.5, on a model
mid-training.

The model may be a peft model in training mode: its adapters are merged for scoring (method.md 2.1:
fine-tuned models are scored with LoRA merged), and afterwards the exact base weights, the
`requires_grad` flags and the train/eval mode are restored, so training continues bit for bit as if
nothing had happened.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch

from analysis.adapter import ModelAdapter
from analysis.circuit import select_circuit
from analysis.distributed import sharded_evaluate_many, sharded_score
from analysis.eap import check_settings
from analysis.errors import UserError
from analysis.graph import build_graph
from analysis.mib import mib_curve


@dataclass
class ScoringConfig:
    """How each checkpoint's circuit is found and measured (defaults: the paper's, method.md 2)."""

    method: str = field(default="eap-ig-inputs", metadata={"help": "EAP-IG variant (analysis.eap.METHODS)."})
    steps: int = field(default=5, metadata={"help": "IG steps m."})
    ig_rule: str = field(default="right", metadata={"help": "right: k=1..m (paper); left: k=0..m-1."})
    metric: str = field(default="kl", metadata={"help": "kl (vocabulary mean) or logit-diff."})
    batch_size: int = field(default=32, metadata={"help": "Scoring and evaluation batch size."})
    top_frac: float = field(default=0.05, metadata={"help": "Circuit = top fraction of edges, then pruned."})
    max_examples: int | None = field(default=None, metadata={"help": "Use at most N circuit-split pairs."})
    top_n: int | None = field(default=None, metadata={
        "help": "Circuit = the top N edges, then pruned (instead of top_frac): for small graphs, where "
                "5% of a few hundred edges is not a circuit."})
    compat: str | None = field(default=None, metadata={
        "help": "hannamw: hannamw/EAP-IG's exact numbers (analysis.eap; implies its IG rule)."})
    chunk: int | None = field(default=None, metadata={
        "help": "Score each batch in micro-batches of at most N examples (same scores, less memory); "
                "default: what fits the accelerator's free memory (the whole batch on the CPU)."})
    mib: bool = field(default=False, metadata={
        "help": "Also MIB's CPR and CMD (analysis.mib: the KL faithfulness of the top-p circuits at MIB's "
                "edge fractions) per checkpoint, stored as cpr, cmd and mib_faithfulness (percent)."})

    def __post_init__(self):
        check_settings(self.method, self.metric, self.steps, self.ig_rule, self.batch_size, self.compat)
        if not 0 < self.top_frac <= 1:
            raise UserError(f"--top-frac must be in (0, 1], got {self.top_frac}")
        if self.top_n is not None and self.top_n < 1:
            raise UserError(f"--top-n must be a positive number of edges, got {self.top_n}")
        if self.chunk is not None and self.chunk < 1:
            raise UserError(f"--chunk must be a positive number of examples, got {self.chunk}")

    @property
    def selection(self) -> tuple[str, float]:
        """(select_circuit method, value): the method's circuit before pruning."""
        return ("top_n", self.top_n) if self.top_n is not None else ("top_frac", self.top_frac)

    def record(self) -> dict:
        """The settings as hashed with a run; top_n, compat and mib only when set, so the hashes of
        top-frac runs without them are those from before the options existed. chunk never: it changes
        the memory used, not the scores (a chunked batch's scores are the batch's, analysis.eap)."""
        d = asdict(self)
        del d["chunk"]
        if not d["mib"]:
            del d["mib"]
        if d["top_n"] is None:
            del d["top_n"]
        if d["compat"] is None:  # as top_n: the hashes of runs without compat are unchanged
            del d["compat"]
        return d


@dataclass
class CheckpointResult:
    names: list[str]
    scores: list[float]
    in_graph: list[bool]
    metrics: dict
    settings: dict


def _is_peft(model) -> bool:
    return hasattr(model, "merge_adapter") and hasattr(model, "get_base_model")


@contextmanager
def scoring_view(model):
    """The plain HF model to score: peft adapters merged; everything restored exactly afterwards."""
    was_training = model.training
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    saved = None
    if _is_peft(model):
        # merge/unmerge is W += BA then W -= BA: not exact in floating point, so keep the base weights
        base = model.get_base_model()
        saved = {n: p.detach().clone() for n, p in base.named_parameters() if "base_layer" in n}
        model.merge_adapter()
        plain = base
    else:
        plain = model
    try:
        yield plain
    finally:
        if saved is not None:
            model.unmerge_adapter()
            with torch.no_grad():
                for n, p in model.get_base_model().named_parameters():
                    if n in saved:
                        p.copy_(saved[n])
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
        model.train(was_training)


def score_checkpoint(model, tokenizer, pairs: Sequence, cfg: ScoringConfig,
                     progress: bool = False) -> CheckpointResult:
    """Score, select and evaluate the circuit of `model` on `pairs` (the held-out circuit split).

    In a distributed run (an initialised process group) every rank must call it: each scores and
    evaluates its shard of the pairs and the sums are all-reduced (analysis.distributed), so every
    rank returns the same result."""
    pairs = list(pairs)[: cfg.max_examples] if cfg.max_examples else list(pairs)
    with scoring_view(model) as plain:
        adapter = ModelAdapter(plain, tokenizer)
        graph = build_graph(adapter.spec)
        result = sharded_score(adapter, graph, pairs, method=cfg.method, metric=cfg.metric, steps=cfg.steps,
                               ig_rule=cfg.ig_rule, batch_size=cfg.batch_size, progress=progress,
                               compat=cfg.compat, chunk=cfg.chunk)
        method, value = cfg.selection
        circuit = select_circuit(result, adapter.spec, method, value)
        if not circuit.edges:
            what = f"top {value:g}" if method == "top_n" else f"top {value:g} of {len(graph.edges)}"
            raise UserError(f"the {what} edges prune to an empty circuit; select more edges (--top-n or "
                            "--top-frac) for a model this small")
        ev = sharded_evaluate_many(adapter, [circuit], pairs, ("kl",), cfg.batch_size, prune=False)[0]
        # sharded like the evaluation above (a collective: every rank calls it, each its own batches)
        mib = mib_curve(adapter, result, pairs, "kl", cfg.batch_size) if cfg.mib else None
    names = [e.name for e in graph.edges]
    scores = graph.edge_scores(result.dense).double().tolist()
    in_graph = [n in circuit.edges for n in names]
    metrics = {"accuracy": ev.model_accuracy, "circuit_accuracy": ev.circuit_accuracy,
               "faithfulness": ev.faithfulness, "f_model": ev.f_model, "f_circuit": ev.f_circuit,
               "parity_max_abs_logit_diff": result.parity, "n_circuit_edges": len(circuit.edges),
               "n_circuit_nodes": len(circuit.nodes), "n_examples": len(pairs),
               "score_seconds": round(result.seconds, 3), "eval_seconds": round(ev.seconds, 3)}
    settings = {**cfg.record(), **result.settings, "selection": f"{method} {value:g} then prune",
                "circuit_edges_selected": circuit.meta.get("selected_edges"),
                "faithfulness_metric": "kl (vocab mean), method.md 2.5"}
    if mib is not None:
        metrics.update(cpr=mib.cpr, cmd=mib.cmd, mib_faithfulness=list(mib.faithfulness))
        settings["mib"] = {"metric": mib.metric, "fractions": list(mib.fractions), "n_edges": list(mib.n_edges)}
    return CheckpointResult(names, scores, in_graph, metrics, settings)
