"""The circuit store and the query library, against a real Neo4j server.

The small circuits below are computed by hand (comments give the arithmetic); the paper's released
circuits must reproduce the published Table 2 row and critical layers through the Cypher queries.
"""

from __future__ import annotations

import json

import pytest

from conftest import SHARED, run_cli
from analysis.errors import UserError
from queries.cypher import writes as S
from queries.api import CircuitDefinition, Store, store_union
from queries.components import Architecture
from queries.writer import CheckpointData, CircuitWriter, RunRecord

# L=2, H=1, parallel: components input(0) a0.h0(1) m0(2) a1.h0(3) m1(4) logits(5); 13 head-level edges.
ARCH = Architecture(2, 1, True)
IN_GRAPH = CircuitDefinition()


def cp(step, edges, extra=None):
    """edges: {name: score} in the circuit; extra: {name: score} scored but not in the circuit."""
    extra = extra or {}
    names = list(edges) + list(extra)
    return CheckpointData(step=step, names=names, scores=[*edges.values(), *extra.values()],
                          in_graph=[True] * len(edges) + [False] * len(extra), level="head")


HAND = [
    cp(0, {"input->a0.h0": 5.0, "a0.h0->m1": -4.0, "m1->logits": 3.0}, {"input->m0": 0.5}),
    cp(10, {"input->a0.h0": 5.0, "a0.h0->a1.h0": 2.0, "a1.h0->logits": -6.0}, {"m1->logits": 1.0}),
    cp(20, {"input->a0.h0": 4.0, "a0.h0->a1.h0": 2.5, "a1.h0->logits": -6.0}, {"input->m0": 0.1}),
]


@pytest.fixture
def hand(db):
    driver, database = db
    writer = CircuitWriter(driver, database)
    writer.ensure_run(RunRecord(id="hand", model="tiny", task="toy", seed=1), ARCH)
    for c in HAND:
        writer.write_checkpoint("hand", ARCH, c)
    return Store(driver, database)


def test_architecture_edge_counts():
    assert ARCH.n_edges("qkv") == 21 and ARCH.n_edges("head") == 13
    assert Architecture(24, 16, True).n_edges("qkv") == 231_493
    assert Architecture(24, 16, True).n_edges("head") == 80_581
    assert Architecture(12, 12, False).n_edges("qkv") == 32_491
    a = Architecture(3, 2, False)
    qkv = [n for n in a.key_of if n.endswith(">") or not n.split("->")[1].startswith("a")]
    head = [n for n in a.key_of if not n.endswith(">")]
    assert len(qkv) == a.n_edges("qkv") and len(head) == a.n_edges("head")


def test_churn_and_change_rate_hand_computed(hand):
    churn = hand.churn("hand", IN_GRAPH)["transitions"]
    # 0 -> 10: edges a0.h0->a1.h0, a1.h0->logits added; a0.h0->m1, m1->logits removed;
    # nodes a1.h0 added, m1 removed. 10 -> 20: same edge set.
    assert [(t["from_step"], t["to_step"]) for t in churn] == [(0, 10), (10, 20)]
    assert [(t["edges_added"], t["edges_removed"], t["edges_changed"]) for t in churn] == [(2, 2, 4), (0, 0, 0)]
    assert [(t["nodes_added"], t["nodes_removed"], t["nodes_changed"]) for t in churn] == [(1, 1, 2), (0, 0, 0)]
    rate = hand.change_rate("hand", IN_GRAPH)
    # edges: (4 + 0) / 2 transitions / |E_0| = 3 -> 66.67%; nodes: (2 + 0) / 2 / |N_0| = 4 -> 25%.
    assert rate["edge_change_rate"] == pytest.approx(200 / 3)
    assert rate["node_change_rate"] == pytest.approx(25.0)


def test_definitions_chosen_after_the_fact(hand):
    # the raw prefixes (prune=False); test_chosen_definitions_are_pruned covers the default
    top2 = hand.churn("hand", CircuitDefinition("top_n", 2, prune=False))["transitions"]
    # top-2 by |score|: {in->a0, a0->m1}, {a1->lg, in->a0}, {a1->lg, in->a0}
    assert (top2[0]["edges_added"], top2[0]["edges_removed"]) == (1, 1)
    assert (top2[0]["nodes_added"], top2[0]["nodes_removed"]) == (2, 1)  # +a1.h0 +logits, -m1
    thr = hand.churn("hand", CircuitDefinition("threshold", 4.5, prune=False))["transitions"]
    # |s| >= 4.5: {in->a0}, {a1->lg, in->a0}, {a1->lg}
    assert [(t["edges_added"], t["edges_removed"]) for t in thr] == [(1, 0), (0, 1)]
    frac = hand.churn("hand", CircuitDefinition("top_frac", 0.5, prune=False))["transitions"]
    # 4 scored edges each -> top 2: the same sets as top-n 2
    assert [(t["edges_added"], t["edges_removed"]) for t in frac] == [(1, 1), (0, 0)]


def test_percentile_definition(db):
    driver, database = db
    writer = CircuitWriter(driver, database)
    writer.ensure_run(RunRecord(id="pct"), ARCH)
    writer.write_checkpoint("pct", ARCH, cp(0, {"input->a0.h0": 3.0, "a0.h0->logits": -2.5,
                                                "m0->logits": 1.0, "input->m1": 0.5, "input->m0": 0.2}))
    store = Store(driver, database)
    # |s| ascending 0.2 0.5 1.0 2.5 3.0: the 50th percentile is 1.0 -> 3 edges; the 80th is
    # 2.5 + 0.2 * (3.0 - 2.5) = 2.6 -> 1 edge.
    assert len(store.circuit_edges("pct:0", CircuitDefinition("percentile", 50, prune=False))[1]) == 3
    assert len(store.circuit_edges("pct:0", CircuitDefinition("percentile", 80, prune=False))[1]) == 1
    # pruned (the default): m0 has no parent among the 3, so m0->logits goes
    _, kept = store.circuit_edges("pct:0", CircuitDefinition("percentile", 50))
    assert sorted(ARCH.edge_name(r["key"] * 4) for r in kept) == ["a0.h0->logits", "input->a0.h0"]
    with pytest.raises(UserError, match="prune to an empty circuit"):
        store.circuit_edges("pct:0", CircuitDefinition("percentile", 80))


def test_chosen_definitions_are_pruned(hand):
    """--top-n/--top-frac are the method's circuits: the prefix, then dead nodes pruned (method.md 2.4)."""
    # step 0 ranked: in->a0 5, a0->m1 -4, m1->lg 3, in->m0 0.5. Top 3 is the path in->a0->m1->lg (kept
    # whole); top 2 ends in m1, which has no child: m1 dies, then a0, so nothing is left.
    _, top3 = hand.circuit_edges("hand:0", CircuitDefinition("top_n", 3))
    assert sorted(ARCH.edge_name(r["key"] * 4) for r in top3) == ["a0.h0->m1", "input->a0.h0", "m1->logits"]
    with pytest.raises(UserError, match="hand:0: top 2 edges, pruned, head level selects 2 edge"):
        hand.churn("hand", CircuitDefinition("top_n", 2))
    # top 3 at steps 10 and 20: in->a0, a1->lg, a0->a1 (and m1->lg / in->m0 are 4th): a path, kept
    churn = hand.churn("hand", CircuitDefinition("top_n", 3))["transitions"]
    assert [(t["edges_added"], t["edges_removed"]) for t in churn] == [(2, 2), (0, 0)]
    assert hand.churn("hand", CircuitDefinition("top_n", 3, prune=False))["transitions"] == churn
    # top 4 at step 0 adds in->m0, whose m0 has no child: pruned away, unlike the raw prefix
    _, top4 = hand.circuit_edges("hand:0", CircuitDefinition("top_n", 4))
    _, raw4 = hand.circuit_edges("hand:0", CircuitDefinition("top_n", 4, prune=False))
    assert len(top4) == 3 and len(raw4) == 4


def test_query_cli_prunes_unless_told_not_to(hand, cli_env):
    def edges(*flags):
        p = run_cli(["query", "churn", "hand", "--top-n", "4", "--format", "json", *flags], env=cli_env)
        assert p.returncode == 0, p.stderr
        return [t["edges_before"] for t in json.loads(p.stdout)["transitions"]]
    # the 4th edge is a dead end at step 0 (in->m0: m0 has no child) and at 10 (m1->lg: m1 has no parent)
    assert edges() == [3, 3] and edges("--no-prune") == [4, 4]


def test_qkv_level_and_collapse(db):
    driver, database = db
    writer = CircuitWriter(driver, database)
    writer.ensure_run(RunRecord(id="q"), ARCH)
    data = CheckpointData(step=0, names=["input->a0.h0<q>", "input->a0.h0<k>", "input->a0.h0<v>",
                                         "input->m0", "a0.h0->logits"],
                          scores=[1.0, -3.0, 0.5, 0.2, 2.5], in_graph=[True] * 5)
    writer.write_checkpoint("q", ARCH, data)
    store = Store(driver, database)
    _, head = store.circuit_edges("q:0", CircuitDefinition(level="head"))
    by_name = {ARCH.edge_name(r["key"] * 4): r["s"] for r in head}
    assert by_name == {"input->a0.h0": pytest.approx(-1.5), "input->m0": 0.2, "a0.h0->logits": 2.5}
    # top-2 at q/k/v level (<k> 3.0 and a0.h0->logits 2.5), then collapsed
    _, top2 = store.circuit_edges("q:0", CircuitDefinition("top_n", 2, "head"))
    assert {ARCH.edge_name(r["key"] * 4): r["s"] for r in top2} == {"input->a0.h0": -3.0,
                                                                     "a0.h0->logits": 2.5}
    _, qkv = store.circuit_edges("q:0", CircuitDefinition(level="qkv"))
    assert sorted(ARCH.edge_name(r["key"]) for r in qkv)[:3] == ["a0.h0->logits", "input->a0.h0<k>",
                                                                  "input->a0.h0<q>"]
    hand_run = CheckpointData(step=0, names=["input->a0.h0"], scores=[1.0], in_graph=[True], level="head")
    writer.ensure_run(RunRecord(id="h"), ARCH)
    writer.write_checkpoint("h", ARCH, hand_run)
    with pytest.raises(UserError, match="head level"):
        store.circuit_edges("h:0", CircuitDefinition(level="qkv"))


def test_pair_queries_hand_computed(hand):
    layers = hand.per_layer("hand:0", "hand:10", IN_GRAPH)["layers"]
    assert layers[0] == {"layer": 0, "nodes_added": 0, "nodes_removed": 0, "edges_added": 1, "edges_removed": 1}
    assert layers[1] == {"layer": 1, "nodes_added": 1, "nodes_removed": 1, "edges_added": 1, "edges_removed": 1}
    assert layers[2]["edges_added"] == layers[2]["edges_removed"] == 0
    # Critical layers: in->a0 |5-5|=0, a0->m1 4, a0->a1 2 (layer 0: 6); m1->lg 3, a1->lg 6 (layer 1: 9)
    crit = hand.critical_layers("hand:0", "hand:10", IN_GRAPH, top=2)
    assert crit["layers"] == [1, 0] and crit["deltas"] == pytest.approx([9.0, 6.0])
    ov = hand.overlap("hand:0", "hand:10", IN_GRAPH, [1, 2, 3])["overlap"]
    assert ov == [{"k": 1, "overlap": 0}, {"k": 2, "overlap": 1}, {"k": 3, "overlap": 1}]
    jac = hand.jaccard("hand:0", "hand:10", IN_GRAPH)
    assert (jac["edge_inter"], jac["edge_union"], jac["node_inter"], jac["node_union"]) == (1, 5, 3, 5)
    assert jac["edge_jaccard"] == pytest.approx(0.2) and jac["node_jaccard"] == pytest.approx(0.6)
    nb = hand.node_bound("hand:0", "hand:10", IN_GRAPH)
    # 2 changed nodes x mean degree 1.5 = bound 3; 4 changed edges, all incident to m1 or a1.h0
    assert (nb["changed_nodes"], nb["changed_edges"], nb["bound"]) == (2, 4, pytest.approx(3.0))
    assert nb["incident_changed_edges"] == 4 and nb["incident_share"] == pytest.approx(1.0)
    # 50th percentile: A keeps |s| >= 4 {in->a0, a0->m1}; B keeps |s| >= 5 {in->a0, a1->lg}
    d = hand.diff("hand:0", "hand:10", IN_GRAPH, percentile=50)
    assert d["added_edges"] == ["a1.h0->logits"] and d["removed_edges"] == ["a0.h0->m1"]
    assert d["added_nodes"] == ["a1.h0"] and d["removed_nodes"] == ["m1"]
    assert d["degree"] == {"input": 1, "a0.h0": 1, "a1.h0": 1, "logits": 1}


def test_union_is_stored_as_a_circuit(hand):
    driver, database = hand.driver, hand.database
    # union: in->a0 avg(5,5)=5, a0->m1 -4, m1->lg 3, a0->a1 2, a1->lg -6; top 3 by |s|
    out = store_union(driver, database, "hand:0", "hand:10", "u:0", IN_GRAPH, max_edges=3)
    assert out["edges"] == 3
    _, rows = hand.circuit_edges("u:0", IN_GRAPH)
    assert {ARCH.edge_name(r["key"] * 4): r["s"] for r in rows} == {
        "a1.h0->logits": -6.0, "input->a0.h0": 5.0, "a0.h0->m1": -4.0}
    assert hand.overlap("u:0", "hand:10", IN_GRAPH, [2])["overlap"] == [{"k": 2, "overlap": 2}]


def test_rewrite_replaces_and_incomplete_is_invisible(hand):
    driver, database = hand.driver, hand.database
    writer = CircuitWriter(driver, database)
    writer.write_checkpoint("hand", ARCH, cp(0, {"input->a0.h0": 5.0, "a0.h0->a1.h0": 2.0,
                                                 "a1.h0->logits": -6.0}))
    # A crashed write: a checkpoint created but never completed.
    driver.execute_query(S.CREATE_CHECKPOINT, run="hand", step=30, uid=12345, level="head", meta={},
                         keys=[4 * (0 * 6 + 1)], scores=[1.0], in_graph=[1], database_=database)
    churn = hand.churn("hand", IN_GRAPH)["transitions"]
    assert [(t["from_step"], t["to_step"], t["edges_changed"]) for t in churn] == [(0, 10, 0), (10, 20, 0)]
    recs, _, _ = driver.execute_query("MATCH (c:Checkpoint {run: 'hand', step: 0}) RETURN count(c) AS n",
                                      database_=database)
    assert recs[0]["n"] == 1
    recs, _, _ = driver.execute_query(
        "MATCH (c:Checkpoint {run: 'hand', step: 0}) MATCH ()-[e:CIRCUIT_EDGE {ck: c.uid}]->() "
        "RETURN count(e) AS n", database_=database)
    assert recs[0]["n"] == 3
    writer.write_checkpoint("hand", ARCH, cp(30, {"input->a0.h0": 1.0}))
    recs, _, _ = driver.execute_query("MATCH (c:Checkpoint {run: 'hand', step: 30}) RETURN c.complete AS ok",
                                      database_=database)
    assert [r["ok"] for r in recs] == [True]


def test_browser_sees_components_linked_to_components(hand):
    recs, _, _ = hand.driver.execute_query(
        "MATCH (c:Checkpoint {run: 'hand', step: 10}) "
        "MATCH (a:Component)-[e:CIRCUIT_EDGE {ck: c.uid}]->(b:Component) "
        "RETURN a.name + '->' + b.name AS edge, e.s AS s, e.r AS r ORDER BY r", database_=hand.database)
    assert [(r["edge"], r["s"], r["r"]) for r in recs] == [
        ("a1.h0->logits", -6.0, 1), ("input->a0.h0", 5.0, 2), ("a0.h0->a1.h0", 2.0, 3)]  # m1->lg (1.0) is rank 4


def test_circuit_relationships_carry_only_ck_k_s_r(hand):
    """run and step live on the Checkpoint node only (issue 19): a relationship is found by ck."""
    recs, _, _ = hand.driver.execute_query(
        "MATCH (c:Checkpoint {run: 'hand'}) WHERE c.complete MATCH ()-[e:CIRCUIT_EDGE {ck: c.uid}]->() "
        "RETURN collect(DISTINCT keys(e)) AS k",
        database_=hand.database)
    assert [sorted(k) for k in recs[0]["k"]] == [["ck", "k", "r", "s"]]


def test_failed_array_write_leaves_no_complete_checkpoint(hand):
    """The arrays are set in a second transaction while the relationships are created: its failure
    is the write's failure, nothing of it becomes visible, and a rewrite leaves no leftovers."""
    driver, database = hand.driver, hand.database
    writer = CircuitWriter(driver, database)
    bad = cp(40, {"input->a0.h0": 1.0, "a0.h0->logits": 0.5})
    bad.meta = {"accuracy": {1, 2}}  # a set: the driver refuses to send it
    with pytest.raises(Exception):
        writer.write_checkpoint("hand", ARCH, bad)
    recs, _, _ = driver.execute_query("MATCH (c:Checkpoint {run: 'hand', step: 40}) "
                                      "RETURN c.complete AS ok", database_=database)
    assert not any(r["ok"] for r in recs)  # at most an incomplete node, which queries never read
    assert 40 not in writer.complete_steps("hand")
    bad.meta = {"accuracy": 50.0}
    uid = writer.write_checkpoint("hand", ARCH, bad)
    recs, _, _ = driver.execute_query(
        "MATCH (c:Checkpoint {run: 'hand', step: 40}) OPTIONAL MATCH ()-[e:CIRCUIT_EDGE {ck: c.uid}]->() "
        "RETURN c.uid AS uid, c.complete AS ok, count(e) AS rels", database_=database)
    assert [(r["uid"], r["ok"], r["rels"]) for r in recs] == [(uid, True, 2)]
    recs, _, _ = driver.execute_query(
        "MATCH ()-[e:CIRCUIT_EDGE]->() WHERE NOT EXISTS { MATCH (:Checkpoint {uid: e.ck}) } "
        "RETURN count(e) AS n", database_=database)
    assert recs[0]["n"] == 0  # the failed write's relationships went with its node


def test_writer_rejects_bad_input_before_writing(db):
    driver, database = db
    writer = CircuitWriter(driver, database)
    writer.ensure_run(RunRecord(id="bad"), ARCH)
    for data, msg in [
        (cp(0, {"input->a0.h0": float("nan")}), "finite"),
        (cp(0, {"input->a9.h0": 1.0}), "not in a"),
        (cp(0, {"logits->m0": 1.0}), "not in a"),
        (CheckpointData(0, ["input->a0.h0"], [1.0], [True], level="qkv"), "lacks"),
        (CheckpointData(0, ["input->a0.h0<q>"], [1.0], [True], level="head"), "suffix"),
        (cp(0, {}, {"input->m0": 1.0}), "no edge in its circuit"),
    ]:
        with pytest.raises(UserError, match=msg):
            writer.write_checkpoint("bad", ARCH, data)
    recs, _, _ = driver.execute_query("MATCH (c:Checkpoint) RETURN count(c) AS n", database_=database)
    assert recs[0]["n"] == 0


REF = SHARED / "reference-circuits"


def test_reference_circuits_reproduce_the_paper(db, cli_env):
    """Table 2 'Union vs Compositional' = 69/259/470 and the critical layers, through Cypher."""
    files = ["graph_add_sub_mul_div_1.4b_epoch0.json", "graph_add_sub_mul_div_1.4b_r2_epoch4.json",
             "graph_add_sub_mul_div_1.4b_r32_epoch4.json"]
    proc = run_cli(["import", "eap-json", *[str(REF / f) for f in files], "--run", "comp", "--step", "0"],
                   env=cli_env)
    assert proc.returncode == 0, proc.stderr
    proc = run_cli(["import", "eap-json", str(REF / "union_merged_add_sub_mul_div_base.json"),
                    str(REF / "union_merged_add_sub_mul_div_after.json"), "--run", "union",
                    "--step", "0", "--step", "1"], env=cli_env)
    assert proc.returncode == 0, proc.stderr

    def q(*args):
        p = run_cli(["query", *args, "--format", "json"], env=cli_env)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    ov = q("overlap", "union:1", "comp:2", "--k", "100", "--k", "500", "--k", "1000")
    assert [o["overlap"] for o in ov["overlap"]] == [69, 259, 470]
    assert set(q("critical-layers", "comp:0", "comp:1", "--top", "5")["layers"]) == {0, 3, 4, 5, 11}
    assert set(q("critical-layers", "union:0", "union:1", "--top", "5")["layers"]) == {0, 4, 5, 6, 11}
    jac = q("jaccard", "comp:0", "comp:2")  # method.md 6.7: node 0.80, edge 0.40
    assert round(jac["node_jaccard"], 2) == 0.80 and round(jac["edge_jaccard"], 2) == 0.40
    churn = q("churn", "comp")
    assert churn["transitions"][0]["nodes_before"] == 334 and churn["transitions"][0]["edges_before"] == 9153


@pytest.mark.parametrize("content, problem", [
    ("{not json", "not valid JSON"),
    ('{"cfg": {"n_layers": 2, "n_heads": 1}, "nodes": {}, "edges": {"input->m0": {"score": 1}}}',
     "parallel_attn_mlp"),
    ('{"cfg": {"n_layers": 2, "n_heads": 1, "parallel_attn_mlp": true}, "nodes": {}, '
     '"edges": {"input->m7": {"score": 1, "in_graph": true}}}', "out of range"),
    ('{"cfg": {"n_layers": 2, "n_heads": 1, "parallel_attn_mlp": true}, "nodes": {}, '
     '"edges": {"input->m0": {"score": "big", "in_graph": true}}}', "not a finite number"),
    ('{"cfg": {"n_layers": 2, "n_heads": 1, "parallel_attn_mlp": true}, "nodes": {}, '
     '"edges": {"input->a0.h0<q>": {"score": 1, "in_graph": true}, "input->a1.h0": {"score": 1}}}',
     "mixes"),
])
def test_malformed_eap_json_is_refused_and_nothing_written(db, cli_env, tmp_path, content, problem):
    driver, database = db
    good = REF / "graph_add_sub_mul_div_1.4b_epoch0.json"
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    proc = run_cli(["import", "eap-json", str(good), str(bad), "--run", "x", "--step", "0"], env=cli_env)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and problem in lines[0], proc.stderr
    recs, _, _ = driver.execute_query("MATCH (n) WHERE n:Run OR n:Checkpoint RETURN count(n) AS n",
                                      database_=database)
    assert recs[0]["n"] == 0


def test_adhoc_cypher_is_read_only(hand, cli_env):
    ok = run_cli(["cypher", "MATCH (c:Checkpoint {run: $run}) RETURN c.step AS step ORDER BY step",
                  "--param", 'run="hand"', "--format", "json"], env=cli_env)
    assert ok.returncode == 0, ok.stderr
    assert [r["step"] for r in json.loads(ok.stdout)["rows"]] == [0, 10, 20]
    for stmt in ["CREATE (:Evil)", "MATCH (n) DETACH DELETE n", "CREATE INDEX evil FOR (n:X) ON (n.y)",
                 "MATCH (c:Checkpoint) SET c.step = 0"]:
        bad = run_cli(["cypher", stmt], env=cli_env)
        assert bad.returncode == 2 and "read-only" in bad.stderr, (stmt, bad.stderr)
    recs, _, _ = hand.driver.execute_query("MATCH (c:Checkpoint {run: 'hand'}) RETURN count(c) AS n")
    assert recs[0]["n"] == 3


def test_query_errors_are_one_line(hand, cli_env):
    for args, msg in [(["query", "churn", "nosuch"], "no run"),
                      (["query", "overlap", "hand:0", "hand:99"], "no complete checkpoint"),
                      (["query", "overlap", "hand:0", "hand:10", "--k", "50"], "larger than a circuit"),
                      (["query", "jaccard", "hand", "hand:10"], "RUN:STEP"),
                      (["query", "churn", "hand", "--top-frac", "1.5"], "(0, 1]"),
                      (["query", "churn", "hand", "--top-n", "3", "--threshold", "1"], "choose one"),
                      (["query", "churn", "hand", "--no-prune"], "--no-prune applies to"),
                      (["query", "churn", "hand", "--top-n", "2"], "prune to an empty circuit; select more edges")]:
        p = run_cli(args, env=cli_env)
        assert p.returncode == 2, (args, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1 and msg in p.stderr, (args, p.stderr)
