"""The own circuit's head-level sets written with each checkpoint (queries/writer.py own_circuit_sets):
the default definition (in_graph, head) reads them, and a checkpoint written before them (no sets) is
answered by the ranked path with the same numbers, alone or mixed with new ones in one run."""

from __future__ import annotations

import numpy as np
import pytest

from queries.api import CircuitDefinition, Store
from queries.components import Architecture
from queries.writer import CheckpointData, CircuitWriter, RunRecord, ranked_arrays

ARCH = Architecture(3, 2, True)
OWN = CircuitDefinition()
SETS = ["head_keys", "head_scores", "head_mask", "circuit_nodes", "node_mask"]


def drifting(n_ckpt: int = 4, frac: float = 0.2, seed: int = 3) -> list[CheckpointData]:
    """q/k/v-level checkpoints whose top `frac` edges (by |score|) are the circuit."""
    names = [n for n in ARCH.key_of if n.endswith(">") or not n.split("->")[1].startswith("a")]
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal(len(names))
    out = []
    for step in range(n_ckpt):
        scores = scores + 0.5 * rng.standard_normal(len(names))
        flags = np.abs(scores) >= np.quantile(np.abs(scores), 1 - frac)
        out.append(CheckpointData(step * 10, names, scores.tolist(), flags.tolist(), "qkv"))
    return out


def answers(store: Store, run: str) -> dict:
    a, b = f"{run}:0", f"{run}:30"
    return {"churn": store.churn(run, OWN)["transitions"], "per_layer": store.per_layer(a, b, OWN)["layers"],
            "diff": store.diff(a, b, OWN), "overlap": store.overlap(a, b, OWN, [3, 10])["overlap"],
            "jaccard": store.jaccard(a, b, OWN), "critical": store.critical_layers(a, b, OWN, 2),
            "bound": store.node_bound(a, b, OWN), "union": store.union_edges(a, b, OWN, None)[1],
            "edges": store.circuit_edges(b, OWN)[1]}


@pytest.fixture
def stored(db):
    driver, database = db
    writer = CircuitWriter(driver, database)
    writer.ensure_run(RunRecord(id="pre"), ARCH)
    for c in drifting():
        writer.write_checkpoint("pre", ARCH, c)
    return Store(driver, database)


def strip_sets(store: Store, steps) -> None:
    """Make checkpoints look written before the sets existed."""
    store.driver.execute_query(
        "MATCH (c:Checkpoint {run: 'pre'}) WHERE c.step IN $steps "
        "REMOVE c.head_keys, c.head_scores, c.head_mask, c.circuit_nodes, c.node_mask",
        steps=list(steps), database_=store.database)


def test_sets_match_the_collapsed_circuit():
    cp = drifting(1)[0]
    arrays = ranked_arrays(ARCH, cp)
    collapsed: dict[int, float] = {}
    for r in arrays["in_graph"]:
        pair = arrays["keys"][r - 1] // 4
        collapsed[pair] = collapsed.get(pair, 0.0) + arrays["scores"][r - 1]
    sets = arrays["sets"]
    assert dict(zip(sets["head_keys"], sets["head_scores"])) == collapsed
    assert sets["head_keys"] == sorted(collapsed, key=lambda k: (-abs(collapsed[k]), k))
    assert [i for i, m in enumerate(sets["head_mask"]) if m] == sorted(collapsed)
    n = ARCH.n_components
    nodes = sorted({x for k in collapsed for x in divmod(k, n)})
    assert sets["circuit_nodes"] == nodes and [i for i, m in enumerate(sets["node_mask"]) if m] == nodes


def test_checkpoints_without_sets_give_the_same_answers(stored):
    new = answers(stored, "pre")
    strip_sets(stored, [10, 30])  # mixed: two old-style checkpoints among new ones
    assert answers(stored, "pre") == new
    strip_sets(stored, [0, 10, 20, 30])
    assert answers(stored, "pre") == new
    assert not stored.run_info("pre")["precomputed"][0]
