"""The one graph description (analysis/layout.py) agrees with the torch Graph and the store's numbering
for the shapes of the five families (GPT-NeoX parallel; GPT-2, GPT-Neo, OPT sequential; Llama with and
without grouped-query attention). No model needed."""

from __future__ import annotations

import pytest

from analysis.errors import UserError
from analysis.graph import GraphSpec, build_graph
from analysis.layout import CHANNELS, Layout, head_name, parse_edge_name
from queries.components import Architecture

SHAPES = [(3, 4, True, None), (2, 3, False, None), (4, 2, False, None), (2, 4, False, 2), (3, 4, False, 1),
          (2, 4, False, 4)]


def old_edge_names(L, H, parallel, group):
    """The edge order hannamw/EAP-IG and the engine use, enumerated as the graph did before the layout."""
    out, residual = [], ["input"]
    for l in range(L):
        heads = [f"a{l}.h{h}" for h in range(H)]
        for src in residual:
            for h, a in enumerate(heads):
                out += [f"{src}->{a}<{x}>" for x in ("qkv" if h % group == 0 else "q")]
            if parallel:
                out.append(f"{src}->m{l}")
        residual = residual + heads
        if not parallel:
            out += [f"{src}->m{l}" for src in residual]
        residual = residual + [f"m{l}"]
    return out + [f"{src}->logits" for src in residual]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_counts_names_and_order(shape):
    spec, g = GraphSpec(*shape), build_graph(GraphSpec(*shape))
    L, H, parallel, G = shape
    G = G or H
    names = [e.name for e in g.edges]
    assert names == [e.name for e in spec.edges] == old_edge_names(L, H, parallel, H // G)
    per_dst = {"qkv": H + 2 * G + 1, "head": H + 1}
    for level, n in per_dst.items():
        formula = n * (L + (H + 1) * L * (L - 1) // 2) + 1 + L * (H + 1) + (0 if parallel else L * H)
        assert spec.n_edges(level) == formula
    assert len(names) == spec.n_edges("qkv") == int(g.mask.sum()) == len(set(names))
    assert len(dict.fromkeys(head_name(n) for n in names)) == spec.n_edges("head")
    assert (g.n_src, g.n_dst) == (spec.n_src, spec.n_dst) == (1 + L * (H + 1), L * (3 * H + 1) + 1)
    assert spec.n_components == len(spec.nodes) == L * (H + 1) + 2


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_every_edge_round_trips(shape):
    spec, arch, g = GraphSpec(*shape), Architecture(*shape), build_graph(GraphSpec(*shape))
    for e in g.edges:
        key, s_ci, d_ci, qkv = arch.edge_key(e.name)
        assert arch.edge_name(key) == e.name and arch.key_of[e.name] == key == spec.key_of[e.name]
        assert key == (s_ci * arch.n_components + d_ci) * 4 + CHANNELS[qkv] and qkv == e.qkv
        row, col = g.edge_position(e.name)
        assert (row, col) == spec.position(e)
        assert f"{g.sources[row]}->{g.destinations[col]}" == e.name
        assert parse_edge_name(e.name) == (e.src, e.dst, e.qkv)
        head = head_name(e.name)
        assert arch.edge_name(arch.key_of[head]) == head and arch.key_of[head] == key - CHANNELS[qkv]
    heads = {head_name(e.name) for e in g.edges}
    assert set(arch.key_of) == {e.name for e in g.edges} | heads


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_mask_and_upstream_counts_follow_the_rule(shape):
    spec, g = GraphSpec(*shape), build_graph(GraphSpec(*shape))
    for col, dst in enumerate(g.destinations):
        node = g.nodes[dst.split("<")[0]]
        kv_less = dst.endswith(("<k>", "<v>")) and not spec.has_kv(node.head)
        want = [not kv_less and spec.feeds(g.nodes[s], node) for s in g.sources]
        assert g.mask[:, col].tolist() == want, dst
        if not kv_less:
            n_up = spec.n_upstream(node.layer, mlp=node.kind == "mlp")
            assert g.n_upstream(dst) == n_up and want == [True] * n_up + [False] * (g.n_src - n_up)
    for l in range(spec.n_layers):
        assert g.sources[spec.head_row(l)] == f"a{l}.h0" and g.sources[spec.mlp_row(l)] == f"m{l}"
        assert g.destinations[spec.col0(l)] == f"a{l}.h0<q>" and g.destinations[spec.mlp_col(l)] == f"m{l}"
        assert g.destinations[spec.qkv_col(l, "v", spec.n_heads - 1)] == f"a{l}.h{spec.n_heads - 1}<v>"
    assert g.destinations[spec.logits_col] == "logits"
    rows = [r for _, _, (lo, hi) in spec.node_groups() for r in range(lo, hi)]
    assert rows == list(range(g.n_src))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_store_components_and_kv_rules(shape):
    arch = Architecture(*shape)
    assert [c["name"] for c in arch.components] == list(arch.ci) and [c["ci"] for c in arch.components] == \
        list(range(arch.n_components))
    assert arch.components[0]["layer"] == 0 and arch.components[-1]["layer"] == arch.n_layers
    r = arch.group_size
    if r > 1:
        last = arch.n_heads - 1  # in the last group, which starts at head H - r
        assert arch.kv_representative(f"input->a1.h{last}<k>") == f"input->a1.h{arch.n_heads - r}<k>"
        src, readers = arch.readers(arch.key_of[f"input->a1.h{arch.n_heads - r}<v>"])
        assert src == 0 and [arch.nodes[d].name for d in readers] == [f"a1.h{arch.n_heads - r + i}" for i in range(r)]
        with pytest.raises(UserError, match="does not exist"):
            arch.edge_key(f"input->a1.h{last}<k>")
    assert arch.kv_representative("input->a1.h1<q>") == "input->a1.h1<q>"


def test_keys_and_errors():
    assert Architecture(24, 16, True).key == "L24.H16.par"
    assert Architecture(2, 4, False, 2).key == "L2.H4.seq.kv2" and Architecture(2, 4, False, 4).key == "L2.H4.seq"
    assert GraphSpec(2, 2, True) != Architecture(2, 2, True)  # different types, as before
    arch = Architecture(2, 2, True)
    for name, message in [("input->m7", "layer 7 out of range for 2 layers"), ("input->a0.h5<q>", "head 5 out of range"),
                          ("m1->a1.h0<q>", "does not exist in a L2.H2.par graph"), ("x->y", "not an edge name"),
                          ("m0->logits<q>", "only edges into heads")]:
        with pytest.raises(UserError, match=message):
            arch.edge_key(name)
    for bad in [(0, 2, True), (2, 0, True)]:
        with pytest.raises(UserError, match="at least one layer and one head"):
            Layout(*bad)
    with pytest.raises(UserError, match="positive divisor"):
        GraphSpec(2, 4, False, 3)
