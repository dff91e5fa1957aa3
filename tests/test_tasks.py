"""Generators of every task: templates, corruption rules, tokenizer filters, balance, determinism."""

from __future__ import annotations

import math
import re
from collections import Counter

import pytest

from analysis.errors import UserError
from analysis.tasks.filters import TokenChecker
from analysis.tasks.generate import generate, generate_rows, to_pairs
from analysis.tasks.registry import TASKS, make_task
from analysis.tokenizer import build_word_tokenizer

# Small counts keep the suite fast; LCM's pool of unique query pairs is small with a 0..999 vocabulary.
COUNTS = {"lcm": 600, "capital": 400}
SMALL = 400


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return build_word_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def tok200(tmp_path_factory):
    return build_word_tokenizer(tmp_path_factory.mktemp("tok200"), max_number=200)


@pytest.fixture(scope="module")
def generated(tok):
    checker = TokenChecker(tok)
    out = {}
    for name in TASKS:
        task = make_task(name)
        rows = generate_rows(task, COUNTS.get(name, SMALL), 7, checker)
        out[name] = (task, rows, to_pairs(task, rows, checker))
    return out


def n_tokens(tok, text):
    return len(tok(text, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("name", list(TASKS))
def test_invariants_of_every_task(name, generated, tok):
    task, rows, pairs = generated[name]
    assert len(pairs) == COUNTS.get(name, SMALL)
    # No duplicate clean prompts; labels single tokens; clean and corrupted prompts of equal length.
    # The compositional subtasks are projections of unique compositional rows (as in the paper, whose
    # mul_div subtask has only 2461 distinct prompts in 5000 rows): uniqueness is checked on the base rows.
    if task.base_task:
        base = make_task(task.base_task)
        assert len({base.render(r.clean) for r in rows}) == len(rows)
    else:
        assert len({p.clean for p in pairs}) == len(pairs)
    label_prefix = " " if task.label_space else ""
    for p in pairs:
        assert p.label.startswith(label_prefix) and len(tok.tokenize(p.label)) == 1, p  # label as the model sees it
        assert n_tokens(tok, p.clean) == n_tokens(tok, p.corrupted), p
        assert p.clean != p.corrupted
        assert not p.clean.endswith((" ", "\n")) and not p.corrupted.endswith((" ", "\n"))
    # Each row is the task's corruption kind, and the prompt text round-trips through the parser.
    for r, p in zip(rows, pairs):
        inst, corr = task.parse_pair(p.clean, p.corrupted)
        assert task.corruption_kind(inst, corr) in task.corruption_kinds, p
        assert label_prefix + task.answer(inst) == p.label
        assert task.render(inst) == p.clean
    # Balanced groups (operators, Yes/No, which object is handed over).
    if len(task.groups) > 1:
        counts = Counter(task.group_of(r.clean) for r in rows)
        assert set(counts) == set(task.groups)
        assert len(set(counts.values())) == 1, counts


@pytest.mark.parametrize("name", list(TASKS))
def test_seeded_and_deterministic(name, tok):
    count = 40 if name != "comparison" else 40
    a = generate(name, tok, count=count, seed=3)
    b = generate(name, tok, count=count, seed=3)
    c = generate(name, tok, count=count, seed=4)
    assert a == b
    assert a != c


def test_add_sub_100_default_counts_and_rules(tok):
    pairs = generate("add_sub", tok, n=100)
    assert len(pairs) == 5000
    ops = Counter(re.search(r" ([-+]) ", p.clean)[1] for p in pairs)
    assert ops == {"+": 2500, "-": 2500}
    for p in pairs:
        a, op, b = re.search(r"(\d+) ([-+]) (\d+) =$", p.clean).groups()
        a, b = int(a), int(b)
        assert 1 <= b <= a <= 100
        assert int(p.label) == (a + b if op == "+" else a - b)
        assert int(p.corrupted_label) == (a - b if op == "+" else a + b)
    assert {int(p.label) for p in pairs} <= set(range(0, 200))


@pytest.mark.parametrize("n", [200, 300, 400, 500])
def test_add_sub_within_n(n, tok):
    pairs = generate(f"add_sub_{n}", tok, count=600)
    numbers = [int(x) for p in pairs for x in re.findall(r"(\d+) [-+] (\d+)", p.clean)[0]]
    assert max(numbers) <= n and min(numbers) >= 1
    assert max(numbers) > 100  # really drawn from the larger range
    assert all(int(p.label) <= 999 for p in pairs)  # single-token labels of this tokenizer


def test_add_sub_500_filter_drops_multi_token_labels(tok):
    # 500 + 500 = 1000 is not one token of a 0..999 vocabulary: it never appears as a label.
    pairs = generate("add_sub", tok, n=500, count=2000, seed=1)
    assert all(len(tok.tokenize(p.label)) == 1 for p in pairs)


def test_mul_div_rules(generated):
    task, rows, pairs = generated["mul_div"]
    for r, p in zip(rows, pairs):
        a, op, b = r.clean.a, r.clean.op, r.clean.b
        a2 = r.corrupted.a
        if op == "*":
            assert 2 <= a <= 200 and 2 <= b <= 180 and 2 <= a2 <= 99 and a2 != a
            assert p.label == str(a * b)
        else:
            assert a % b == 0 and 2 <= b <= 200 and 2 <= a // b <= 200
            assert a2 % b == 0 and a2 != a
            assert p.label == str(a // b)
        assert p.corrupted_label == task.answer(r.corrupted)


def test_sequence_rules(generated):
    task, rows, pairs = generated["sequence"]
    for r in rows:
        t = r.clean.shown + (r.clean.next,)
        d = t[1] - t[0]
        arithmetic = all(t[i + 1] - t[i] == d for i in range(4))
        geometric = all(t[i + 1] == t[i] * (t[1] // t[0]) for i in range(4))
        assert arithmetic or geometric
        changed = [i for i in range(4) if r.corrupted.shown[i] != r.clean.shown[i]]
        assert len(changed) == 1 and changed[0] in (2, 3)
        assert 1 <= r.corrupted.shown[changed[0]] - r.clean.shown[changed[0]] <= 100
        assert r.corrupted.shown[changed[0]] not in t
    assert all(p.corrupted_label is None for p in pairs)  # a corrupted sequence has no answer


def test_sequence_default_count_is_mostly_arithmetic(tok):
    pairs = generate("sequence", tok, seed=42)
    assert len(pairs) == 5000
    task = make_task("sequence")
    kinds = Counter(task.group_of(task.parse(p.clean)) for p in pairs)
    assert kinds["arithmetic"] / 5000 > 0.98  # the paper's file: 99.48% arithmetic


def test_lcm_rules(generated):
    task, rows, pairs = generated["lcm"]
    keys = [tuple(sorted(r.clean.query)) for r in rows]
    assert len(set(keys)) == len(keys)  # unique sorted query pairs
    for r, p in zip(rows, pairs):
        assert r.clean.example == r.corrupted.example
        assert math.lcm(*r.clean.query) != math.lcm(*r.corrupted.query)
        assert p.label == str(math.lcm(*r.clean.query))
        assert f"= {math.lcm(*r.clean.example)}, LCM(" in p.clean
    assert set(Counter(r.clean.strategy for r in rows)) == {"multiple", "coprime", "common_factor"}


def test_function_rules(generated):
    task, rows, pairs = generated["function"]
    assert len({(r.clean.a, r.clean.b) for r in rows}) == len(rows)
    for r, p in zip(rows, pairs):
        a, b, b2 = r.clean.a, r.clean.b, r.corrupted.b
        assert 1 <= a <= 20 and 1 <= b <= 500 and 1 <= b2 <= 500 and b2 != b
        assert p.clean.startswith(f"There is a function y={a}x+{b}. Given x=1,2,3,4, y={a + b},")
        assert p.label == str(4 * a + b) and p.corrupted_label == str(4 * a + b2)


def test_compositional_rules_and_aligned_subtasks(tok):
    comp = generate("compositional", tok, count=400, seed=5)
    add = generate("compositional_add_sub", tok, count=400, seed=5)
    mul = generate("compositional_mul_div", tok, count=400, seed=5)
    ops = Counter(re.search(r"\) ([*/]) ", p.clean)[1] for p in comp)
    assert ops == {"*": 200, "/": 200}
    for c, a, m in zip(comp, add, mul):
        x, op1, y, op2, z = re.search(r"\((\d+) ([-+]) (\d+)\) ([*/]) (\d+) =$", c.clean).groups()
        x, y, z = int(x), int(y), int(z)
        bracket = x + y if op1 == "+" else x - y
        assert 2 <= x <= 100 or op1 == "-"
        assert bracket >= 0
        z2 = int(re.search(r"(\d+) =$", c.corrupted)[1])
        if op2 == "*":
            assert 2 <= z <= 100 and 2 <= z2 <= 100 and int(c.label) == bracket * z
        else:
            assert z >= 2 and bracket % z == 0 and bracket % z2 == 0 and int(c.label) == bracket // z
        assert z2 != z
        # Subtasks built from the same instance, in the same row.
        assert a.clean.endswith(f": {x} {op1} {y} =") and a.label == str(bracket)
        assert a.corrupted.endswith(f": {x} {'-' if op1 == '+' else '+'} {y} =")
        assert m.clean.endswith(f": {bracket} {op2} {z} =") and m.label == c.label
        assert m.corrupted.endswith(f": {bracket} {op2} {z2} =") and m.corrupted_label == c.corrupted_label


def test_rebuttal_templates(generated, tok):
    _, _, cmp_pairs = generated["comparison"]
    for p in cmp_pairs:
        a, b = map(int, re.fullmatch(r"Is (\d+) > (\d+)\? Answer:", p.clean).groups())
        assert p.label == (" Yes" if a > b else " No") and p.corrupted == f"Is {b} > {a}? Answer:"
        assert {p.label, p.corrupted_label} == {" Yes", " No"}
    _, _, ioi = generated["ioi"]
    for p in ioi:
        m = re.fullmatch(r"(\w+) needed (\w+), (\w+) wanted (\w+), (\w+) handed (\w+) to", p.clean)
        assert m, p.clean
        a, x, b, y, c, given = m.groups()
        assert len({a, b, c}) == 3 and x != y
        assert p.label == " " + (a if given == x else b) and p.corrupted_label == " " + (b if given == x else a)
    _, _, cap = generated["capital"]
    from analysis.tasks.words import countries
    capital_of = dict(countries())
    assert len(capital_of) >= 60
    for p in cap:
        c1, k1, c2 = re.fullmatch(r"If (.+) corresponds to (.+), then (.+) corresponds to", p.clean).groups()
        assert capital_of[c1] == k1 and p.label == " " + capital_of[c2] and c1 != c2
        c3 = re.fullmatch(r"If .+ corresponds to .+, then (.+) corresponds to", p.corrupted)[1]
        assert c3 not in (c1, c2)
        # "Mexico City" is two tokens: no single-token corrupted answer, so none is written.
        spaced = " " + capital_of[c3]
        assert p.corrupted_label == (spaced if len(tok.tokenize(spaced)) == 1 else None)


def test_filter_error_names_filter_and_survivors(tok200, monkeypatch):
    import analysis.tasks.generate as engine
    monkeypatch.setattr(engine, "DRAWS_PER_EXAMPLE", 20)  # give up sooner; the outcome is the same
    # With numbers above 200 split into pieces, most products are not single tokens.
    with pytest.raises(UserError) as err:
        generate("mul_div", tok200, count=2000)
    msg = str(err.value)
    survived = int(re.search(r"only (\d+) of 2000 examples survived", msg)[1])
    assert 0 < survived < 2000
    assert "single-token label" in msg
    assert "\n" not in msg


def test_small_tokenizer_keeps_only_single_token_labels(tok200):
    pairs = generate("add_sub", tok200, n=200, count=1000)
    assert all(int(p.label) <= 200 for p in pairs)
    # A corrupted answer that is not a single token is left empty instead of written.
    assert any(p.corrupted_label is None for p in pairs)
    assert all(p.corrupted_label is None or int(p.corrupted_label) <= 200 for p in pairs)


def test_bad_task_options():
    with pytest.raises(UserError, match="unknown task"):
        make_task("nope")
    with pytest.raises(UserError, match="N must be one of"):
        make_task("add_sub", n=150)
    with pytest.raises(UserError, match="takes no parameter"):
        make_task("lcm", n=100)
    with pytest.raises(UserError, match="cannot be balanced"):
        generate("add_sub", None, count=5)
