"""GPT-Neo, OPT and Llama (grouped-query attention) beside GPT-NeoX and GPT-2 (issue 7, part 3).

Per architecture, on a tiny local model (2 layers, 4 heads, d_model 32; the Llama has 2 kv-heads):
edge counts equal the formula in the graph and in the store, HF-vs-hooked parity, the engine's scores
equal an independent per-edge reference, full / empty circuits give 100% / 0%, and our patching equals
an independent per-edge patching reference.

The reference (``Naive``) re-implements each architecture's forward node by node from the HF weights
in float64, one example at a time, with its own norms, rotary, local-attention windows, OPT position
offset and GQA head sharing: every destination input (each query head's q, each KV-HEAD's k and v,
each MLP, the logits) is built explicitly as the sum of its upstream node outputs (or, for patching,
their corrupted outputs for edges not in the circuit) plus ``eps[src, dst] * (corrupted - clean)``;
autograd w.r.t. ``eps`` at 0 gives every edge's EAP gradient. It names edges itself (k/v of kv-head g
-> ``a{l}.h{g*H/G}<k|v>``) and shares no code with analysis.adapter / eap / patching / metrics.
"""

from __future__ import annotations

import random

import pytest
import torch

from analysis.circuit import Circuit, collapse, empty_circuit, full_circuit
from analysis.datasets import PromptPair
from analysis.eap import score
from analysis.errors import UserError
from analysis.evaluate import evaluate, evaluate_many, hooked_parity
from analysis.graph import GraphSpec, build_graph, expected_edge_count
from analysis.models import load_model
from analysis.tiny import TINY_ARCHS, build_tiny_model
from naive import Naive, _ids
from queries.components import Architecture

torch.set_num_threads(2)

NEW_ARCHS = ("gpt_neo", "opt", "llama")
PFX = "Calculate the result of the following arithmetic expression and provide only the final answer:"


def make_pairs():
    rows = [(41, 29), (5, 3), (12, 7)]
    pairs = [PromptPair(f"{PFX} {a} + {b} =", f"{PFX} {a} - {b} =", str(a + b), str(a - b)) for a, b in rows]
    pairs.append(PromptPair("LCM(4, 6) =", "LCM(3, 5) =", "12", "15"))  # shorter: batches are padded
    return pairs


@pytest.fixture(scope="module", params=NEW_ARCHS)
def model_dir(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    build_tiny_model(d, arch=request.param, n_layers=2, n_heads=4, d_model=32, seed=7, max_number=120,
                     init_std=0.3, window_size=5)
    return d


@pytest.fixture(scope="module")
def adapter(model_dir):
    a = load_model(model_dir, dtype="float64")
    # non-trivial norm weights (and biases), so the closed-form norm VJPs are really exercised
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for m in a.model.modules():
            if type(m).__name__.endswith(("LayerNorm", "RMSNorm")):
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g, dtype=m.weight.dtype))
                if getattr(m, "bias", None) is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g, dtype=m.bias.dtype))
    return a


# ----------------------------------------------------------------------------- naive reference
def naive_scores(adapter, pairs, steps):
    """{edge name: score} of eap-ig-inputs (right rule, KL vocab-mean), one example at a time."""
    nv = Naive(adapter.model)
    tok = adapter.tokenizer
    edges = nv.edges()
    total = torch.zeros(len(nv.sources), len(nv.dkeys), dtype=torch.float64)
    alphas = [k / steps for k in range(1, steps + 1)]
    for p in pairs:
        ids_c, ids_k = _ids(tok, p.clean), _ids(tok, p.corrupted)
        with torch.no_grad():
            e_c, e_k = nv.embed(ids_c), nv.embed(ids_k)
            clean, outs_c = nv.forward(ids_c, e_c)
            _, outs_k = nv.forward(ids_c, e_k)
        diff = [b - a for a, b in zip(outs_c, outs_k)]
        logp = clean.log_softmax(-1)
        for a in alphas:
            eps = torch.zeros_like(total, requires_grad=True)
            logits, _ = nv.forward(ids_c, (1 - a) * e_k + a * e_c, eps, diff)
            kl = (logp.exp() * (logp - logits.log_softmax(-1))).sum() / logits.shape[-1]
            (g,) = torch.autograd.grad(kl, eps)
            total += g
    total /= len(pairs) * len(alphas)
    return {nv.edge_name(s, k): float(total[s, nv.col[k]]) for s, k in edges}


def naive_faithfulness(adapter, kept, pairs):
    """(F(M), F(C)) with the KL metric; ``kept(name) -> bool`` says which edges are in the circuit."""
    nv = Naive(adapter.model)
    tok = adapter.tokenizer
    keep = {(s, k): kept(nv.edge_name(s, k), s, k) for s, k in nv.edges()}
    fm = fc = 0.0
    for p in pairs:
        ids_c, ids_k = _ids(tok, p.clean), _ids(tok, p.corrupted)
        with torch.no_grad():
            clean, _ = nv.forward(ids_c, nv.embed(ids_c))
            corr_logits, corr = nv.forward(ids_k, nv.embed(ids_k))
            circ, _ = nv.forward(ids_c, nv.embed(ids_c), keep=keep, corr=corr)
        lp = corr_logits.log_softmax(-1)
        V = lp.shape[-1]
        fm += float((lp.exp() * (lp - clean.log_softmax(-1))).sum()) / V
        fc += float((lp.exp() * (lp - circ.log_softmax(-1))).sum()) / V
    return fm / len(pairs), fc / len(pairs)


def random_circuit(spec, frac, seed):
    rng = random.Random(seed)
    chosen = {e.name: rng.uniform(-1, 1) for e in build_graph(spec).edges if rng.random() < frac}
    nodes = {x for n in chosen for x in (n.split("->")[0], n.split("->")[1].split("<")[0])}
    return Circuit(spec, "qkv", chosen, frozenset(nodes))


# ----------------------------------------------------------------------------- counts and names
GQA_SPECS = [GraphSpec(2, 4, False, 2), GraphSpec(3, 6, False, 3), GraphSpec(2, 4, False, 1),
             GraphSpec(32, 32, False, 8), GraphSpec(3, 4, True, 2)]


def _store_count(arch: Architecture) -> tuple[int, set[str]]:
    qkv = {n for n in arch.key_of if not (n.split("->")[1].startswith("a") and not n.endswith(">"))}
    return len(qkv), qkv


@pytest.mark.parametrize("spec", GQA_SPECS + [GraphSpec(2, 4, False), GraphSpec(12, 12, False)])
def test_graph_and_store_agree_on_edges(spec):
    L, H, G = spec.n_layers, spec.n_heads, spec.kv_heads
    formula = (H + 2 * G + 1) * (L + (H + 1) * L * (L - 1) // 2) + 1 + L * (H + 1) + (0 if spec.parallel_attn_mlp else L * H)
    assert expected_edge_count(spec) == formula
    arch = Architecture(L, H, spec.parallel_attn_mlp, spec.n_kv_heads)
    assert arch.n_edges("qkv") == formula
    if L > 4:
        return  # the full enumeration of a 32-layer graph is slow; the formula is checked above
    g = build_graph(spec)
    assert len(g.edges) == int(g.mask.sum()) == formula
    n, names = _store_count(arch)
    assert n == formula and names == set(g.edge_index)
    assert all(arch.edge_key(name)[0] == arch.key_of[name] for name in names)
    heads = {n[:-3] if n.endswith(">") else n for n in arch.key_of}  # head-level pairs: every query head has some
    assert len(heads) == arch.n_edges("head") == len({n[:-3] if n.endswith(">") else n for n in names})
    assert set(arch.key_of) == names | heads


def test_gqa_names():
    spec = GraphSpec(2, 4, False, 2)
    g = build_graph(spec)
    assert "a0.h0->a1.h1<q>" in g.edge_index and "a0.h0->a1.h0<k>" in g.edge_index
    assert "a0.h0->a1.h2<v>" in g.edge_index
    assert "a0.h0->a1.h1<k>" not in g.edge_index and "input->a0.h3<v>" not in g.edge_index
    assert (g.n_src, g.n_dst) == (11, 2 * 13 + 1)  # dense layout kept: empty k/v columns are masked
    assert g.n_upstream("a1.h1<k>") == 0 and g.n_upstream("a1.h2<k>") == 6
    arch = Architecture(2, 4, False, 2)
    with pytest.raises(UserError, match="does not exist"):
        arch.edge_key("a0.h0->a1.h1<k>")
    assert arch.key.endswith(".kv2")


def test_from_hf_config_for_every_architecture():
    from transformers import GPTNeoConfig, LlamaConfig, OPTConfig

    assert GraphSpec.from_hf_config(GPTNeoConfig(num_layers=4, num_heads=2, hidden_size=8,
                                                 attention_types=[[["global", "local"], 2]])) == GraphSpec(4, 2, False)
    assert GraphSpec.from_hf_config(OPTConfig(num_hidden_layers=3, num_attention_heads=2, hidden_size=8,
                                              word_embed_proj_dim=8)) == GraphSpec(3, 2, False)
    llama = dict(num_hidden_layers=2, num_attention_heads=4, hidden_size=16)
    assert GraphSpec.from_hf_config(LlamaConfig(**llama, num_key_value_heads=2)) == GraphSpec(2, 4, False, 2)
    assert GraphSpec.from_hf_config(LlamaConfig(**llama, num_key_value_heads=4)) == GraphSpec(2, 4, False)
    with pytest.raises(UserError, match="post-LayerNorm"):
        GraphSpec.from_hf_config(OPTConfig(hidden_size=8, num_attention_heads=2, do_layer_norm_before=False,
                                           word_embed_proj_dim=8))
    with pytest.raises(UserError, match="project_in"):
        GraphSpec.from_hf_config(OPTConfig(hidden_size=16, num_attention_heads=2, word_embed_proj_dim=8))


def test_tiny_archs_and_unsupported_opt(tmp_path):
    assert set(NEW_ARCHS) <= set(TINY_ARCHS)
    from transformers import OPTConfig, OPTForCausalLM

    from analysis.tokenizer import build_word_tokenizer

    build_word_tokenizer(tmp_path, max_number=10)
    OPTForCausalLM(OPTConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, ffn_dim=32,
                             word_embed_proj_dim=16, do_layer_norm_before=False)).save_pretrained(tmp_path)
    with pytest.raises(UserError, match="OPT-350m"):
        load_model(tmp_path)


# ----------------------------------------------------------------------------- the model
def test_spec_counts_and_naive_matches_hf(adapter):
    spec = adapter.spec
    G = 2 if adapter.arch == "llama" else None
    assert spec == GraphSpec(2, 4, False, G)
    g = build_graph(spec)
    assert len(g.edges) == expected_edge_count(spec) == Architecture(2, 4, False, G).n_edges("qkv")
    nv = Naive(adapter.model)
    assert {nv.edge_name(s, k) for s, k in nv.edges()} == set(g.edge_index)  # the reference's own naming
    if adapter.arch == "gpt_neo":  # the local layer's window is shorter than the prompts
        assert adapter.model.config.attention_layers == ["global", "local"]
        assert adapter.model.config.window_size < len(_ids(adapter.tokenizer, make_pairs()[0].clean))
    ids = _ids(adapter.tokenizer, make_pairs()[0].clean)
    with torch.no_grad():
        ours, _ = nv.forward(ids, nv.embed(ids))
        hf = adapter.model(input_ids=ids[None]).logits[0, -1]
    # GPT-Neo's attention and Llama's RMSNorm compute in float32 inside HF even for a float64 model
    tol = 1e-10 if adapter.arch == "opt" else 1e-5
    assert float((ours - hf).abs().max()) < tol * max(1.0, float(hf.abs().max()))


def test_hf_vs_hooked_parity(adapter, model_dir):
    pairs = make_pairs()
    assert hooked_parity(adapter, pairs, batch_size=3) < 1e-10
    assert hooked_parity(load_model(model_dir, dtype="float32"), pairs, batch_size=3) < 1e-4


def test_hooks_transparent_head_outputs_and_qkv_grads(adapter):
    a = adapter
    ids = _ids(a.tokenizer, "LCM(4, 6) =")[None]
    zs, outs = {}, {}
    with torch.no_grad():
        plain = a.forward_logits(ids)
        with a.hooks(on_z=lambda l, z: zs.__setitem__(l, z), on_attn_out=lambda l, o: outs.__setitem__(l, o),
                     on_mlp_out=lambda l, o: None, grad_mlp_in=lambda l, g: None, grad_final_in=lambda g: None):
            hooked = a.forward_logits(ids)
    assert float((plain - hooked).abs().max()) == 0.0
    for l in range(a.n_layers):
        bias = a.o_proj(l).bias
        assert torch.allclose(a.head_outputs(l, zs[l]).sum(0) + (0 if bias is None else bias), outs[l], atol=1e-12)
    # the per-head q/k/v input gradients (closed-form LayerNorm / RMSNorm VJP) against autograd
    torch.manual_seed(0)
    l, H, dh = 1, a.n_heads, a.d_head
    x = torch.randn(2, 5, a.d_model, dtype=torch.float64, requires_grad=True)
    projs = a.qkv_projs(l)
    gs = [torch.randn(2, 5, p.n * dh, dtype=torch.float64) for p in projs]
    got = a.qkv_input_grads(l, torch.cat(gs, -1), x.detach())  # (3H, B, P, D)
    assert got.shape[0] == 3 * H
    norm = a.attn_ln(l)
    tol = 1e-5 if a.arch == "llama" else 1e-10  # HF's LlamaRMSNorm (and so autograd through it) runs in float32
    for p, g in zip(projs, gs):
        for i, col in enumerate(p.cols.tolist()):
            y = norm(x) @ p.W[i].T
            (gx,) = torch.autograd.grad((y * g[..., i * dh:(i + 1) * dh]).sum(), x)
            assert torch.allclose(got[col], gx, rtol=0, atol=tol * float(gx.abs().max())), (p.module, col)
    filled = {c for p in projs for c in p.cols.tolist()}
    assert all(float(got[c].abs().max()) == 0 for c in range(3 * H) if c not in filled)
    (full,) = torch.autograd.grad(sum((p.module(norm(x)) * g).sum() for p, g in zip(projs, gs)), x)
    assert torch.allclose(got.sum(0), full, rtol=0, atol=tol * float(full.abs().max()))


def test_engine_matches_naive(adapter):
    pairs = make_pairs()
    res = score(adapter, build_graph(adapter.spec), pairs, method="eap-ig-inputs", steps=2, batch_size=3)
    ours = res.to_dict()
    ref = naive_scores(adapter, pairs, steps=2)
    assert set(ours) == set(ref)
    names = sorted(ref)
    o = torch.tensor([ours[n] for n in names], dtype=torch.float64)
    r = torch.tensor([ref[n] for n in names], dtype=torch.float64)
    assert float(r.abs().max()) > 0
    assert float((o - r).abs().max() / r.abs().max()) < 1e-5
    assert res.parity is not None and res.parity < 1e-9


def test_full_is_100_and_empty_is_0(adapter):
    pairs = make_pairs()
    full, empty = evaluate_many(adapter, [full_circuit(adapter.spec), empty_circuit(adapter.spec)], pairs,
                                metrics=("kl", "logit-diff"), batch_size=3)
    assert full.f_model > 1e-6
    for m in ("kl", "logit-diff"):
        assert full.by_metric[m].percent == pytest.approx(100.0, abs=1e-8)
        assert empty.by_metric[m].percent == pytest.approx(0.0, abs=1e-8)
    assert full.n_edges == expected_edge_count(adapter.spec)


@pytest.mark.parametrize("seed,frac", [(0, 0.6), (2, 0.3)])
def test_patching_matches_independent_per_edge_reference(adapter, seed, frac):
    pairs = make_pairs()
    c = random_circuit(adapter.spec, frac, seed)
    r = evaluate(adapter, c, pairs, metric="kl", batch_size=3, prune=False)
    fm, fc = naive_faithfulness(adapter, lambda name, s, k: name in c.edges, pairs)
    assert abs(fc - fm) > 1e-3 * fm  # a real partial circuit
    assert r.f_model == pytest.approx(fm, rel=1e-5) and r.f_circuit == pytest.approx(fc, rel=1e-5)
    # pruning first does not change a patching evaluation (with GQA: shared k/v edges stay while any
    # head of their group is alive)
    assert evaluate(adapter, c, pairs, metric="kl", batch_size=3).f_circuit == pytest.approx(r.f_circuit, rel=1e-9)


def test_head_level_circuit_shares_kv_inputs(adapter):
    """A head-level edge u->a{l}.h{h} stands for u's q edge into head h and, with grouped-query
    attention, for u's edges into the k/v input of h's kv-head (shared by its group)."""
    pairs = make_pairs()[:3]
    h = collapse(random_circuit(adapter.spec, 0.4, 5))
    heads = set(h.edges)
    r = adapter.spec.group_size

    def kept(name, s, key):
        if key[0] in ("m", "logits"):
            return name in heads
        src = name.split("->")[0]
        group = [key[2]] if key[0] == "q" else range(key[2] * r, key[2] * r + r)
        return any(f"{src}->a{key[1]}.h{x}" in heads for x in group)

    res = evaluate(adapter, h, pairs, metric="kl", batch_size=3, prune=False)
    fm, fc = naive_faithfulness(adapter, kept, pairs)
    assert res.f_circuit == pytest.approx(fc, rel=1e-5) and res.f_model == pytest.approx(fm, rel=1e-5)


def test_methods_agree_at_one_step(adapter):
    """m = 1, right rule: every method's gradient point is the clean run, so eap-ig-inputs, eap and
    eap-ig-activations (which replaces each node group's output through the hooks: OPT's flattened MLP
    output included) give the same scores."""
    pairs = make_pairs()[:3]
    g = build_graph(adapter.spec)
    eap = score(adapter, g, pairs, method="eap", metric="logit-diff", batch_size=3).dense
    for method in ("eap-ig-inputs", "eap-ig-activations"):
        other = score(adapter, g, pairs, method=method, metric="logit-diff", steps=1, batch_size=3).dense
        assert float((other - eap).abs().max()) <= 1e-10 * float(eap.abs().max())
