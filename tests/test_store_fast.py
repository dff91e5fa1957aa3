"""The store's fast paths give the answers of the slow ones (issue 19, second pass):

* queries/prune.py's array pruning keeps exactly the edges of analysis.pruning's worklist;
* churn of a re-selected circuit (pruned or not, head or q/k/v level, any prefix definition) equals
  the symmetric differences computed here from the checkpoints as written, pruned by the worklist;
* the leading arrays (`top_keys`, `top_scores`, `n_top`) hold the first ranks, and a checkpoint
  written without them (before they existed) gives the same answers to every query;
* the union merged in Python equals the method's rule computed by hand;
* list parameters reach the server unchanged and with a short repr.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from analysis.pruning import prune_keys as worklist_prune
from queries.api import CircuitDefinition, Store
from queries.sets import union_rows
from queries.components import Architecture
from queries.params import QuietList, quiet
from queries.prune import prune_keys
from queries.writer import CheckpointData, CircuitWriter, RunRecord, ranked_arrays

ARCH = Architecture(4, 4, True, 2)  # grouped-query: shared k/v edges have several readers
TOP = ["top_keys", "top_scores", "n_top"]


def qkv_names(arch):
    return [n for n in arch.key_of if n.endswith(">") or not n.split("->")[1].startswith("a")]


@pytest.mark.parametrize("shape", [(2, 2, True, None), (3, 2, False, None), (3, 4, False, 2), (4, 4, True, 1),
                                   (4, 8, True, 2), (5, 6, False, 3)])
def test_array_pruning_is_the_worklist_rule(shape):
    arch = Architecture(*shape)
    keys = [arch.key_of[n] for n in qkv_names(arch)]
    rng = random.Random(len(keys))
    changed = 0
    for _ in range(150):
        chosen = rng.sample(keys, rng.randint(1, len(keys)))
        fast = prune_keys(arch, chosen)
        assert fast == worklist_prune(arch, chosen)[0]
        changed += len(fast) < len(chosen)
    assert changed > 20 and prune_keys(arch, []) == []


def drifting(n_ckpt=5, frac=0.15, seed=11):
    names = qkv_names(ARCH)
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal(len(names)) * np.exp(rng.standard_normal(len(names)))
    out = []
    for step in range(n_ckpt):
        scores = scores + 0.6 * rng.standard_normal(len(names))
        scores[rng.integers(0, len(names), 5)] = 0.75  # ties in |score|: broken by key
        flags = np.abs(scores) >= np.quantile(np.abs(scores), 1 - frac)
        out.append(CheckpointData(step * 5, names, scores.tolist(), flags.tolist(), "qkv"))
    return out


CHECKPOINTS = drifting()


@pytest.fixture
def store(db):
    driver, database = db
    writer = CircuitWriter(driver, database)
    writer.ensure_run(RunRecord(id="fast"), ARCH)
    for c in CHECKPOINTS:
        writer.write_checkpoint("fast", ARCH, c)
    return Store(driver, database)


def expected_churn(definition: CircuitDefinition) -> list[tuple]:
    """(edges added, removed, before, nodes added, removed, before) per transition, from the data."""
    sets = []
    for c in CHECKPOINTS:
        a = ranked_arrays(ARCH, c)
        keys, scores, n = a["keys"], np.abs(a["scores"]), len(a["keys"])
        if definition.mode == "in_graph":
            chosen = [keys[r - 1] for r in a["in_graph"]]
        else:
            cut = {"top_n": lambda v: int(v), "top_frac": lambda v: int(np.floor(v * n)),
                   "threshold": lambda v: int((scores >= v).sum()),
                   "percentile": lambda v: int((scores >= np.percentile(scores, v)).sum())}[definition.mode]
            chosen = keys[:cut(definition.value)]
            if definition.prune:
                chosen = [chosen[i] for i in worklist_prune(ARCH, chosen)[0]]
        edges = {k // 4 if definition.level == "head" else k for k in chosen}
        nodes = {x for k in chosen for x in divmod(k // 4, ARCH.n_components)}
        sets.append((edges, nodes))
    return [(len(eb - ea), len(ea - eb), len(ea), len(nb - na), len(na - nb), len(na))
            for (ea, na), (eb, nb) in zip(sets, sets[1:])]


DEFINITIONS = [CircuitDefinition(), CircuitDefinition(level="qkv"),
               CircuitDefinition("top_frac", 0.05), CircuitDefinition("top_frac", 0.05, "qkv"),
               CircuitDefinition("top_frac", 0.05, prune=False), CircuitDefinition("top_frac", 0.3),
               CircuitDefinition("top_n", 40, "qkv", False), CircuitDefinition("threshold", 1.5),
               CircuitDefinition("percentile", 90, "qkv")]


@pytest.mark.parametrize("definition", DEFINITIONS, ids=lambda d: d.describe())
def test_churn_of_any_definition_is_the_set_difference(store, definition):
    got = [(t["edges_added"], t["edges_removed"], t["edges_before"], t["nodes_added"], t["nodes_removed"],
            t["nodes_before"]) for t in store.churn("fast", definition)["transitions"]]
    assert got == expected_churn(definition)


def test_leading_arrays_hold_the_first_ranks(store):
    rows = store.read("MATCH (c:Checkpoint {run: 'fast'}) RETURN c.keys AS k, c.scores AS s, "
                      "c.top_keys AS tk, c.top_scores AS ts, c.n_top AS n, c.in_graph AS g")
    for r in rows:
        assert r["n"] == len(r["tk"]) == len(r["ts"]) >= max(-(-len(r["k"]) // 10), r["g"][-1])
        assert r["tk"] == r["k"][:r["n"]] and r["ts"] == r["s"][:r["n"]]
    # the own circuit reaches rank 2, past the leading tenth (1 of 2 edges): kept whole
    a = ranked_arrays(ARCH, CheckpointData(0, ["input->m0", "m0->logits"], [1.0, -2.0], [True, False]))
    assert a["top"] == {"top_keys": a["keys"], "top_scores": a["scores"], "n_top": 2}


def answers(store: Store) -> dict:
    a, b = "fast:0", "fast:20"
    out = {}
    for d in DEFINITIONS + [CircuitDefinition("top_frac", 0.5, prune=False)]:  # 0.5: past the leading tenth
        out[d] = [store.churn("fast", d)["transitions"], store.per_layer(a, b, d)["layers"],
                  store.jaccard(a, b, d), store.node_bound(a, b, d), store.circuit_edges(b, d)[1]]
        if d.level == "head":
            out[d] += [store.overlap(a, b, d, [2, 4])["overlap"], store.union_edges(a, b, d, 25)[1],
                       store.critical_layers(a, b, d, 2), store.diff(a, b, d)]
    return out


def test_checkpoints_without_leading_arrays_give_the_same_answers(store):
    new = answers(store)
    store.driver.execute_query("MATCH (c:Checkpoint {run: 'fast'}) WHERE c.step IN [5, 15] "
                               "REMOVE c.top_keys, c.top_scores, c.n_top", database_=store.database)
    assert answers(store) == new
    store.driver.execute_query("MATCH (c:Checkpoint {run: 'fast'}) REMOVE c.top_keys, c.top_scores, c.n_top, "
                               "c.head_keys, c.head_scores, c.head_mask, c.circuit_nodes, c.node_mask",
                               database_=store.database)
    assert answers(store) == new  # nothing precomputed at all: the arrays alone


def test_union_rows_follow_the_method():
    a = {"pos": 0, "keys": [7, 3, 5, 9], "scores": [4.0, -3.0, 2.0, -2.0]}
    b = {"pos": 1, "keys": [3, 8, 5], "scores": [-5.0, 2.0, -1.0]}
    # 3: (-3 - 5) / 2 = -4; 5: (2 - 1) / 2 = 0.5; 7: 4; 9: -2; 8: 2 -> |s| 4, 4, 2, 2, 0.5, ties by key
    assert union_rows([a, b], None) == [{"key": 3, "s": -4.0}, {"key": 7, "s": 4.0}, {"key": 8, "s": 2.0},
                                        {"key": 9, "s": -2.0}, {"key": 5, "s": 0.5}]
    assert union_rows([a, b], 2) == union_rows([a, b], None)[:2]
    assert union_rows([b], None)[0] == {"key": 3, "s": -5.0} and union_rows([], None) == []


def test_list_parameters_are_quiet_and_unchanged(db):
    driver, database = db
    scores = [0.1 * i for i in range(100_000)]
    params = quiet({"s": scores, "m": {"a": [1, 2]}, "x": 3})
    assert isinstance(params["s"], QuietList) and isinstance(params["m"]["a"], QuietList) and params["x"] == 3
    assert repr(params["s"]) == "<list of 100000>"
    records, _, _ = driver.execute_query("RETURN $s AS s, $m AS m", params, database_=database)
    assert records[0]["s"] == scores and records[0]["m"] == {"a": [1, 2]}


def test_writer_looks_up_names_changed_in_place(db):
    driver, database = db
    arch = Architecture(2, 1, True)
    writer = CircuitWriter(driver, database)
    writer.ensure_run(RunRecord(id="names"), arch)
    names = ["input->m0", "m0->logits", "input->a0.h0<q>"]
    writer.write_checkpoint("names", arch, CheckpointData(0, names, [3.0, 2.0, 1.0], [True, True, False]))
    names[2] = "a0.h0->logits"  # same list object, another edge
    writer.write_checkpoint("names", arch, CheckpointData(1, names, [3.0, 2.0, 1.0], [True, True, False]))
    records, _, _ = driver.execute_query("MATCH (c:Checkpoint {run: 'names', step: 1}) RETURN c.keys AS k",
                                         database_=database)
    assert records[0]["k"] == [arch.key_of[n] for n in names]
