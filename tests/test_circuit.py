"""Circuit selection, pruning, q/k/v collapse and EAP-IG JSON (no model needed)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from analysis.circuit import (SELECTORS, Circuit, collapse, from_eap_json, level_edges, prune_circuit,
                              select_circuit, split_edge_name, to_eap_json)
from analysis.errors import UserError
from analysis.graph import GraphSpec, build_graph
from ingest.cli import main
from ingest.eap_json import read_eap_json

SHARED = Path(__file__).resolve().parents[2] / "shared"
SPECS = [GraphSpec(3, 2, True), GraphSpec(2, 3, False)]


def rand_scores(spec, seed=0, dyadic=False):
    rng = random.Random(seed)
    names = [e.name for e in build_graph(spec).edges]
    if dyadic:  # multiples of 1/8: every sum is exact, in any order
        return {n: rng.randint(-64, 64) / 8 for n in names}
    return {n: rng.gauss(0, 1) * 10 ** rng.uniform(-8, -4) for n in names}


def naive_prune(edges: set[str]) -> set[str]:
    """Sweep until nothing changes: drop edges out of childless or into parentless nodes."""
    edges = set(edges)
    while True:
        parsed = [split_edge_name(e)[:2] for e in edges]
        has_child = {s for s, _ in parsed} | {"logits"}
        has_parent = {d for _, d in parsed} | {"input"}
        keep = {e for e, (s, d) in zip(edges, parsed) if s in has_parent and d in has_child}
        if keep == edges:
            return edges
        edges = keep


# ----------------------------------------------------------------------------- selection
@pytest.mark.parametrize("spec", SPECS)
def test_top_n_and_top_frac_take_largest_abs(spec):
    s = rand_scores(spec)
    c = select_circuit(s, spec, "top_n", 17, prune=False)
    want = set(sorted(s, key=lambda n: -abs(s[n]))[:17])
    assert set(c.edges) == want and c.meta["selected_edges"] == 17
    assert all(c.edges[n] == s[n] for n in c.edges)
    assert c.nodes == {x for n in want for x in split_edge_name(n)[:2]}
    f = select_circuit(s, spec, "top_frac", 0.1, prune=False)
    assert f.n_edges == int(0.1 * len(s))
    signed = select_circuit(s, spec, "top_n", 5, prune=False, absolute=False)
    assert set(signed.edges) == set(sorted(s, key=lambda n: -s[n])[:5])


def test_ties_follow_graph_order():
    spec = SPECS[0]
    s = dict.fromkeys(level_edges(spec, "qkv"), 1.0)
    c = select_circuit(s, spec, "top_n", 7, prune=False)
    assert list(c.edges) == list(level_edges(spec, "qkv"))[:7]


def test_paper_five_percent_of_pythia_1_4b():
    spec = GraphSpec(24, 16, True)
    names = level_edges(spec, "qkv")
    assert len(names) == 231_493 and len(level_edges(spec, "head")) == 80_581
    s = {n: float(i % 997) for i, n in enumerate(names)}
    assert select_circuit(s, spec, "top_frac", 0.05, prune=False).n_edges == 11_574


@pytest.mark.parametrize("spec", SPECS)
def test_threshold_and_percentile(spec):
    s = rand_scores(spec, 1)
    t = sorted(abs(v) for v in s.values())[-12]
    c = select_circuit(s, spec, "threshold", t, prune=False)
    assert set(c.edges) == {n for n, v in s.items() if abs(v) >= t} and c.n_edges == 12
    p = select_circuit(s, spec, "percentile", 90, prune=False)
    cut = np.percentile(np.abs(list(s.values())), 90)
    assert set(p.edges) == {n for n, v in s.items() if abs(v) >= cut}
    assert 0.08 * len(s) <= p.n_edges <= 0.12 * len(s)


@pytest.mark.parametrize("spec", SPECS)
def test_greedy_matches_naive_growth(spec):
    s = rand_scores(spec, 2)
    got = select_circuit(s, spec, "greedy", 15, prune=False)
    nodes, chosen = {"logits"}, []
    for _ in range(15):  # O(n^2) reference: best |score| edge into a node already in the circuit
        best = max((n for n in s if n not in chosen and split_edge_name(n)[1] in nodes), key=lambda n: abs(s[n]))
        chosen.append(best)
        nodes.add(split_edge_name(best)[0])
    assert set(got.edges) == set(chosen)
    # every greedy edge reaches the logits, so pruning only removes parentless branches
    assert all(split_edge_name(n)[1] in nodes for n in got.edges)


def test_registry_has_the_five_methods():
    assert set(SELECTORS) == {"top_n", "top_frac", "threshold", "percentile", "greedy"}


@pytest.mark.parametrize("method,value,message", [
    ("top_n", 0, "empty circuit requested"),
    ("top_n", 10_000, "out of range"),
    ("top_n", 2.5, "whole number"),
    ("top_frac", 0.0, "out of range"),
    ("top_frac", 1.5, "out of range"),
    ("top_frac", 0.001, "empty circuit requested"),
    ("threshold", 1.0, "empty circuit"),
    ("percentile", 100, "out of range"),
    ("greedy", 0, "empty circuit requested"),
    ("nope", 1, "unknown selection method"),
])
def test_selection_errors(method, value, message):
    spec = SPECS[0]
    with pytest.raises(UserError, match=message):
        select_circuit(rand_scores(spec), spec, method, value)


def test_scores_of_another_shape_are_refused():
    s = rand_scores(GraphSpec(3, 2, True))
    with pytest.raises(UserError, match="not in a 2-layer x 2-head graph"):
        select_circuit(s, GraphSpec(2, 2, True), "top_n", 3)
    with pytest.raises(UserError, match="no edge scores"):
        select_circuit({}, SPECS[0], "top_n", 3)


# ----------------------------------------------------------------------------- pruning
def test_prune_by_hand():
    spec = GraphSpec(2, 2, True)
    edges = {
        "input->a0.h0<q>": 1.0, "a0.h0->logits": 1.0,  # a live path
        "a0.h1->m1": 1.0,  # a0.h1 parentless, m1 childless
        "input->m0": 1.0, "m0->a1.h0<k>": 1.0,  # a1.h0 childless -> m0 childless -> input->m0 dies
        "input->a1.h1<v>": 1.0, "a1.h1->logits": 1.0,
    }
    c = prune_circuit(Circuit(spec, "qkv", edges, frozenset({"input", "a0.h0", "a0.h1", "m0", "m1", "a1.h0",
                                                              "a1.h1", "logits"})))
    assert set(c.edges) == {"input->a0.h0<q>", "a0.h0->logits", "input->a1.h1<v>", "a1.h1->logits"}
    assert c.nodes == {"input", "a0.h0", "a1.h1", "logits"}
    gone = prune_circuit(Circuit(spec, "qkv", {"input->m0": 1.0, "m0->a1.h0<q>": 1.0}, frozenset()))
    assert not gone.edges and not gone.nodes


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("seed", range(4))
def test_prune_reaches_a_fixed_point_and_is_idempotent(spec, seed):
    s = rand_scores(spec, seed)
    raw = select_circuit(s, spec, "top_frac", 0.15, prune=False)
    once = prune_circuit(raw)
    assert set(once.edges) == naive_prune(set(raw.edges))
    assert set(once.edges) < set(raw.edges) or set(once.edges) == set(raw.edges)
    twice = prune_circuit(once)
    assert twice.edges == once.edges and twice.nodes == once.nodes
    parsed = [split_edge_name(n)[:2] for n in once.edges]
    for node in once.nodes:  # every kept node has a parent (but input) and a child (but logits)
        assert node == "input" or any(d == node for _, d in parsed)
        assert node == "logits" or any(s_ == node for s_, _ in parsed)


# ----------------------------------------------------------------------------- collapse
@pytest.mark.parametrize("spec", SPECS)
def test_collapse_sums_exactly(spec):
    s = rand_scores(spec, 3, dyadic=True)
    c = select_circuit(s, spec, "top_frac", 0.6)
    h = collapse(c)
    assert h.level == "head" and h.nodes == c.nodes and h.all_scores is None
    want: dict[str, float] = {}
    for n, v in c.edges.items():
        key = n.split("<")[0]
        want[key] = want.get(key, 0.0) + v
    assert dict(h.edges) == want
    assert any(sum(f"{k}<{x}>" in c.edges for x in "qkv") > 1 for k in want)  # something really merged
    assert collapse(h) is h
    assert h.qkv_edge_names() >= set(c.edges)


# ----------------------------------------------------------------------------- JSON
@pytest.mark.parametrize("spec", SPECS)
def test_json_round_trip_and_store_reader(spec, tmp_path):
    s = rand_scores(spec, 4)
    c = select_circuit(s, spec, "top_frac", 0.3)
    assert c.n_edges > 3
    doc = to_eap_json(c, tmp_path / "full.json")
    assert doc["cfg"] == {"n_layers": spec.n_layers, "n_heads": spec.n_heads, "parallel_attn_mlp": spec.parallel_attn_mlp}
    assert len(doc["edges"]) == len(s) and sum(e["in_graph"] for e in doc["edges"].values()) == c.n_edges
    r = read_eap_json(tmp_path / "full.json")
    assert (r.level, r.full, len(r.names), sum(r.in_graph)) == ("qkv", True, len(s), c.n_edges)
    assert set(r.nodes_in_graph) == c.nodes
    back = from_eap_json(tmp_path / "full.json", spec)
    assert dict(back.edges) == dict(c.edges) and back.nodes == c.nodes and dict(back.all_scores) == s

    h = collapse(c)
    to_eap_json(h, tmp_path / "head.json")
    r = read_eap_json(tmp_path / "head.json")
    assert (r.level, r.full, len(r.names), sum(r.in_graph)) == ("head", False, h.n_edges, h.n_edges)
    back = from_eap_json(tmp_path / "head.json")
    assert back.level == "head" and dict(back.edges) == dict(h.edges) and back.nodes == h.nodes


def test_reads_the_papers_circuit_files(tmp_path):
    path = SHARED / "reference-circuits" / "graph_add_sub_mul_div_1.4b_epoch0.json"
    if not path.exists():
        pytest.skip("reference circuits not available")
    c = from_eap_json(path, GraphSpec(24, 16, True))
    assert c.level == "head" and c.n_edges == 9153 and len(c.nodes) == 334
    to_eap_json(c, tmp_path / "again.json")
    r = read_eap_json(tmp_path / "again.json")
    assert r.level == "head" and sum(r.in_graph) == 9153
    # re-thresholding an in-graph-only head-level file: the fraction is of the whole head-level graph
    top = select_circuit(dict(c.edges), c.spec, "top_frac", 0.01, prune=False)
    assert top.n_edges == int(0.01 * 80_581)


def test_circuit_file_errors(tmp_path):
    spec = SPECS[0]
    p = tmp_path / "c.json"
    to_eap_json(select_circuit(rand_scores(spec), spec, "top_frac", 0.3), p)
    with pytest.raises(UserError, match="does not match the model"):
        from_eap_json(p, GraphSpec(4, 2, True))
    with pytest.raises(UserError, match="empty circuit cannot be written"):
        to_eap_json(Circuit(spec, "qkv", {}, frozenset()), tmp_path / "empty.json")
    with pytest.raises(UserError, match="no such circuit file"):
        from_eap_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text(json.dumps({"cfg": {"n_layers": 1, "n_heads": 1, "parallel_attn_mlp": True},
                                                    "nodes": {}, "edges": {"a3.h0->logits": {"score": 1.0}}}))
    with pytest.raises(UserError, match="not in a 1 layers"):
        from_eap_json(tmp_path / "bad.json")


# ----------------------------------------------------------------------------- CLI
def run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_cli_select(tmp_path, capsys):
    spec = SPECS[0]
    s = rand_scores(spec, 5)
    scores = tmp_path / "s.json"
    scores.write_text(json.dumps({"format": "circuitshift-scores/1", "graph": {
        "n_layers": spec.n_layers, "n_heads": spec.n_heads, "parallel_attn_mlp": True, "n_edges": len(s)},
        "provenance": {"model": "m"}, "scores": s}))
    out = tmp_path / "c.json"
    code, _, err = run(["circuit", "select", str(scores), "--top-frac", "0.3", "--level", "head", "--out", str(out)],
                       capsys)
    assert code == 0, err
    want = collapse(select_circuit(s, spec, "top_frac", 0.3))
    r = read_eap_json(out)
    assert r.level == "head" and dict(zip(r.names, r.scores)) == dict(want.edges)
    code, _, err = run(["circuit", "select", str(scores), "--greedy", "9", "--out", str(out)], capsys)
    assert code == 0 and read_eap_json(out).full
    code, _, err = run(["circuit", "select", str(out), "--top-n", "12", "--no-prune",
                         "--out", str(tmp_path / "c2.json")], capsys)
    assert code == 0 and sum(read_eap_json(tmp_path / "c2.json").in_graph) == 12  # re-select from a circuit file
    for args, message in [(["--top-n", "0"], "empty circuit requested"),
                          (["--top-n", "99999"], "out of range"),
                          (["--top-n", "3", "--threshold", "0.1"], "give one selection method")]:
        code, _, err = run(["circuit", "select", str(scores), *args, "--out", str(tmp_path / "x.json")], capsys)
        assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
