"""hannamw's `.pt` graph file (MIB's submission format): its layout, a lossless round trip at the
format's float32 precision, and bad files refused with one line."""

from __future__ import annotations

import pytest
import torch

from analysis.circuit import Circuit, prune_circuit, select_circuit
from analysis.datasets import PromptPair
from analysis.eap import score
from analysis.eap_json import from_eap_json, to_eap_json
from analysis.eap_pt import from_eap_pt, to_eap_pt
from analysis.errors import UserError
from analysis.graph import GraphSpec, build_graph
from analysis.models import load_model
from analysis.tiny import build_tiny_model

PFX = "Calculate the result of the following arithmetic expression and provide only the final answer:"


@pytest.fixture(scope="module", params=[("gpt_neox", None), ("llama", 2)], ids=["neox", "llama-gqa"])
def circuit(request, tmp_path_factory):
    arch, kv = request.param
    d = tmp_path_factory.mktemp(arch)
    extra = {"n_kv_heads": kv} if kv else {}
    build_tiny_model(d, arch=arch, n_layers=2, n_heads=4, d_model=32, seed=2, max_number=120, init_std=0.3, **extra)
    adapter = load_model(d, dtype="float64")
    pairs = [PromptPair(f"{PFX} {a} + {b} =", f"{PFX} {a} - {b} =", str(a + b), str(a - b))
             for a, b in [(41, 29), (5, 3), (12, 7), (50, 1)]]
    result = score(adapter, build_graph(adapter.spec), pairs, steps=2, batch_size=2)
    return select_circuit(result, adapter.spec, "top_n", 25), adapter.d_model


def test_layout_is_hannamws(circuit, tmp_path):
    c, d_model = circuit
    doc = to_eap_pt(c, tmp_path / "g.pt", d_model=d_model)
    L, H = c.spec.n_layers, c.spec.n_heads
    assert doc["cfg"]["d_model"] == d_model and doc["cfg"]["n_layers"] == L and doc["cfg"]["n_heads"] == H
    assert doc["src_nodes"][:2] == ["input", "a0.h0"] and len(doc["src_nodes"]) == 1 + L * (H + 1)
    # hannamw get_dst_nodes: per layer the q of every head, then k, then v, then the MLP; logits last
    assert doc["dst_nodes"][:H + 1] == [f"a0.h{h}<q>" for h in range(H)] + ["a0.h0<k>"]
    assert doc["dst_nodes"][3 * H] == "m0" and doc["dst_nodes"][-1] == "logits"
    assert doc["edges_scores"].dtype == torch.float32 and doc["edges_in_graph"].dtype == torch.bool
    assert int(doc["edges_in_graph"].sum()) == c.n_edges
    loaded = torch.load(tmp_path / "g.pt", weights_only=True)
    assert set(loaded) == set(doc)


def test_round_trip_is_lossless_at_float32(circuit, tmp_path):
    c, d_model = circuit
    to_eap_pt(c, tmp_path / "a.pt", d_model=d_model)
    back = from_eap_pt(tmp_path / "a.pt", spec=c.spec)
    assert set(back.edges) == set(c.edges) and back.nodes == c.nodes and back.level == "qkv"
    assert set(back.all_scores) == set(c.all_scores)
    for name, s in c.all_scores.items():
        assert back.all_scores[name] == float(torch.tensor(s, dtype=torch.float32))
    to_eap_pt(back, tmp_path / "b.pt", d_model=d_model)  # a second round trip changes nothing
    a, b = torch.load(tmp_path / "a.pt", weights_only=True), torch.load(tmp_path / "b.pt", weights_only=True)
    assert torch.equal(a["edges_scores"], b["edges_scores"]) and torch.equal(a["edges_in_graph"], b["edges_in_graph"])
    assert torch.equal(a["nodes_in_graph"], b["nodes_in_graph"])


def test_bad_files_and_circuits_are_refused(circuit, tmp_path):
    c, d_model = circuit
    with pytest.raises(UserError, match="no such circuit file"):
        from_eap_pt(tmp_path / "missing.pt")
    (tmp_path / "text.pt").write_text("not a torch file")
    with pytest.raises(UserError, match="not a readable torch graph file"):
        from_eap_pt(tmp_path / "text.pt")
    torch.save({"cfg": {}}, tmp_path / "keys.pt")
    with pytest.raises(UserError, match="missing src_nodes"):
        from_eap_pt(tmp_path / "keys.pt")
    doc = to_eap_pt(c, tmp_path / "ok.pt", d_model=d_model)
    with pytest.raises(UserError, match="does not match"):
        from_eap_pt(tmp_path / "ok.pt", spec=GraphSpec(3, 4, True))
    doc["edges_scores"] = doc["edges_scores"][:, :-1]
    torch.save(doc, tmp_path / "shape.pt")
    with pytest.raises(UserError, match="tensors"):
        from_eap_pt(tmp_path / "shape.pt")
    head_level = select_circuit({n.split("<")[0]: 1.0 for n in c.all_scores}, c.spec, "top_n", 3)
    with pytest.raises(UserError, match="q/k/v-level"):
        to_eap_pt(head_level, tmp_path / "h.pt")


def test_gqa_node_set_survives_json_and_pt(tmp_path):
    """Under grouped-query attention the shared k edge is named after a0.h0, the group's first head, yet
    only a0.h1 reads it into the circuit: a0.h0 is no circuit node, and both file formats keep it out."""
    spec = GraphSpec(1, 2, False, 1)
    chosen = {"input->a0.h0<k>": 3.0, "input->a0.h1<q>": 2.0, "a0.h1->logits": 1.0}
    all_scores = {e.name: chosen.get(e.name, 0.0) for e in build_graph(spec).edges}
    c = prune_circuit(Circuit(spec, "qkv", chosen, frozenset({"input", "a0.h0", "a0.h1", "logits"}), all_scores))
    assert dict(c.edges) == chosen and c.nodes == {"input", "a0.h1", "logits"}
    to_eap_json(c, tmp_path / "c.json")
    back = from_eap_json(tmp_path / "c.json", spec)
    assert back.nodes == c.nodes and dict(back.edges) == chosen
    to_eap_pt(c, tmp_path / "c.pt")
    assert from_eap_pt(tmp_path / "c.pt", spec).nodes == c.nodes
