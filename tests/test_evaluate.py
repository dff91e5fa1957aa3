"""Circuit evaluation: HF parity, the 100% / 0% anchors, an independent per-edge patching reference,
accuracy, invariances, the faithfulness curve, the CLI and its errors.

The reference (``naive_circuit_logits``) re-implements the tiny GPT-NeoX / GPT-2 forward node by node
from the HF weights, one example at a time: every destination input (each head's q, k and v, each MLP,
the logits) is the sum over its upstream nodes of either that node's output in this run (edge in the
circuit) or its output in the corrupted run (edge not in the circuit). It shares no code with
analysis.patching / analysis.adapter / analysis.metrics.
"""

from __future__ import annotations

import csv
import json
import math
import random

import pytest
import torch

from analysis.circuit import (Circuit, collapse, empty_circuit, full_circuit, prune_circuit, select_circuit,
                              to_eap_json)
from analysis.datasets import PromptPair
from analysis.errors import UserError
from analysis.evaluate import evaluate, evaluate_many, faithfulness_curve, hooked_parity
from analysis.graph import GraphSpec, build_graph
from analysis.models import load_model
from analysis.tiny import build_tiny_model
from ingest.cli import main

torch.set_num_threads(2)

PFX = "Calculate the result of the following arithmetic expression and provide only the final answer:"


def make_pairs():
    rows = [(41, 29), (5, 3), (12, 7), (50, 1), (60, 50)]
    pairs = [PromptPair(f"{PFX} {a} + {b} =", f"{PFX} {a} - {b} =", str(a + b), str(a - b)) for a, b in rows]
    pairs.append(PromptPair("LCM(4, 6) =", "LCM(3, 5) =", "12", "15"))  # shorter: batches are padded
    return pairs


@pytest.fixture(scope="module", params=["gpt_neox", "gpt2"])
def model_dir(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    build_tiny_model(d, arch=request.param, n_layers=2, n_heads=4, d_model=32, seed=5, max_number=120, init_std=0.3)
    return d


@pytest.fixture(scope="module")
def adapter(model_dir):
    return load_model(model_dir, dtype="float64")


# ----------------------------------------------------------------------------- naive reference
def _rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def naive_forward(model, ids, keep=None, corr=None):
    """Last-position logits and node outputs [input, a0.h0.., m0, ...] of one prompt. With ``keep``
    (dict (src, dst) -> bool over real edges) and ``corr`` (corrupted node outputs), an edge not kept
    carries the corrupted output of its source."""
    c = model.config
    neox = c.model_type == "gpt_neox"
    L, H, D = c.num_hidden_layers, c.num_attention_heads, c.hidden_size
    dh, P = D // H, ids.shape[0]
    blocks = model.gpt_neox.layers if neox else model.transformer.h
    parallel = neox and c.use_parallel_residual
    emb = model.gpt_neox.embed_in(ids) if neox else model.transformer.wte(ids)
    const = torch.zeros(P, D, dtype=emb.dtype) if neox else model.transformer.wpe(torch.arange(P))
    outs = [emb]

    def inp(dst, n_up, base):
        x = base
        for s in range(n_up):
            use_corr = keep is not None and not keep[(s, dst)]
            x = x + (corr[s] if use_corr else outs[s])
        return x

    causal = torch.ones(P, P, dtype=torch.bool).tril()
    for l in range(L):
        b = blocks[l]
        n_up = 1 + l * (H + 1)
        if neox:
            W = b.attention.query_key_value.weight.view(H, 3, dh, D).transpose(0, 1)
            bq = b.attention.query_key_value.bias.view(H, 3, dh).transpose(0, 1)
            Wo = b.attention.dense.weight.t().reshape(H, dh, D)
            bo, ln1, ln2 = b.attention.dense.bias, b.input_layernorm, b.post_attention_layernorm
            cos, sin = model.gpt_neox.rotary_emb(emb[None], torch.arange(P)[None])
            cos, sin = cos[0], sin[0]
        else:
            W = b.attn.c_attn.weight.t().reshape(3, H, dh, D)
            bq = b.attn.c_attn.bias.view(3, H, dh)
            Wo, bo, ln1, ln2 = b.attn.c_proj.weight.reshape(H, dh, D), b.attn.c_proj.bias, b.ln_1, b.ln_2
        heads = []
        for h in range(H):
            q, k, v = (ln1(inp(("a", l, h, t), n_up, const)) @ W[t, h].T + bq[t, h] for t in range(3))
            if neox:
                rd = cos.shape[-1]
                q, k = (torch.cat([x[..., :rd] * cos + _rotate_half(x[..., :rd]) * sin, x[..., rd:]], -1)
                        for x in (q, k))
            att = ((q @ k.T) / math.sqrt(dh)).masked_fill(~causal, float("-inf")).softmax(-1)
            heads.append(att @ v @ Wo[h])
        outs += heads
        n_mlp = n_up if parallel else n_up + H
        outs.append(b.mlp(ln2(inp(("m", l), n_mlp, const if parallel else const + bo))))
        const = const + bo
    final = model.gpt_neox.final_layer_norm if neox else model.transformer.ln_f
    x = final(inp(("logits",), len(outs), const))
    return model.get_output_embeddings()(x[-1]), outs


def _dst_key(graph, name):
    """Our naive destination key for an edge name."""
    e = graph.edges[graph.edge_index[name]]
    if e.dst == "logits":
        return ("logits",)
    node = graph.nodes[e.dst]
    if node.kind == "mlp":
        return ("m", node.layer)
    return ("a", node.layer, node.head, "qkv".index(e.qkv))


def naive_faithfulness(adapter, circuit_edges, pairs):
    """(F(M), F(C), logit-diff F(M), F(C), model acc, circuit acc) from the node-by-node reference."""
    model, tok = adapter.model, adapter.tokenizer
    graph = build_graph(adapter.spec)
    keep = {}
    for e in graph.edges:
        keep[(graph.src_index[e.src], _dst_key(graph, e.name))] = e.name in circuit_edges
    V = model.config.vocab_size
    fm = fc = ldm = ldc = ldk = 0.0
    acc_m = acc_c = 0
    for p in pairs:
        ids_c = torch.tensor([0] + tok(p.clean, add_special_tokens=False)["input_ids"])
        ids_k = torch.tensor([0] + tok(p.corrupted, add_special_tokens=False)["input_ids"])
        lab = tok(p.label, add_special_tokens=False)["input_ids"][0]
        clab = tok(p.corrupted_label, add_special_tokens=False)["input_ids"][0]
        with torch.no_grad():
            clean, _ = naive_forward(model, ids_c)
            corr_logits, corr = naive_forward(model, ids_k)
            circ, _ = naive_forward(model, ids_c, keep, corr)
        lp = corr_logits.log_softmax(-1)

        def kl(x):
            return float((lp.exp() * (lp - x.log_softmax(-1))).sum()) / V

        fm += kl(clean)
        fc += kl(circ)
        ldm += float(clean[lab] - clean[clab])
        ldc += float(circ[lab] - circ[clab])
        ldk += float(corr_logits[lab] - corr_logits[clab])
        acc_m += tok.decode([int(clean.argmax())]).strip() == p.label
        acc_c += tok.decode([int(circ.argmax())]).strip() == p.label
    n = len(pairs)
    return fm / n, fc / n, (ldm - ldk) / n, (ldc - ldk) / n, 100 * acc_m / n, 100 * acc_c / n


def random_circuit(spec, frac, seed):
    rng = random.Random(seed)
    names = [e.name for e in build_graph(spec).edges]
    chosen = {n: rng.uniform(-1, 1) for n in names if rng.random() < frac}
    nodes = {x for n in chosen for x in (n.split("->")[0], n.split("->")[1].split("<")[0])}
    return Circuit(spec, "qkv", chosen, frozenset(nodes))


# ----------------------------------------------------------------------------- tests
def test_hf_vs_hooked_parity(adapter, model_dir):
    pairs = make_pairs()
    assert hooked_parity(adapter, pairs, batch_size=4) < 1e-10
    assert hooked_parity(load_model(model_dir, dtype="float32"), pairs, batch_size=4) < 1e-4


def test_full_is_100_and_empty_is_0(adapter):
    pairs = make_pairs()
    full, empty = evaluate_many(adapter, [full_circuit(adapter.spec), empty_circuit(adapter.spec)], pairs,
                                metrics=("kl", "logit-diff"), batch_size=4)
    assert full.f_model > 1e-6  # clean and corrupted really differ
    for m in ("kl", "logit-diff"):
        assert full.by_metric[m].percent == pytest.approx(100.0, abs=1e-8)
        assert empty.by_metric[m].percent == pytest.approx(0.0, abs=1e-8)
        assert empty.by_metric[m].f_circuit == pytest.approx(0.0, abs=1e-10 * abs(full.by_metric[m].f_model))
    assert full.n_edges == len(build_graph(adapter.spec).edges) and empty.n_edges == 0


@pytest.mark.parametrize("seed,frac", [(0, 0.6), (2, 0.25)])
def test_patching_matches_independent_per_edge_reference(adapter, seed, frac):
    pairs = make_pairs()[2:]  # 4 pairs, one shorter (padded in a batch of 3)
    c = random_circuit(adapter.spec, frac, seed)
    r = evaluate(adapter, c, pairs, metric=("kl", "logit-diff"), batch_size=3, prune=False)
    fm, fc, ldm, ldc, am, ac = naive_faithfulness(adapter, set(c.edges), pairs)
    assert 1 < r.faithfulness < 99.9 or abs(fc - fm) > 1e-3 * fm  # a real partial circuit
    assert r.f_model == pytest.approx(fm, rel=1e-5) and r.f_circuit == pytest.approx(fc, rel=1e-5)
    ld = r.by_metric["logit-diff"]
    assert ld.f_model == pytest.approx(ldm, rel=1e-5, abs=1e-9) and ld.f_circuit == pytest.approx(ldc, rel=1e-5, abs=1e-9)
    assert (r.model_accuracy, r.circuit_accuracy) == (am, ac)
    # pruning first (as evaluate_graph does) does not change a patching evaluation
    pruned = evaluate(adapter, c, pairs, metric="kl", batch_size=3, prune=True)
    assert pruned.f_circuit == pytest.approx(r.f_circuit, rel=1e-9)
    assert pruned.n_edges <= r.n_edges


def test_accuracy_against_argmax_labels(adapter):
    """Labels = the clean model's own argmax: model accuracy 100%; the empty circuit (= corrupted run)
    is right exactly where the corrupted argmax equals it."""
    tok = adapter.tokenizer
    pairs = []
    for p in make_pairs():
        ids = torch.tensor([[0] + tok(p.clean, add_special_tokens=False)["input_ids"]])
        kid = torch.tensor([[0] + tok(p.corrupted, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            lab = tok.decode([int(adapter.model(input_ids=ids).logits[0, -1].argmax())]).strip()
            clab = tok.decode([int(adapter.model(input_ids=kid).logits[0, -1].argmax())]).strip()
        pairs.append((PromptPair(p.clean, p.corrupted, lab, p.corrupted_label), clab == lab))
    data = [p for p, _ in pairs]
    full, empty = evaluate_many(adapter, [full_circuit(adapter.spec), empty_circuit(adapter.spec)], data, batch_size=4)
    assert full.model_accuracy == 100.0 and full.circuit_accuracy == 100.0  # percent
    assert empty.circuit_accuracy == 100.0 * sum(same for _, same in pairs) / len(pairs)
    assert empty.model_accuracy == 100.0


def test_batch_size_and_head_level(adapter):
    pairs = make_pairs()
    c = random_circuit(adapter.spec, 0.6, 7)
    a = evaluate(adapter, c, pairs, batch_size=1)
    b = evaluate(adapter, c, pairs, batch_size=6)
    assert a.f_circuit == pytest.approx(b.f_circuit, rel=1e-9) and a.f_model == pytest.approx(b.f_model, rel=1e-9)
    h = collapse(prune_circuit(c))
    expanded = Circuit(c.spec, "qkv", dict.fromkeys(h.qkv_edge_names(), 0.0), h.nodes)
    assert evaluate(adapter, h, pairs).f_circuit == pytest.approx(evaluate(adapter, expanded, pairs).f_circuit, rel=1e-9)


def test_faithfulness_curve(adapter):
    pairs = make_pairs()
    rng = random.Random(3)
    scores = {e.name: rng.gauss(0, 1) for e in build_graph(adapter.spec).edges}
    fracs = (0.3, 0.6, 1.0)
    pts = faithfulness_curve(adapter, scores, pairs, fracs, batch_size=3)
    assert [p.frac for p in pts] == list(fracs)
    for p in pts:
        c = select_circuit(scores, adapter.spec, "top_frac", p.frac)
        assert p.n_edges == c.n_edges
        assert p.faithfulness == pytest.approx(evaluate(adapter, c, pairs).faithfulness, rel=1e-9, abs=1e-9)
    assert pts[-1].faithfulness == pytest.approx(100.0, abs=1e-8)


def test_errors(adapter):
    pairs = make_pairs()
    other = GraphSpec(adapter.spec.n_layers + 1, adapter.spec.n_heads, adapter.spec.parallel_attn_mlp)
    with pytest.raises(UserError, match="the model has"):
        evaluate(adapter, full_circuit(other), pairs)
    with pytest.raises(UserError, match="no prompt pairs"):
        evaluate(adapter, full_circuit(adapter.spec), [])
    with pytest.raises(UserError, match="unknown metric"):
        evaluate(adapter, full_circuit(adapter.spec), pairs, metric="accuracy")
    with pytest.raises(UserError, match="corrupted_label"):
        evaluate(adapter, full_circuit(adapter.spec), [PromptPair(p.clean, p.corrupted, p.label, None) for p in pairs],
                 metric="logit-diff")


# ----------------------------------------------------------------------------- CLI
def run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_cli_evaluate_and_curve(adapter, model_dir, tmp_path, capsys):
    pairs = make_pairs()
    data = tmp_path / "d.csv"
    with open(data, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["clean", "corrupted", "label", "corrupted_label"])
        w.writerows([(p.clean, p.corrupted, p.label, p.corrupted_label) for p in pairs])
    rng = random.Random(4)
    spec = adapter.spec
    scores = {e.name: rng.gauss(0, 1) for e in build_graph(spec).edges}
    sfile = tmp_path / "s.json"
    sfile.write_text(json.dumps({"graph": {"n_layers": spec.n_layers, "n_heads": spec.n_heads,
                                           "parallel_attn_mlp": spec.parallel_attn_mlp}, "scores": scores}))
    cfile = tmp_path / "c.json"
    code, _, err = run(["circuit", "select", str(sfile), "--top-frac", "0.5", "--out", str(cfile)], capsys)
    assert code == 0, err
    code, out, err = run(["circuit", "evaluate", "--model", str(model_dir), "--data", str(data), "--circuit",
                          str(cfile), "--metric", "kl", "--metric", "logit-diff", "--dtype", "float64",
                          "--batch-size", "4", "--json", "--quiet"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    want = evaluate(adapter, select_circuit(scores, spec, "top_frac", 0.5), pairs, metric=("kl", "logit-diff"))
    assert doc["faithfulness_percent"] == pytest.approx(want.faithfulness, rel=1e-9)
    assert doc["by_metric"]["logit-diff"]["percent"] == pytest.approx(want.by_metric["logit-diff"].percent, rel=1e-9)
    code, out, err = run(["circuit", "curve", str(sfile), "--model", str(model_dir), "--data", str(data),
                          "--fracs", "0.5,1", "--dtype", "float64", "--json", "--quiet"], capsys)
    assert code == 0, err
    pts = json.loads(out)["points"]
    assert [p["top_frac"] for p in pts] == [0.5, 1.0] and pts[1]["faithfulness_percent"] == 100.0
    # a circuit file of another shape: one line, before any work
    wrong = tmp_path / "wrong.json"
    to_eap_json(full_circuit(GraphSpec(3, 2, spec.parallel_attn_mlp)), wrong, full=False)
    code, _, err = run(["circuit", "evaluate", "--model", str(model_dir), "--data", str(data), "--circuit", str(wrong),
                        "--quiet"], capsys)
    assert code == 2 and "does not match the model" in err and err.count("\n") == 1
