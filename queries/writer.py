"""Writing runs and scored checkpoints into Neo4j.

Storage design (measured, see BENCHMARKS.md): a relationship per scored edge between 410 dense
component nodes ingested at only ~7k edges/s here, so ALL scored edges of a checkpoint are stored as
two rank-ordered arrays on its `(:Checkpoint)` node: `keys` (edge keys, see queries/components.py) and
`scores` (signed), position i holding the edge of rank i+1 by |score|. Any circuit definition is then
a prefix (top-n, top p%, threshold, percentile), read without scanning. The checkpoint's own circuit
(`in_graph`, the ranks the method kept, e.g. top 5% pruned) is also materialised as
`(:Component)-[:CIRCUIT_EDGE {ck, k, s, r}]->(:Component)` so Neo4j Browser shows it as components
linked to components (stores written up to ec65292 also have run and step on them; nothing reads those).

Beside the arrays, the checkpoint's own circuit is also stored collapsed to head level (issue 19):
`head_keys`/`head_scores` (its distinct head-level pairs, scores summed over q/k/v, by |score|),
`head_mask` (one flag per pair, n_components^2) and `circuit_nodes`/`node_mask`. The default
definition (in_graph, head) reads these instead of unwinding ranks: churn compares neighbours' sets
through their masks in one pass. A checkpoint written before them has none and is answered from its
ranks with the same numbers (queries/cypher/fragments.py SELECT, Store.churn): no migration needed.

The leading ranks are stored a second time (issue 19, second pass): `top_keys`/`top_scores`, the first
`n_top` entries of `keys`/`scores` (the top tenth, and at least every rank of the own circuit). A prefix
definition that fits in them (the paper's top 5%, a top-n up to a tenth, the own circuit's ranks at
q/k/v level) reads ~1/10 of the data: reading a whole 231k-entry `keys` array was most of a
re-selected churn. Checkpoints written before have no `n_top` and are read from the whole arrays.

Every list parameter is sent as a queries.params.QuietList: the driver formats every statement's
parameters for its debug log whether or not it logs, and that repr of a checkpoint's 231k scores took
longer than sending them.

A checkpoint is written in three steps, so a crash never leaves something a query reads as complete
and a re-write replaces instead of duplicating:
  1. `CREATE` a new `(:Checkpoint {complete: false})` with a fresh uid (leftovers of an earlier crashed
     write of the same run and step are removed first);
  2. set its arrays (one transaction, in a second thread) while its CIRCUIT_EDGE relationships are
     created in batches (`UNWIND` over parallel column lists; component nodes fetched once per batch
     and addressed by position: no per-row lookups). The two write different nodes, so the server
     runs them side by side: creating ~11.5k relationships was ~55% of a Pythia-1.4B-shape write and
     the arrays most of the rest (issue 19). Both finish (or fail) before step 3;
  3. in ONE transaction mark it complete and retire any earlier complete version, which is then
     deleted. Queries read only `complete` checkpoints.
"""

from __future__ import annotations

import json
import secrets
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

import numpy as np

from analysis.errors import UserError
from queries.components import Architecture
from queries.cypher import experiments as E
from queries.cypher import views as V
from queries.cypher import writes as S
from queries.params import quiet
from queries.schema import ensure_schema

BATCH = 20_000


@dataclass
class RunRecord:
    """Provenance of a run: where every number stored under it came from."""

    id: str
    model: str = field(default="", metadata={"help": "Model hub name or local path."})
    revision: str = field(default="", metadata={"help": "Model revision, commit or local-folder hash."})
    task: str = field(default="", metadata={"help": "Task name (e.g. add_sub_100)."})
    dataset_hash: str = field(default="", metadata={"help": "Content hash of the dataset manifest."})
    data_split: str = field(default="", metadata={"help": "Which split circuits are scored on."})
    method: str = field(default="", metadata={"help": "Fine-tuning method (lora, full, ...) or 'import'."})
    hparams: dict = field(default_factory=dict, metadata={"help": "Fine-tuning hyper-parameters."})
    seed: int | None = field(default=None, metadata={"help": "Random seed."})
    code_version: str = field(default="", metadata={"help": "circuitshift version and git commit."})
    extra: dict = field(default_factory=dict, metadata={"help": "Anything else worth keeping (JSON)."})
    config_hash: str = field(default="", metadata={"help": "Hash of the resolved job config: a rerun "
                                                          "of a run id must match it."})

    def properties(self) -> dict:
        props = asdict(self)
        props["hparams"] = json.dumps(self.hparams, sort_keys=True)
        props["extra"] = json.dumps(self.extra, sort_keys=True)
        return props


@dataclass
class CheckpointData:
    """One checkpoint's scored edges and metrics, ready to write."""

    step: int
    names: Sequence[str]
    scores: Sequence[float]
    in_graph: Sequence[bool]
    level: str = "qkv"  # 'qkv' or 'head' (collapsed)
    meta: dict = field(default_factory=dict)  # epoch, accuracy, faithfulness, scoring settings, ...


@dataclass(frozen=True)
class PlanRecord:
    """A CircuitLoRA plan as stored: its JSON, the numbers queries read, and the circuits it came from
    (`sources`: [{role: 'before'|'after', uid}])."""

    id: str
    kind: str
    label: str
    json: str
    critical_layers: list[int]
    r_o: int
    r_c: int
    parameter_ratio: float
    before: str | None
    after: str | None
    model: str
    task: str | None
    sources: list[dict]


@dataclass(frozen=True)
class ExperimentRecord:
    """A method comparison: its model, task, seeds, method labels and settings (JSON)."""

    id: str
    task: str | None
    model: str
    seeds: list[int]
    labels: list[str]
    settings: str


def ranked_arrays(arch: Architecture, data: CheckpointData, keys: np.ndarray | None = None) -> dict:
    """Validate a checkpoint and order its edges by rank (|score| descending, ties by edge key).

    Returns `keys` and `scores` aligned by rank (position i holds the edge of rank i+1) and
    `in_graph` (the ranks, 1-based, of the edges in the checkpoint's own circuit), plus `circuit`,
    the columns `src`, `dst`, `k`, `s`, `r` (component indices, key, score, rank) of those in-circuit
    edges, `sets`, the own circuit's head-level sets (own_circuit_sets), and `top`, the leading ranks
    again (top_arrays). `keys`: the names' keys when the caller already has them validated (a writer
    whose checkpoints share one list of names: CircuitWriter.keys_of).
    """
    if not (len(data.names) == len(data.scores) == len(data.in_graph)):
        raise UserError("names, scores and in_graph flags differ in length")
    if data.level not in ("qkv", "head"):
        raise UserError(f"unknown level {data.level!r}; use qkv or head")
    if not data.names:
        raise UserError("a checkpoint needs at least one edge")
    if keys is None:
        keys = edge_keys(arch, data.names)
    channel = keys % 4
    into_head = arch.is_head[arch.destinations_of(keys)]
    if data.level == "head" and channel.any():
        bad = data.names[int(np.argmax(channel > 0))]
        raise UserError(f"edge {bad!r} has a q/k/v suffix but the checkpoint is head-level")
    if data.level == "qkv" and (into_head & (channel == 0)).any():
        bad = data.names[int(np.argmax(into_head & (channel == 0)))]
        raise UserError(f"edge {bad!r} into a head lacks its <q|k|v> suffix at q/k/v level")
    scores = np.asarray(data.scores, dtype=np.float64)
    if not np.isfinite(scores).all():
        i = int(np.argmax(~np.isfinite(scores)))
        raise UserError(f"edge {data.names[i]!r} has score {scores[i]}: scores must be finite")
    order = np.lexsort((keys, -np.abs(scores)))  # last key is primary: |score| descending
    flags = np.asarray(data.in_graph, dtype=bool)[order]
    ranked_keys, ranked_scores = keys[order], scores[order]
    ranks = np.nonzero(flags)[0] + 1
    pair = ranked_keys[flags] // 4
    n = arch.n_components
    in_keys, in_scores = ranked_keys[flags], ranked_scores[flags]
    return {"keys": ranked_keys.tolist(), "scores": ranked_scores.tolist(), "in_graph": ranks.tolist(),
            "sets": own_circuit_sets(arch, pair, in_scores),
            "top": top_arrays(ranked_keys, ranked_scores, ranks),
            "circuit": {"src": (pair // n).tolist(), "dst": (pair % n).tolist(), "k": in_keys.tolist(),
                        "s": in_scores.tolist(), "r": ranks.tolist()}}


def edge_keys(arch: Architecture, names: Sequence[str]) -> np.ndarray:
    """The store keys of edge names, refusing a name not in the graph and a repeated edge."""
    key_of = arch.key_of
    try:
        # map() over the dict's own lookup: half the time of a generator at 231k names
        keys = np.fromiter(map(key_of.__getitem__, names), dtype=np.int64, count=len(names))
    except KeyError as exc:
        raise UserError(f"edge {exc.args[0]!r} is not in a {arch.key} graph") from None
    in_order = np.sort(keys)  # a sort and a neighbour compare: np.unique's hashing took 5x longer
    if (in_order[1:] == in_order[:-1]).any():
        raise UserError("the same edge appears twice")
    return keys


TOP_SHARE = 10  # top_keys/top_scores hold the leading 1/TOP_SHARE of the ranks (and the own circuit)


def top_arrays(keys: np.ndarray, scores: np.ndarray, ranks: np.ndarray) -> dict:
    """The leading ranks again, as `top_keys`/`top_scores` (`n_top` of them): at least the top tenth
    and every rank of the own circuit. A prefix definition that fits (the paper's top 5%, top-n up to
    a tenth, the own circuit's ranks) reads these instead of the whole arrays: at Pythia-1.4B scale
    a whole `keys` array took ~15 ms per checkpoint to read, a tenth ~1/10 of that. ~1 byte per
    scored edge on disk."""
    n = len(keys)
    n_top = min(n, max(-(-n // TOP_SHARE), int(ranks[-1]) if len(ranks) else 0))
    return {"top_keys": keys[:n_top].tolist(), "top_scores": scores[:n_top].tolist(), "n_top": n_top}


def own_circuit_sets(arch: Architecture, pairs: np.ndarray, scores: np.ndarray) -> dict:
    """The checkpoint's own circuit collapsed to head level, precomputed so the default definition
    (in_graph, head) is read without unwinding and re-aggregating ranks (queries/cypher/fragments.py).

    `pairs`/`scores`: the in-circuit edges' head-level pairs (key // 4) and signed scores, in rank
    order. Returns `head_keys`/`head_scores` (distinct pairs and their scores summed over q/k/v, in
    the order |summed score| descending, ties by pair), `head_mask` (`head_mask[pair]`: the pair is in
    the circuit; n_components^2 entries, stored bit-packed), `circuit_nodes` (the ci of every node of
    the circuit, ascending) and `node_mask` (`node_mask[ci]`)."""
    unique, inverse = np.unique(pairs, return_inverse=True)
    summed = np.zeros(len(unique))
    np.add.at(summed, inverse, scores)  # sequential, in rank order: the sum Cypher's sum(s) computes
    order = np.lexsort((unique, -np.abs(summed)))
    n = arch.n_components
    head_mask = np.zeros(n * n, dtype=bool)
    head_mask[unique] = True
    nodes = np.union1d(unique // n, unique % n)
    node_mask = np.zeros(n, dtype=bool)
    node_mask[nodes] = True
    return {"head_keys": unique[order].tolist(), "head_scores": summed[order].tolist(),
            "head_mask": head_mask.tolist(), "circuit_nodes": nodes.tolist(),
            "node_mask": node_mask.tolist()}


class CircuitWriter:
    """Writes architectures, runs and checkpoints. Receives a driver; never opens one."""

    def __init__(self, driver, database: str | None = None, batch_size: int = BATCH):
        self.driver = driver
        self.database = database
        self.batch_size = batch_size
        self._schema_done = False
        self._archs: set[str] = set()
        self._names: tuple | None = None  # (arch key, names, their keys): keys_of
        self._arrays_pool: ThreadPoolExecutor | None = None  # write_checkpoint's second transaction

    def _run(self, statement: str, **params):
        return self.driver.execute_query(statement, quiet(params), database_=self.database, routing_="w")

    def keys_of(self, arch: Architecture, names: Sequence[str]) -> np.ndarray:
        """`edge_keys`, remembered for the last list of names: a run's checkpoints usually share one
        (looking up 231k names was ~40% of ranked_arrays). A later list is compared element by element
        with a copy of the remembered one, so a list changed in place is looked up again."""
        names = names if isinstance(names, list) else list(names)
        last = self._names
        if last is not None and last[0] == arch.key and len(last[1]) == len(names) and last[1] == names:
            return last[2]
        keys = edge_keys(arch, names)
        self._names = (arch.key, list(names), keys)
        return keys

    def ensure_schema(self) -> None:
        if not self._schema_done:
            ensure_schema(self.driver, self.database)
            self._schema_done = True

    def ensure_architecture(self, arch: Architecture) -> None:
        if arch.key in self._archs:
            return
        self.ensure_schema()
        self._run(S.MERGE_ARCHITECTURE, key=arch.key, n_layers=arch.n_layers, n_heads=arch.n_heads,
                  n_kv_heads=arch.n_kv_heads, parallel=arch.parallel_attn_mlp,
                  n_components=arch.n_components, n_edges=arch.n_edges("qkv"),
                  components=arch.components)
        self._archs.add(arch.key)

    def ensure_run(self, run: RunRecord, arch: Architecture) -> None:
        """Create the run (or keep the existing one: its provenance is never overwritten; a rerun
        with another architecture or another job config is refused)."""
        self.ensure_architecture(arch)
        records, _, _ = self._run(S.MERGE_RUN, id=run.id, arch=arch.key, props=run.properties())
        if records and records[0]["arch"] != arch.key:
            raise UserError(f"run {run.id!r} already exists on architecture {records[0]['arch']}, "
                            f"not {arch.key}")
        stored = records[0]["config_hash"] if records else None
        if run.config_hash and stored and stored != run.config_hash:
            raise UserError(f"run {run.id!r} already exists with other settings (config hash "
                            f"{stored[:12]} vs {run.config_hash[:12]}); choose another --run-id")

    def complete_steps(self, run_id: str) -> list[int]:
        records, _, _ = self._run(S.COMPLETE_STEPS, run=run_id)
        return [r["step"] for r in records]

    def write_checkpoint(self, run_id: str, arch: Architecture, data: CheckpointData) -> int:
        """Write one checkpoint atomically (as seen by queries); returns its uid."""
        # validate everything before touching the database
        arrays = ranked_arrays(arch, data, self.keys_of(arch, data.names))
        if not arrays["in_graph"]:
            raise UserError(f"checkpoint {data.step} of run {run_id!r} has no edge in its circuit")
        self.ensure_architecture(arch)
        meta = {k: (json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v)
                for k, v in data.meta.items() if v is not None}
        self.remove_incomplete(run_id, data.step)
        uid = secrets.randbits(62)
        records, _, _ = self._run(S.NEW_CHECKPOINT, run=run_id, step=data.step, uid=uid, level=data.level)
        if not records:
            raise UserError(f"run {run_id!r} does not exist; create it first")
        if self._arrays_pool is None:
            self._arrays_pool = ThreadPoolExecutor(1, thread_name_prefix="circuitshift-arrays")
        arrays_set = self._arrays_pool.submit(
            self._run, S.SET_CHECKPOINT_ARRAYS, uid=uid, meta={**meta, **arrays["sets"], **arrays["top"]},
            keys=arrays["keys"], scores=arrays["scores"], in_graph=arrays["in_graph"])
        try:
            cols = arrays["circuit"]
            for start in range(0, len(cols["k"]), self.batch_size):
                part = {c: v[start:start + self.batch_size] for c, v in cols.items()}
                self._run(S.CREATE_CIRCUIT_EDGES, arch=arch.key, ck=uid, **part)
        except BaseException:
            wait([arrays_set])  # never leave a transaction of this checkpoint running behind an error
            raise
        arrays_set.result()  # its error, if any, before the checkpoint can become complete
        records, _, _ = self._run(S.COMPLETE_CHECKPOINT, uid=uid)
        for old in records[0]["retired"]:
            self.delete_checkpoint(old)
        return uid

    def remove_incomplete(self, run_id: str, step: int) -> None:
        """Delete what a crashed write of (run, step) left behind."""
        records, _, _ = self._run(S.INCOMPLETE_CHECKPOINTS, run=run_id, step=step)
        for rec in records:
            self.delete_checkpoint(rec["uid"])

    def delete_checkpoint(self, uid: int) -> None:
        while True:
            records, _, _ = self._run(S.DELETE_CIRCUIT_EDGES_BATCH, ck=uid, limit=50_000)
            if records[0]["deleted"] == 0:
                break
        self._run(S.DELETE_CHECKPOINT, uid=uid)

    def delete_run(self, run_id: str) -> int:
        records, _, _ = self._run(S.RUN_CHECKPOINT_UIDS, run=run_id)
        for rec in records:
            self.delete_checkpoint(rec["uid"])
        self._run(S.DELETE_RUN, run=run_id)
        return len(records)

    # -- what a run is, plans, experiments and views -----------------------------------------------
    def tag_run(self, run_id: str, tags: dict) -> None:
        """Set `tags` (plain values) on a stored run, e.g. the robustness runs' analysis and of_run."""
        self._run(S.TAG_RUN, id=run_id, tags=tags)

    def write_plan(self, plan: PlanRecord) -> None:
        """Store a CircuitLoRA plan (replacing one of the same id) linked to the circuits it came from."""
        self.ensure_schema()
        self._run(E.MERGE_PLAN, **asdict(plan))

    def link_run_plan(self, run_id: str, plan_id: str) -> None:
        self._run(E.LINK_RUN_PLAN, run=run_id, plan=plan_id)

    def write_experiment(self, experiment: ExperimentRecord) -> None:
        self.ensure_schema()
        self._run(E.MERGE_EXPERIMENT, **asdict(experiment))

    def tag_experiment_run(self, experiment_id: str, run_id: str, label: str, seed: int,
                           trainable_parameters: int, total_parameters: int) -> None:
        """Make a run one cell of an experiment (idempotent), with the numbers the table needs."""
        self._run(E.TAG_EXPERIMENT_RUN, experiment=experiment_id, run=run_id, label=label, seed=seed,
                  parameter_ratio=trainable_parameters / total_parameters,
                  trainable_parameters=trainable_parameters)

    def replace_view(self, view: str, nodes: list[dict], edges: list[dict]) -> None:
        """Write Browser view `view` (queries/exploration.py builds its rows), replacing an older one."""
        self.ensure_schema()
        self._run(V.LABEL_COMPONENTS)
        self._run(V.DELETE_VIEW, view=view)
        self._run(V.WRITE_VIEW_NODES, view=view, rows=nodes)
        if edges:
            self._run(V.WRITE_VIEW_EDGES, view=view, edges=edges)


def write_circuit(driver, database, run: RunRecord, arch: Architecture,
                  checkpoints: Iterable[CheckpointData]) -> list[int]:
    """Convenience: create the run and write each checkpoint."""
    writer = CircuitWriter(driver, database)
    writer.ensure_run(run, arch)
    return [writer.write_checkpoint(run.id, arch, cp) for cp in checkpoints]
