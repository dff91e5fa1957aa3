"""Python entry points of the query library: each runs one or two named statements and returns a dict
whose keys name its figures (the CLI prints these as tables, JSON or CSV).

A circuit is named `RUN:STEP`; which of its scored edges form "the circuit" is a `CircuitDefinition`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from analysis.errors import UserError
from queries.catalog import StoredRecords
from queries.components import Architecture
from queries.cypher import questions as Q
from queries.params import quiet
from queries.prune import surviving
from queries.sets import churn_counts, union_rows

Mode = Literal["in_graph", "top_n", "top_frac", "threshold", "percentile"]


@dataclass(frozen=True)
class CircuitDefinition:
    """Which scored edges of a checkpoint form its circuit, chosen after the fact.

    A chosen prefix (top_n, top_frac, threshold, percentile) is pruned of dead nodes by default, as
    the method's circuit is (method.md 2.4): `top_frac 0.05` is then the checkpoint's stored circuit.
    `prune=False` keeps the raw prefix. Pruning runs at the stored level, before any head collapse.
    """

    mode: Mode = "in_graph"
    value: float | None = None
    level: Literal["qkv", "head"] = "head"
    prune: bool = True

    def __post_init__(self):
        v = self.value
        if self.level not in ("qkv", "head"):
            raise UserError(f"unknown level {self.level!r}; use qkv or head")
        if self.mode == "in_graph":
            return
        if v is None or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise UserError(f"--{self.mode.replace('_', '-')} needs a finite number")
        if self.mode == "top_n" and (v < 1 or int(v) != v):
            raise UserError(f"--top-n must be a positive integer, got {v}")
        if self.mode == "top_frac" and not 0 < v <= 1:
            raise UserError(f"--top-frac must be in (0, 1], got {v}")
        if self.mode == "threshold" and v < 0:
            raise UserError(f"--threshold is on |score| and must be >= 0, got {v}")
        if self.mode == "percentile" and not 0 <= v <= 100:
            raise UserError(f"--percentile must be in [0, 100], got {v}")
        if self.mode not in ("top_n", "top_frac", "threshold", "percentile"):
            raise UserError(f"unknown circuit definition {self.mode!r}")

    @property
    def pruned(self) -> bool:
        return self.prune and self.mode != "in_graph"

    def params(self) -> dict:
        value = self.value if self.value is not None else 0.0
        return {"mode": self.mode, "value": float(value), "level": self.level, "ranks": {}}

    def describe(self) -> str:
        if self.mode == "in_graph":
            what = "the stored circuit (in_graph)"
        else:
            what = {"top_n": "top {:g} edges", "top_frac": "top {:g} of edges",
                    "threshold": "|score| >= {:g}",
                    "percentile": "|score| >= percentile {:g}"}[self.mode].format(self.value)
            what += ", pruned" if self.prune else ", not pruned"
        return f"{what}, {self.level} level"


@dataclass(frozen=True)
class CircuitRef:
    run: str
    step: int
    uid: int
    level: str
    arch: Architecture

    @property
    def name(self) -> str:
        return f"{self.run}:{self.step}"


@dataclass(frozen=True)
class CheckpointEdges:
    """Every scored edge of one stored checkpoint, in rank order (rank i+1 by |score| at index i):
    edge names at the stored level, signed scores, and whether each edge is in the circuit."""

    ref: CircuitRef
    names: list[str]
    scores: list[float]
    in_circuit: list[bool]

    @property
    def level(self) -> str:
        return self.ref.level

    def to_frame(self):
        """A pandas DataFrame: one row per scored edge (rank, name, score, in_circuit)."""
        import pandas as pd
        return pd.DataFrame({"rank": range(1, len(self.names) + 1), "name": self.names,
                             "score": self.scores, "in_circuit": self.in_circuit})


def to_frame(result, table: str | None = None):
    """A Store result as a pandas DataFrame in one call.

    `result` is a list of row dicts, a `CheckpointEdges`, or a Store result dict: its rows are the
    list of row dicts under `table` (default: the only such list, e.g. churn's `transitions`), or the
    dict itself as one row when it has none. The other fields go to `frame.attrs`."""
    import pandas as pd
    if isinstance(result, CheckpointEdges):
        return result.to_frame()
    if isinstance(result, list):
        return pd.DataFrame(result)
    if not isinstance(result, dict):
        raise UserError(f"to_frame takes a Store result (dict or list of rows), not {type(result).__name__}")
    tables = [k for k, v in result.items() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
    if table is None:
        if len(tables) > 1:
            raise UserError(f"the result has several tables ({', '.join(tables)}); name one")
        table = tables[0] if tables else None
    elif table not in result:
        raise UserError(f"no table {table!r} in the result; tables: {', '.join(tables) or 'none'}")
    if table is None:
        return pd.DataFrame([{k: v for k, v in result.items() if not isinstance(v, (list, dict))}])
    frame = pd.DataFrame(result[table])
    frame.attrs.update({k: v for k, v in result.items() if k != table})
    return frame


def parse_ref(text: str) -> tuple[str, int]:
    run, sep, step = text.rpartition(":")
    if not sep or not run:
        raise UserError(f"circuit {text!r} is not of the form RUN:STEP")
    try:
        return run, int(step)
    except ValueError:
        raise UserError(f"circuit {text!r}: STEP must be an integer") from None


def _arch(row: dict) -> Architecture:
    return Architecture(row["n_layers"], row["n_heads"], row["parallel"], row.get("n_kv_heads"))


class Store(StoredRecords):
    """Runs the named statements of queries/cypher/ on one database (READ routing: works on clusters
    and Aura); the reads of stored records come from StoredRecords (queries/catalog.py)."""

    def __init__(self, driver, database: str | None = None):
        self.driver = driver
        self.database = database

    def read(self, statement: str, **params) -> list[dict]:
        records, _, _ = self.driver.execute_query(statement, quiet(params), database_=self.database,
                                                  routing_="r")
        return [r.data() for r in records]

    # -- resolving ---------------------------------------------------------------------------------
    def resolve(self, ref: str) -> CircuitRef:
        run, step = parse_ref(ref)
        rows = self.read(Q.RESOLVE_CHECKPOINT, run=run, step=step)
        if not rows:
            known = self.run_info(run)
            if not known:
                raise UserError(f"no run {run!r} in the database")
            raise UserError(f"run {run!r} has no complete checkpoint at step {step}; "
                            f"steps: {known['steps']}")
        r = rows[0]
        return CircuitRef(run, step, r["uid"], r["level"], _arch(r))

    def pair(self, a: str, b: str, definition: CircuitDefinition) -> tuple[CircuitRef, CircuitRef]:
        ra, rb = self.resolve(a), self.resolve(b)
        if ra.arch != rb.arch:
            raise UserError(f"{ra.name} ({ra.arch.key}) and {rb.name} ({rb.arch.key}) have different "
                            "architectures")
        for r in (ra, rb):
            self._check_level(r.level, definition, r.name)
        return ra, rb

    @staticmethod
    def _check_level(stored: str, definition: CircuitDefinition, name: str) -> None:
        if stored == "head" and definition.level == "qkv":
            raise UserError(f"{name} is stored at head level (collapsed); use --level head")

    @staticmethod
    def arch_params(arch: Architecture) -> dict:
        return {"n_comp": arch.n_components, "hp1": arch.n_heads + 1, "n_layers": arch.n_layers}

    def selection(self, definition: CircuitDefinition, uids: list[int], arch: Architecture) -> dict:
        """The definition's Cypher parameters for these checkpoints. A pruned definition is resolved
        here: each checkpoint's selected prefix is read, pruned (queries/prune.py) and passed as the
        ranks to keep ($mode 'ranks')."""
        params = definition.params()
        if not definition.pruned:
            return params
        ranks = {}
        for r in self.read(Q.SELECTED_PREFIX, uids=list(uids), **params):
            kept = surviving(arch, r["keys"], f"{r['run']}:{r['step']}: {definition.describe()}")
            ranks[str(r["uid"])] = (np.flatnonzero(kept) + 1).tolist()
        return {**params, "mode": "ranks", "ranks": ranks}

    def _two(self, statement, a, b, definition, **extra):
        ra, rb = self.pair(a, b, definition)
        uids = [ra.uid, rb.uid]
        rows = self.read(statement, uids=uids, **self.selection(definition, uids, ra.arch),
                         **self.arch_params(ra.arch), **extra)
        return ra, rb, rows

    def _header(self, definition: CircuitDefinition, **extra) -> dict:
        return {**extra, "definition": asdict(definition), "described_as": definition.describe()}

    # -- the paper's questions ---------------------------------------------------------------------
    def churn(self, run: str, definition: CircuitDefinition) -> dict:
        """Node and edge churn for each transition t -> t+1 of a run (method.md 6.1-6.2)."""
        info = self.run_info(run)
        if not info:
            raise UserError(f"no run {run!r} in the database")
        if len(info["steps"]) < 2:
            raise UserError(f"run {run!r} has {len(info['steps'])} complete checkpoint(s); churn needs 2+")
        for step, level in zip(info["steps"], info["levels"]):
            self._check_level(level, definition, f"{run}:{step}")
        steps = info["steps"]
        if definition.mode == "in_graph" and definition.level == "head" and all(info["precomputed"]):
            counts = self.read(Q.CHURN_OWN_HEAD, run=run)
        else:
            counts = self._churn_ranked(run, definition, info)
        transitions = [{"from_step": steps[c["transition"]], "to_step": steps[c["transition"] + 1],
                        "nodes_added": c["nodes_added"], "nodes_removed": c["nodes_removed"],
                        "nodes_changed": c["nodes_added"] + c["nodes_removed"],
                        "edges_added": c["edges_added"], "edges_removed": c["edges_removed"],
                        "edges_changed": c["edges_added"] + c["edges_removed"],
                        "nodes_before": c["nodes_before"], "edges_before": c["edges_before"]}
                       for c in counts]
        return self._header(definition, run=run, transitions=transitions)

    def _churn_ranked(self, run: str, definition: CircuitDefinition, info: dict) -> list[dict]:
        """Churn counts per transition from the rank-ordered arrays (any definition, any checkpoint):
        one read of every checkpoint's selected keys (Q.RUN_SELECTED_KEYS), pruned and compared here."""
        arch = _arch(info)
        selected = []
        for r in self.read(Q.RUN_SELECTED_KEYS, run=run, **definition.params()):
            keys = np.asarray(r["keys"], dtype=np.int64)
            if definition.pruned:
                keys = keys[surviving(arch, keys, f"{run}:{r['step']}: {definition.describe()}")]
            selected.append(keys)
        return churn_counts(selected, definition.level, arch.n_components)

    def change_rate(self, run: str, definition: CircuitDefinition) -> dict:
        """Delta_S = (1/n) sum_t changes_t / S_0 x 100% for nodes and edges (method.md 6.3)."""
        churn = self.churn(run, definition)
        ts = churn["transitions"]
        s0_nodes, s0_edges = ts[0]["nodes_before"], ts[0]["edges_before"]
        n = len(ts)

        def rate(key, s0):
            return 100.0 * sum(t[key] for t in ts) / n / s0 if s0 else None
        return self._header(definition, run=run, transitions=n, nodes_s0=s0_nodes, edges_s0=s0_edges,
                            node_change_rate=rate("nodes_changed", s0_nodes),
                            edge_change_rate=rate("edges_changed", s0_edges))

    def per_layer(self, a: str, b: str, definition: CircuitDefinition) -> dict:
        """Per-layer added/removed nodes and edges from A to B (edge layer = source layer, input = 0)."""
        ra, _, rows = self._two(Q.PER_LAYER, a, b, definition)
        layers = []
        for layer in range(ra.arch.n_layers + 1):
            e = next((r for r in rows if r["what"] == "edge" and r["layer"] == layer), {})
            n = next((r for r in rows if r["what"] == "node" and r["layer"] == layer), {})
            layers.append({"layer": layer, "nodes_added": n.get("added", 0),
                           "nodes_removed": n.get("removed", 0), "edges_added": e.get("added", 0),
                           "edges_removed": e.get("removed", 0)})
        return self._header(definition, a=a, b=b, layer_rule="edge layer = source node's layer; "
                            "input = layer 0; logits = layer n_layers", layers=layers)

    def diff(self, a: str, b: str, definition: CircuitDefinition, percentile: float = 95.0) -> dict:
        """The paper's before/after difference at the 95th percentile (method.md 6.4)."""
        if not 0 <= percentile <= 100:
            raise UserError(f"--percentile must be in [0, 100], got {percentile}")
        ra, _, rows = self._two(Q.DIFF_PERCENTILE, a, b, definition, pct=float(percentile))
        r = rows[0]
        arch, level = ra.arch, definition.level
        names = [c["name"] for c in arch.components]

        def edge(key):
            return arch.edge_name(key * 4 if level == "head" else key)
        return self._header(
            definition, a=a, b=b, percentile=percentile, threshold_a=r["threshold_a"],
            threshold_b=r["threshold_b"], kept_a=r["kept_a"], kept_b=r["kept_b"],
            edges_added=len(r["added_edges"]), edges_removed=len(r["removed_edges"]),
            nodes_added=len(r["added_nodes"]), nodes_removed=len(r["removed_nodes"]),
            added_edges=sorted(edge(k) for k in r["added_edges"]),
            removed_edges=sorted(edge(k) for k in r["removed_edges"]),
            added_nodes=[names[i] for i in sorted(r["added_nodes"])],
            removed_nodes=[names[i] for i in sorted(r["removed_nodes"])],
            degree={names[i]: d for i, d in r["degree"]})

    def overlap(self, a: str, b: str, definition: CircuitDefinition, ks: list[int]) -> dict:
        """Overlap_k = |Top_k(A) ∩ Top_k(B)| by |score| (method.md 5)."""
        if not ks:
            raise UserError("give at least one --k")
        for k in ks:
            if k < 1:
                raise UserError(f"--k must be a positive integer, got {k}")
        _, _, rows = self._two(Q.OVERLAP, a, b, definition, ks=list(ks))
        size_a, size_b = rows[0]["size_a"], rows[0]["size_b"]
        too_big = [k for k in ks if k > min(size_a, size_b)]
        if too_big:
            raise UserError(f"--k {too_big[0]} is larger than a circuit ({size_a} and {size_b} edges)")
        return self._header(definition, a=a, b=b, size_a=size_a, size_b=size_b,
                            overlap=[{"k": r["k"], "overlap": r["overlap"]} for r in rows])

    def jaccard(self, a: str, b: str, definition: CircuitDefinition) -> dict:
        """Jaccard similarity of the edge sets and of the node sets."""
        _, _, rows = self._two(Q.JACCARD, a, b, definition)
        return self._header(definition, a=a, b=b, **rows[0])

    def critical_layers(self, a: str, b: str, definition: CircuitDefinition, top: int = 5) -> dict:
        """Top layers by summed |score change| (method.md 4): CircuitLoRA's critical layers."""
        if top < 1:
            raise UserError(f"--top must be a positive integer, got {top}")
        ra, _, rows = self._two(Q.CRITICAL_LAYERS, a, b, definition, top=int(top))
        if top > ra.arch.n_layers:
            raise UserError(f"--top {top} exceeds the model's {ra.arch.n_layers} layers")
        r = rows[0]
        return self._header(definition, before=a, after=b, top=top, layers=r["layers"],
                            deltas=r["deltas"], all_layers=r["all_layers"], all_deltas=r["all_deltas"])

    def node_bound(self, a: str, b: str, definition: CircuitDefinition) -> dict:
        """Node-implied edge-change bound, rebuttal and code versions (method.md 6.6)."""
        _, _, rows = self._two(Q.NODE_BOUND, a, b, definition)
        return self._header(definition, a=a, b=b, **rows[0])

    def union_edges(self, a: str, b: str, definition: CircuitDefinition,
                    max_edges: int | None) -> tuple[CircuitRef, list[dict]]:
        """Union of A and B at head level (method.md 5); returns rows {key, s} (head-level keys)."""
        if definition.level != "head":
            raise UserError("a union circuit is built at head level (--level head)")
        if max_edges is not None and max_edges < 1:
            raise UserError(f"--max-edges must be positive, got {max_edges}")
        ra, _, rows = self._two(Q.UNION_SIDES, a, b, definition)
        return ra, union_rows(rows, max_edges)

    def circuit_edges(self, ref: str, definition: CircuitDefinition) -> tuple[CircuitRef, list[dict]]:
        r = self.resolve(ref)
        self._check_level(r.level, definition, r.name)
        rows = self.read(Q.CIRCUIT_EDGES, uids=[r.uid], **self.selection(definition, [r.uid], r.arch))
        return r, rows

    def checkpoint_edges(self, ref: str, definition: CircuitDefinition | None = None) -> CheckpointEdges:
        """Every scored edge of circuit `ref` with its in-circuit flag: the checkpoint's own circuit by
        default, or the edges `definition` selects (at the stored level; its `level` is ignored)."""
        r = self.resolve(ref)
        rows = self.read(Q.CHECKPOINT_ARRAYS, uid=r.uid)
        if not rows:
            raise UserError(f"{r.name} has no complete checkpoint")
        keys, scores = rows[0]["keys"], rows[0]["scores"]
        if definition is None or definition.mode == "in_graph":
            chosen = {keys[i - 1] for i in rows[0]["in_graph"] or []}
        else:
            stored = CircuitDefinition(definition.mode, definition.value, r.level, definition.prune)
            unit = 4 if r.level == "head" else 1  # head-level rows are pairs; stored keys are pair * 4
            chosen = {row["key"] * unit for row in self.read(Q.CIRCUIT_EDGES, uids=[r.uid],
                                                      **self.selection(stored, [r.uid], r.arch))}
        return CheckpointEdges(ref=r, names=[r.arch.edge_name(k) for k in keys],
                               scores=[float(s) for s in scores], in_circuit=[k in chosen for k in keys])


def store_union(driver, database, a: str, b: str, as_ref: str, definition: CircuitDefinition,
                max_edges: int | None = None) -> dict:
    """Build the union of A and B (method.md 5) and store it as circuit `as_ref` (head level), so
    every other query applies to it."""
    from queries.provenance_store import union_run_record
    from queries.writer import CheckpointData, CircuitWriter

    run, step = parse_ref(as_ref)
    store = Store(driver, database)
    ra, rows = store.union_edges(a, b, definition, max_edges)
    if not rows:
        raise UserError(f"the union of {a} and {b} is empty under {definition.describe()}")
    names = [ra.arch.edge_name(r["key"] * 4) for r in rows]
    writer = CircuitWriter(driver, database)
    writer.ensure_run(union_run_record(run, a, b, definition, max_edges), ra.arch)
    data = CheckpointData(step=step, names=names, scores=[r["s"] for r in rows],
                          in_graph=[True] * len(rows), level="head",
                          meta={"source": "union", "union_of": [a, b],
                                "union_definition": definition.describe(), "max_edges": max_edges})
    writer.write_checkpoint(run, ra.arch, data)
    return {"stored_as": as_ref, "a": a, "b": b, "edges": len(rows), "definition": asdict(definition)}
