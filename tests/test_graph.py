"""The edge graph: counts, names and dense layout (no model needed)."""

import pytest
import torch

from analysis.errors import UserError
from analysis.graph import GraphSpec, build_graph, expected_edge_count, parse_edge_name

PYTHIA_1_4B = GraphSpec(24, 16, True)
GPT2_SMALL = GraphSpec(12, 12, False)
GPT_NEO_2_7B = GraphSpec(32, 20, False)


@pytest.mark.parametrize("spec,count", [(PYTHIA_1_4B, 231_493), (GPT2_SMALL, 32_491), (GPT_NEO_2_7B, 638_641)])
def test_published_edge_counts(spec, count):
    assert expected_edge_count(spec) == count
    g = build_graph(spec)
    assert len(g.edges) == count == int(g.mask.sum())
    assert len(g.edge_index) == count  # names are unique
    L, H = spec.n_layers, spec.n_heads
    assert (g.n_src, g.n_dst) == (1 + L * (H + 1), L * (3 * H + 1) + 1)


def test_pythia_nodes_and_five_percent():
    g = build_graph(PYTHIA_1_4B)
    assert len(g.nodes) == 410
    assert int(0.05 * len(g.edges)) == 11_574


def test_from_hf_config():
    from transformers import GPT2Config, GPTNeoXConfig

    assert GraphSpec.from_hf_config(GPTNeoXConfig(num_hidden_layers=3, num_attention_heads=4, hidden_size=32)) \
        == GraphSpec(3, 4, True)
    assert GraphSpec.from_hf_config(GPT2Config(n_layer=2, n_head=2, n_embd=8)) == GraphSpec(2, 2, False)


def test_parallel_vs_sequential_edges():
    par, seq = build_graph(GraphSpec(2, 2, True)), build_graph(GraphSpec(2, 2, False))
    assert "a0.h1->m0" not in par.edge_index and "a0.h1->m0" in seq.edge_index
    assert "a0.h1->m1" in par.edge_index and "m0->a1.h0<k>" in par.edge_index
    assert "m1->a1.h0<q>" not in seq.edge_index and "a1.h0->a1.h1<q>" not in seq.edge_index
    assert "input->logits" in par.edge_index and "m1->logits" in par.edge_index
    assert len(seq.edges) - len(par.edges) == 2 * 2


def test_names_layout_and_nodes():
    g = build_graph(GraphSpec(2, 3, True))
    assert g.sources[:6] == ["input", "a0.h0", "a0.h1", "a0.h2", "m0", "a1.h0"]
    # hannamw/EAP-IG destination layout: per layer q heads, k heads, v heads, mlp; logits last
    assert g.destinations[:10] == ["a0.h0<q>", "a0.h1<q>", "a0.h2<q>", "a0.h0<k>", "a0.h1<k>", "a0.h2<k>",
                                   "a0.h0<v>", "a0.h1<v>", "a0.h2<v>", "m0"]
    assert g.destinations[-1] == "logits"
    assert g.nodes["input"].layer == -1 and g.nodes["logits"].layer == 2
    assert g.nodes["a1.h2"].kind == "attn" and g.nodes["a1.h2"].head == 2
    assert g.edge_position("a0.h2->a1.h1<v>") == (3, g.dst_index["a1.h1<v>"])
    assert g.edges == build_graph(GraphSpec(2, 3, True)).edges  # deterministic order


def test_parse_edge_name():
    assert parse_edge_name("a0.h2->a3.h1<q>") == ("a0.h2", "a3.h1", "q")
    assert parse_edge_name("m0->logits") == ("m0", "logits", None)
    assert parse_edge_name("input->m4") == ("input", "m4", None)
    for bad in ("a0.h2->a3.h1", "m0->logits<q>", "logits->m0", "x->y"):
        with pytest.raises(UserError):
            parse_edge_name(bad)


def test_scores_dict_roundtrip():
    g = build_graph(GraphSpec(2, 2, False))
    dense = torch.randn(g.n_src, g.n_dst, dtype=torch.float64) * g.mask
    d = g.scores_to_dict(dense)
    assert list(d) == [e.name for e in g.edges]
    back = g.dict_to_scores(d, dtype=torch.float64)
    assert torch.equal(back, dense)
    r, c = g.edge_position("a0.h1->m0")
    assert d["a0.h1->m0"] == float(dense[r, c])
    with pytest.raises(UserError):
        g.dict_to_scores({k: v for k, v in list(d.items())[1:]})
