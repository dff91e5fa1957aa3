"""Answers as the model sees them: leading-space labels and answers of several tokens.

Multi-token scoring and patching are checked against the independent node-by-node reference
(tests/naive.py) on a tiny Llama with a digit-splitting tokenizer: the reference runs the teacher-forced
prompt (prompt + every answer token but the last) and sums its metric over the answer positions
itself. Leading spaces are checked with a tokenizer where both " Mary" and "Mary" are single tokens,
so scoring the wrong spelling would be silent.
"""

from __future__ import annotations

import csv

import pytest
import torch

from analysis.circuit import Circuit, full_circuit
from analysis.datasets import PromptPair, read_pairs_csv
from analysis.eap import score
from analysis.errors import UserError
from analysis.evaluate import evaluate
from analysis.graph import build_graph
from analysis.models import load_model
from analysis.tasks.filters import EQUAL_ANSWER_LENGTH, TokenChecker, check_pair
from analysis.tasks.generate import generate
from analysis.tasks.registry import make_task
from analysis.tiny import build_tiny_model
from analysis.tokenizer import build_digit_tokenizer
from naive import Naive, _ids

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    d = tmp_path_factory.mktemp("llama_digits")
    tok = build_digit_tokenizer(d / "tok")
    build_tiny_model(d, arch="llama", n_layers=2, n_heads=4, n_kv_heads=2, d_model=32, seed=5, tokenizer=tok,
                     init_std=0.3)
    return load_model(d, dtype="float64")


@pytest.fixture(scope="module")
def pairs(llama):
    """Add/Sub within 100 made with the digit tokenizer: answers of 1 and 2 tokens, in one batch."""
    made = generate("add_sub", llama.tokenizer, count=40, seed=1, answer_tokens="any", n=100)
    one = [p for p in made if len(p.label) == 1][:2]
    two = [p for p in made if len(p.label) == 2][:3]
    assert one and len(two) == 3
    return one + two


def _answer(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def naive_multi(adapter, pairs, metric, steps, kept=None):
    """Scores (eap-ig-inputs, right rule) or, with ``kept``, (F(M), F(C)) of the KL faithfulness, with
    the metric summed over the teacher-forced answer positions; one example at a time."""
    nv = Naive(adapter.model)
    tok = adapter.tokenizer
    total = torch.zeros(len(nv.sources), len(nv.dkeys), dtype=torch.float64)
    fm = fc = 0.0
    for p in pairs:
        ans, cans = _answer(tok, p.label), _answer(tok, p.corrupted_label)
        ids_c = torch.cat([_ids(tok, p.clean), torch.tensor(ans[:-1], dtype=torch.long)])
        ids_k = torch.cat([_ids(tok, p.corrupted), torch.tensor(ans[:-1], dtype=torch.long)])
        at = torch.arange(len(ids_c) - len(ans), len(ids_c))  # positions predicting the answer tokens

        def m(logits, ref):
            x = logits[at]
            if metric == "kl":
                lp = ref[at].log_softmax(-1)
                return ((lp.exp() * (lp - x.log_softmax(-1))).sum(-1) / x.shape[-1]).sum()
            return sum(x[j, ans[j]] - x[j, cans[j]] for j in range(len(ans)))

        with torch.no_grad():
            e_c, e_k = nv.embed(ids_c), nv.embed(ids_k)
            clean, outs_c = nv.forward(ids_c, e_c, all_positions=True)
            corr_logits, outs_k = nv.forward(ids_k, e_k, all_positions=True)
        if kept is not None:
            keep = {(s, k): kept(nv.edge_name(s, k)) for s, k in nv.edges()}
            with torch.no_grad():
                circ, _ = nv.forward(ids_c, e_c, keep=keep, corr=outs_k, all_positions=True)
            fm += float(m(clean, corr_logits))
            fc += float(m(circ, corr_logits))
            continue
        diff = [b - a for a, b in zip(outs_c, outs_k)]
        for a in [k / steps for k in range(1, steps + 1)]:
            eps = torch.zeros_like(total, requires_grad=True)
            logits, _ = nv.forward(ids_c, (1 - a) * e_k + a * e_c, eps, diff, all_positions=True)
            (g,) = torch.autograd.grad(m(logits, clean), eps)
            total += g
    if kept is not None:
        return fm / len(pairs), fc / len(pairs)
    total /= len(pairs) * steps
    return {nv.edge_name(s, k): float(total[s, nv.col[k]]) for s, k in nv.edges()}


def test_digit_tokenizer_makes_multi_token_numeric_tasks(llama):
    tok = llama.tokenizer
    task = make_task("add_sub", n=100)
    with pytest.raises(UserError, match="single-token label"):  # the paper's filter refuses them
        generate(task, tok, count=40, seed=1)
    made = generate(task, tok, count=40, seed=1, answer_tokens="any")
    assert {len(_answer(tok, p.label)) for p in made} == {1, 2}
    for p in made:  # the corrupted answer, where defined, has the answer's token length
        assert p.corrupted_label is None or len(_answer(tok, p.corrupted_label)) == len(_answer(tok, p.label))
    inst = task.parse("Calculate the result of the following arithmetic expression and provide only the final answer: 9 + 3 =")
    corr = task.parse("Calculate the result of the following arithmetic expression and provide only the final answer: 9 - 3 =")
    assert check_pair(task, inst, corr, TokenChecker(tok, "any")) == EQUAL_ANSWER_LENGTH  # 12 vs 6


@pytest.mark.parametrize("metric", ["kl", "logit-diff"])
def test_multi_token_scores_match_naive(llama, pairs, metric):
    graph = build_graph(llama.spec)
    ours = score(llama, graph, pairs, method="eap-ig-inputs", metric=metric, steps=2, batch_size=3)
    ref = naive_multi(llama, pairs, metric, steps=2)
    got = dict(zip([e.name for e in graph.edges], graph.edge_scores(ours.dense).tolist()))
    assert set(got) == set(ref)
    worst = max(abs(got[n] - ref[n]) for n in ref)
    assert max(abs(v) for v in ref.values()) > 0
    assert worst / max(abs(v) for v in ref.values()) < 1e-5
    assert ours.parity is not None and ours.parity < 1e-9


def test_multi_token_faithfulness_matches_naive(llama, pairs):
    import random

    rng = random.Random(3)
    graph = build_graph(llama.spec)
    chosen = {e.name: 1.0 for e in graph.edges if rng.random() < 0.4}
    nodes = {x for n in chosen for x in (n.split("->")[0], n.split("->")[1].split("<")[0])}
    c = Circuit(llama.spec, "qkv", chosen, frozenset(nodes))
    r = evaluate(llama, c, pairs, metric="kl", batch_size=3, prune=False)
    fm, fc = naive_multi(llama, pairs, "kl", 1, kept=lambda name: name in chosen)
    assert abs(fc - fm) > 1e-3 * fm  # a real partial circuit
    assert r.f_model == pytest.approx(fm, rel=1e-5) and r.f_circuit == pytest.approx(fc, rel=1e-5)


def test_multi_token_accuracy_needs_every_token(llama):
    """Labels set to the model's own teacher-forced argmax tokens are 100% right; changing only the
    LAST token of the two-token answers makes exactly those wrong."""
    tok = llama.tokenizer
    pairs = generate("add_sub", tok, count=40, seed=1, answer_tokens="any", n=100)

    def text_of(ids):  # a label text that tokenizes back to exactly these ids, else None
        text = tok.decode(ids)
        return text if text.strip() and _answer(tok, text) == ids else None

    own = []
    for p in pairs:
        label = []
        for _ in _answer(tok, p.label):  # greedy, teacher-forced on the label's own prefix
            ids = torch.cat([_ids(tok, p.clean), torch.tensor(label, dtype=torch.long)])
            with torch.no_grad():
                label.append(int(llama.model(input_ids=ids[None]).logits[0, -1].argmax()))
        if text_of(label):
            own.append((label, PromptPair(p.clean, p.corrupted, text_of(label), None)))
    assert sum(len(ids) == 2 for ids, _ in own) >= 2 and any(len(ids) == 1 for ids, _ in own)
    graph = build_graph(llama.spec)
    full = full_circuit(llama.spec)
    assert evaluate(llama, full, [p for _, p in own], batch_size=4).model_accuracy == 100.0
    digit = tok.convert_tokens_to_ids("4")
    wrong = []
    for ids, p in own:
        if len(ids) == 2:
            ids = [ids[0], digit if ids[1] != digit else digit + 1]
        assert text_of(ids)
        wrong.append(PromptPair(p.clean, p.corrupted, text_of(ids), None))
    n_two = sum(len(ids) == 2 for ids, _ in own)
    acc = evaluate(llama, full, wrong, batch_size=4).model_accuracy
    assert acc == pytest.approx(100.0 * (len(own) - n_two) / len(own))


def test_single_token_answers_give_the_same_scores_in_any_batch(llama, pairs):
    """A one-token answer scored alone equals its scores inside a batch with two-token answers."""
    graph = build_graph(llama.spec)
    one = [p for p in pairs if len(_answer(llama.tokenizer, p.label)) == 1]
    alone = score(llama, graph, one, steps=2, batch_size=8).dense * len(one)
    mixed_all = score(llama, graph, pairs, steps=2, batch_size=8).dense * len(pairs)
    rest = score(llama, graph, [p for p in pairs if p not in one], steps=2, batch_size=8).dense * (len(pairs) - len(one))
    assert float((mixed_all - rest - alone).abs().max()) < 1e-9 * float(alone.abs().max())


# ------------------------------------------------------------------------------- leading spaces
@pytest.fixture(scope="module")
def bpe_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpt2_spaces")
    tok = build_digit_tokenizer(d / "tok")
    build_tiny_model(d, arch="gpt2", n_layers=1, n_heads=2, d_model=16, seed=2, tokenizer=tok)
    return load_model(d)


def test_leading_space_labels_score_the_spaced_token(bpe_model, tmp_path):
    tok = bpe_model.tokenizer
    spaced, bare = tok.convert_tokens_to_ids(" Mary"), tok.convert_tokens_to_ids("Mary")
    assert spaced != bare and tok.unk_token_id not in (spaced, bare)  # both spellings single tokens
    made = generate("ioi", tok, count=20, seed=0)
    assert all(p.label.startswith(" ") and p.corrupted_label.startswith(" ") for p in made)
    # a CSV keeps the label exactly as written: ' Mary' stays ' Mary'
    path = tmp_path / "ioi.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["clean", "corrupted", "label", "corrupted_label"])
        w.writerow(["Robert needed brush, Mary wanted pan, Daniel handed brush to",
                    "Robert needed brush, Mary wanted pan, Daniel handed pan to", " Robert", " Mary"])
    (row,) = read_pairs_csv(path)
    assert (row.label, row.corrupted_label) == (" Robert", " Mary")
    enc = bpe_model.encode_pairs([row], need_corrupted_label=True)
    assert enc.label == [[tok.convert_tokens_to_ids(" Robert")]] and enc.corrupted_label == [[spaced]]


def test_answer_errors_are_one_line(llama, tmp_path):
    bad = PromptPair("LCM(4, 6) =", "LCM(3, 5) =", "12", "5")
    with pytest.raises(UserError, match=r"^row 1: answer '12' is 2 token\(s\) but corrupted answer '5' is 1"):
        llama.encode_pairs([bad], need_corrupted_label=True)
    llama.encode_pairs([bad])  # the KL metric does not use the corrupted answer
    with pytest.raises(UserError, match="row 1: empty answer"):
        llama.encode_pairs([PromptPair("LCM(4, 6) =", "LCM(3, 5) =", " ", None)])
    path = tmp_path / "empty.csv"
    path.write_text('clean,corrupted,label\n"LCM(4, 6) =","LCM(3, 5) =","   "\n')
    with pytest.raises(UserError, match="line 2 has an empty clean, corrupted or label field"):
        read_pairs_csv(path)
