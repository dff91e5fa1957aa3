"""`circuitshift export`: stored circuits out as EAP-IG JSON and hannamw .pt files (round trips through
the importer), GraphML and GEXF (read back with networkx), against a real Neo4j server."""

from __future__ import annotations

import json

import networkx as nx
import pytest
import torch

from conftest import SHARED
from ingest.cli import main
from queries.api import Store, store_union, CircuitDefinition
from queries.components import Architecture
from queries.writer import CheckpointData, CircuitWriter, RunRecord

REF = SHARED / "reference-circuits" / "graph_add_sub_mul_div_1.4b_epoch0.json"
ARCH = Architecture(2, 1, True)  # 6 components, 21 q/k/v-level edges, 13 head-level edges


def cli(capsys, *args):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


def _qkv_checkpoint(arch=ARCH):
    names = list(arch.key_of)
    qkv = [n for n in names if n.endswith(">") or not n.split("->")[1].startswith("a")]
    assert len(qkv) == arch.n_edges("qkv")
    scores = [(-1) ** i * (i + 1) / 10 for i in range(len(qkv))]
    in_graph = [i % 3 != 1 for i in range(len(qkv))]
    return CheckpointData(step=0, names=qkv, scores=scores, in_graph=in_graph, level="qkv")


@pytest.fixture
def small(db):
    driver, database = db
    w = CircuitWriter(driver, database)
    w.ensure_run(RunRecord(id="small", model="tiny", task="toy"), ARCH)
    w.write_checkpoint("small", ARCH, _qkv_checkpoint())
    return Store(driver, database)


def test_reference_round_trip_and_graph_formats(db, cli_env, capsys, tmp_path):
    driver, database = db
    code, out, err = cli(capsys, "import", "eap-json", str(REF), "--run", "paper", "--step", "0")
    assert code == 0, err
    out_json = tmp_path / "paper.json"
    code, out, err = cli(capsys, "export", "paper:0", "--format", "eap-json", "--out", str(out_json))
    assert code == 0, err
    assert "9153 head-level edges" in out
    code, _, err = cli(capsys, "import", "eap-json", str(out_json), "--run", "again", "--step", "3")
    assert code == 0, err
    store = Store(driver, database)
    a, b = store.checkpoint_edges("paper:0"), store.checkpoint_edges("again:3")
    assert len(a.names) == 9153
    assert (a.names, a.scores, a.in_circuit) == (b.names, b.scores, b.in_circuit)
    source = json.loads(REF.read_text())["edges"]
    assert {n: s for n, s in zip(a.names, a.scores)} == {n: e["score"] for n, e in source.items()}

    for fmt, reader in (("graphml", nx.read_graphml), ("gexf", nx.read_gexf)):
        path = tmp_path / f"paper.{fmt}"
        code, _, err = cli(capsys, "export", "paper:0", "--format", fmt, "--out", str(path))
        assert code == 0, err
        g = reader(path)
        assert g.is_directed() and g.number_of_nodes() == 410 and g.number_of_edges() == 9153
        node = g.nodes["a3.h7"]
        assert (node["kind"], int(node["layer"]), int(node["head"])) == ("attn", 3, 7)
        assert int(g.nodes["m0"]["head"]) == -1 and g.nodes["logits"]["kind"] == "logits"
        e = g.edges["input", "a0.h0"]
        assert e["score"] == pytest.approx(source["input->a0.h0"]["score"], rel=1e-12)
        assert e["channel"] == "none" and e["in_circuit"] in (True, "true")
        ranks = sorted(int(d["rank"]) for _, _, d in g.edges(data=True))
        assert ranks == list(range(1, 9154))


def test_qkv_all_edges_and_head_collapse(small, cli_env, capsys, tmp_path):
    full = small.checkpoint_edges("small:0")
    assert len(full.names) == 21 and sum(full.in_circuit) == 14
    path = tmp_path / "small.json"
    code, _, err = cli(capsys, "export", "small:0", "--format", "eap-json", "--out", str(path), "--all-edges")
    assert code == 0, err
    doc = json.loads(path.read_text())
    assert len(doc["edges"]) == 21 and doc["cfg"]["n_layers"] == 2
    code, _, err = cli(capsys, "import", "eap-json", str(path), "--run", "back", "--step", "1")
    assert code == 0, err
    back = small.checkpoint_edges("back:1")
    assert (back.names, back.scores, back.in_circuit) == (full.names, full.scores, full.in_circuit)

    # Circuit-only q/k/v GraphML: a MultiDiGraph keyed by channel.
    gpath = tmp_path / "small.graphml"
    assert cli(capsys, "export", "small:0", "--format", "graphml", "--out", str(gpath))[0] == 0
    g = nx.read_graphml(gpath, force_multigraph=True)
    assert g.number_of_nodes() == 6 and g.number_of_edges() == 14
    channels = sorted(d["channel"] for _, _, d in g.edges(data=True))
    assert set(channels) <= {"q", "k", "v", "none"} and "q" in channels

    # Head level: in-circuit channels summed (as the query library does).
    hpath = tmp_path / "small_head.gexf"
    code, _, err = cli(capsys, "export", "small:0", "--format", "gexf", "--out", str(hpath),
                       "--level", "head", "--all-edges")
    assert code == 0, err
    h = nx.read_gexf(hpath)
    assert h.number_of_edges() == 13
    flags = dict(zip(full.names, full.in_circuit))
    scores = dict(zip(full.names, full.scores))
    ch = [n for n in full.names if n.startswith("input->a0.h0<")]
    kept = [n for n in ch if flags[n]]
    want = sum(scores[n] for n in (kept or ch))
    assert h.edges["input", "a0.h0"]["score"] == pytest.approx(want)
    _, circuit = small.circuit_edges("small:0", CircuitDefinition(level="head"))
    assert sum(1 for _, _, d in h.edges(data=True) if d["in_circuit"] in (True, "true")) == len(circuit)


def test_union_circuit_exports(db, cli_env, capsys, tmp_path):
    driver, database = db
    w = CircuitWriter(driver, database)
    w.ensure_run(RunRecord(id="u", model="tiny", task="toy"), ARCH)
    for step, edges in ((0, {"input->a0.h0": 5.0, "m1->logits": 3.0}), (1, {"a0.h0->a1.h0": 2.0})):
        w.write_checkpoint("u", ARCH, CheckpointData(step=step, names=list(edges), scores=list(edges.values()),
                                                     in_graph=[True] * len(edges), level="head"))
    store_union(driver, database, "u:0", "u:1", "merged:0", CircuitDefinition())
    path = tmp_path / "merged.json"
    code, out, err = cli(capsys, "export", "merged:0", "--format", "eap-json", "--out", str(path))
    assert code == 0, err
    assert set(json.loads(path.read_text())["edges"]) == {"input->a0.h0", "m1->logits", "a0.h0->a1.h0"}
    code, _, err = cli(capsys, "export", "merged:0", "--format", "graphml", "--out", str(path), "--level", "qkv")
    assert code == 2 and "stored at head level" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args,needle", [
    (["nope:0"], "no run 'nope'"),
    (["small:7"], "no complete checkpoint at step 7"),
    (["small"], "not of the form RUN:STEP"),
    (["small:x"], "STEP must be an integer"),
    (["small:0", "--level", "qkv", "--format", "graphml"], None),  # fine: stored at q/k/v level
])
def test_bad_circuit_is_one_line_exit_2(small, cli_env, capsys, tmp_path, args, needle):
    cmd = ["export", *args, "--out", str(tmp_path / "x.out")]
    if "--format" not in args:
        cmd += ["--format", "gexf"]
    code, _, err = cli(capsys, *cmd)
    if needle is None:
        assert code == 0, err
        return
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and needle in err and "Traceback" not in err
    assert not (tmp_path / "x.out").exists()


def test_results_to_frame(small):
    from queries.api import to_frame
    frame = small.checkpoint_edges("small:0").to_frame()
    assert list(frame.columns) == ["rank", "name", "score", "in_circuit"] and len(frame) == 21
    assert frame["in_circuit"].sum() == 14 and list(frame["rank"]) == list(range(1, 22))
    assert abs(frame["score"]).is_monotonic_decreasing
    jac = small.jaccard("small:0", "small:0", CircuitDefinition())
    one = to_frame(jac)
    assert len(one) == 1 and one.iloc[0]["described_as"] == jac["described_as"]
    rows = to_frame([{"a": 1}, {"a": 2}])
    assert list(rows["a"]) == [1, 2]
    layers = small.per_layer("small:0", "small:0", CircuitDefinition())
    lf = to_frame(layers)
    assert len(lf) == ARCH.n_layers + 1 and lf.attrs["a"] == "small:0"


# ------------------------------------------------------------------------------------------ eap-pt
def _f32(x: float) -> float:
    return float(torch.tensor(x, dtype=torch.float32))


@pytest.mark.parametrize("arch", [ARCH, Architecture(2, 2, False, 1)], ids=["neox", "gqa"])
def test_eap_pt_round_trip_is_float32_exact(db, cli_env, capsys, tmp_path, arch):
    driver, database = db
    model = tmp_path / "model"  # a model folder the run names: d_model comes from its config
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "gpt_neox", "hidden_size": 48, "num_attention_heads": 4}))
    w = CircuitWriter(driver, database)
    w.ensure_run(RunRecord(id="src", model=str(model), task="toy"), arch)
    w.write_checkpoint("src", arch, _qkv_checkpoint(arch))
    path = tmp_path / "src.pt"
    code, out, err = cli(capsys, "export", "src:0", "--format", "eap-pt", "--out", str(path))
    assert code == 0, err
    assert f"{arch.n_edges('qkv')} qkv-level edges" in out
    doc = torch.load(path, weights_only=True)
    assert doc["cfg"]["d_model"] == 48 and doc["edges_scores"].dtype == torch.float32
    code, out, err = cli(capsys, "import", "eap-json", str(path), "--run", "back", "--step", "2")
    assert code == 0, err
    store = Store(driver, database)
    a, b = store.checkpoint_edges("src:0"), store.checkpoint_edges("back:2")
    assert dict(zip(b.names, b.scores)) == {n: _f32(s) for n, s in zip(a.names, a.scores)}
    assert dict(zip(b.names, b.in_circuit)) == dict(zip(a.names, a.in_circuit))  # the same circuit
    assert (b.names, b.in_circuit) == (a.names, a.in_circuit)  # and the same ranks
    assert store.run_info("back")["n_kv_heads"] == arch.n_kv_heads
    # `import eap-pt` is the same command; a model the store cannot find: no d_model, or --d-model
    again = tmp_path / "again.pt"
    code, _, err = cli(capsys, "export", "back:2", "--format", "eap-pt", "--out", str(again), "--all-edges")
    assert code == 0, err
    assert "d_model" not in torch.load(again, weights_only=True)["cfg"]
    assert torch.equal(torch.load(again, weights_only=True)["edges_scores"], doc["edges_scores"])
    code, _, err = cli(capsys, "export", "back:2", "--format", "eap-pt", "--out", str(again), "--d-model", "7")
    assert code == 0 and torch.load(again, weights_only=True)["cfg"]["d_model"] == 7, err
    code, _, err = cli(capsys, "import", "eap-pt", str(again), "--run", "third", "--step", "0")
    assert code == 0, err
    c = store.checkpoint_edges("third:0")
    assert (c.names, c.scores, c.in_circuit) == (b.names, b.scores, b.in_circuit)


def test_eap_pt_export_refuses_what_it_cannot_hold(small, db, cli_env, capsys, tmp_path):
    driver, database = db
    w = CircuitWriter(driver, database)
    w.ensure_run(RunRecord(id="u", model="tiny", task="toy"), ARCH)
    for step, edges in ((0, {"input->a0.h0": 5.0}), (1, {"m1->logits": 3.0})):
        w.write_checkpoint("u", ARCH, CheckpointData(step=step, names=list(edges), scores=list(edges.values()),
                                                     in_graph=[True], level="head"))
    store_union(driver, database, "u:0", "u:1", "merged:0", CircuitDefinition())
    part = _qkv_checkpoint()
    w.ensure_run(RunRecord(id="part", model="tiny", task="toy"), ARCH)
    w.write_checkpoint("part", ARCH, CheckpointData(step=0, names=part.names[:5], scores=part.scores[:5],
                                                    in_graph=[True] * 5, level="qkv"))
    out = tmp_path / "x.pt"
    for args, needle in ((["merged:0"], "stored at head level"), (["small:0", "--level", "head"], "drop --level head"),
                         (["part:0"], "5 of the graph's 21")):
        code, _, err = cli(capsys, "export", *args, "--format", "eap-pt", "--out", str(out))
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()


def test_bad_pt_import_is_one_line_and_writes_nothing(db, cli_env, capsys, tmp_path):
    driver, database = db
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"cfg": {"n_layers": 2, "n_heads": 1, "parallel_attn_mlp": True}, "nodes": {},
                                "edges": {"input->m0": {"score": 1.0, "in_graph": True}}}))
    text = tmp_path / "text.pt"
    text.write_text("not a torch file")
    keys = tmp_path / "keys.pt"
    torch.save({"cfg": {"n_layers": 2}}, keys)
    for bad, needle in ((text, "not a readable torch graph file"), (keys, "missing src_nodes"),
                        (tmp_path / "none.pt", "no such circuit file")):
        code, _, err = cli(capsys, "import", "eap-json", str(good), str(bad), "--run", "x", "--step", "0")
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code == 2 and len(lines) == 1 and needle in err and str(bad) in err, err
        assert Store(driver, database).run_info("x") is None
