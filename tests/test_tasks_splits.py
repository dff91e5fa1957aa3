"""Splits, disjoint robustness splits, perturbations, and the dataset folder with its manifest."""

from __future__ import annotations

import json

import pytest

from analysis.datasets import (available_splits, content_hash, dataset_provenance, load_split,
                               read_manifest)
from analysis.errors import UserError
from analysis.tasks.build import DatasetSpec, make_dataset
from analysis.tasks.filters import TokenChecker, check_pair
from analysis.tasks.generate import generate_rows
from analysis.tasks.perturb import LEVELS, parse_levels, perturb_rows
from analysis.tasks.registry import TASKS, make_task
from analysis.tasks.splits import SplitConfig, disjoint_splits, split_indices
from analysis.tokenizer import build_word_tokenizer


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    build_word_tokenizer(out)
    return out


@pytest.fixture(scope="module")
def checker(tok_dir):
    from transformers import AutoTokenizer
    return TokenChecker(AutoTokenizer.from_pretrained(str(tok_dir)))


def test_split_matches_sklearn_train_test_split():
    # sklearn: train_test_split(range(10), test_size=0.2, random_state=42) -> train [5,0,7,2,9,4,3,6], test [8,1]
    ft, circ = split_indices(10, SplitConfig(0.8, 0.2, 42))
    assert ft == [5, 0, 7, 2, 9, 4, 3, 6] and circ == [8, 1]
    ft, circ = split_indices(5000, SplitConfig(0.9, 0.1, 42))
    assert (len(ft), len(circ)) == (4500, 500)
    assert sorted(ft + circ) == list(range(5000))
    assert split_indices(5000, SplitConfig(0.9, 0.1, 42)) == (ft, circ)
    assert split_indices(5000, SplitConfig(0.9, 0.1, 43)) != (ft, circ)


@pytest.mark.parametrize("ft,circ", [(0.7, 0.2), (0.5, 0.6), (1.0, 0.0), (0.0, 1.0), (-0.2, 1.2)])
def test_split_fractions_must_add_up(ft, circ):
    with pytest.raises(UserError, match="split fractions"):
        SplitConfig(ft, circ)


def test_disjoint_splits():
    parts = disjoint_splits(list(range(1000)), 5, 200, seed=42)
    assert [len(p) for p in parts] == [200] * 5
    flat = [i for p in parts for i in p]
    assert len(set(flat)) == 1000
    assert disjoint_splits(list(range(1000)), 5, 200, seed=42) == parts
    with pytest.raises(UserError, match="need 1200 rows"):
        disjoint_splits(list(range(1000)), 6, 200, seed=42)


def test_parse_levels():
    assert parse_levels("all") == LEVELS == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    assert parse_levels("10,0.5,30%") == (0.1, 0.5, 0.3)
    for bad in ("1.5", "0", "100", "x", "0.123"):
        with pytest.raises(UserError):
            parse_levels(bad)


# Perturbations that keep the operator / sequence kind / handed object (method.md 7); Add/Sub may flip
# the operator, LCM draws a new strategy, comparison and capital may change the answer.
KEEPS_GROUP = {"mul_div", "sequence", "compositional", "compositional_add_sub", "compositional_mul_div", "ioi"}


@pytest.mark.parametrize("name", list(TASKS))
def test_perturbation_rules_for_every_task(name, checker):
    task = make_task(name)
    rows = generate_rows(task, 200, 2, checker)
    keys = {task.key(r.clean) for r in rows}
    for level in (0.1, 0.5, 0.9):
        out, stats = perturb_rows(task, rows, level, 2, checker)
        changed = [i for i, (a, b) in enumerate(zip(rows, out)) if a != b]
        assert stats["chosen"] == round(level * 200)
        assert len(changed) == stats["perturbed"] >= 0.85 * stats["chosen"]
        new_keys = [task.key(out[i].clean) for i in changed]
        assert len(set(new_keys)) == len(new_keys) and not set(new_keys) & keys  # duplicates resampled
        base = make_task(task.base_task) if task.base_task else task
        for i in changed:
            r = out[i]
            # The corrupted partner is rebuilt with the normal rule and the pair passes every filter.
            assert task.corruption_kind(r.clean, r.corrupted) in task.corruption_kinds
            assert check_pair(task, r.clean, r.corrupted, checker) is None
            if name in KEEPS_GROUP:
                assert base.group_of(r.clean) == base.group_of(rows[i].clean)
    assert perturb_rows(task, rows, 0.5, 2, checker) == perturb_rows(task, rows, 0.5, 2, checker)


def test_perturbation_kinds_follow_method_md_7(checker):
    seq = make_task("sequence")
    rows = generate_rows(seq, 200, 3, checker)
    out, _ = perturb_rows(seq, rows, 0.9, 3, checker)
    for a, b in zip(rows, out):
        if a != b and seq.group_of(a.clean) == "arithmetic":
            shift = b.clean.shown[0] - a.clean.shown[0]
            assert shift and all(y - x == shift for x, y in zip(a.clean.shown, b.clean.shown))
        elif a != b:
            assert b.clean.shown[1] // b.clean.shown[0] == a.clean.shown[1] // a.clean.shown[0]
    fn = make_task("function")
    rows = generate_rows(fn, 200, 3, checker)
    out, _ = perturb_rows(fn, rows, 0.5, 3, checker)
    assert all(a.clean.a == b.clean.a for a, b in zip(rows, out))
    assert sum(a.clean.b != b.clean.b for a, b in zip(rows, out)) == 100


def test_dataset_folder_manifest_and_variants(tok_dir, tmp_path):
    out = tmp_path / "ds"
    spec = DatasetSpec(task="add_sub", tokenizer=tok_dir, out=out, n=100, count=2000, seed=5,
                       perturb_levels=(0.1, 0.9), disjoint=2, disjoint_size=100)
    manifest = make_dataset(spec)
    assert manifest["counts"] == {"finetune": 1600, "circuit": 400, "split_0": 100, "split_1": 100,
                                  "perturb_10": 400, "perturb_90": 400}
    on_disk = read_manifest(out)
    assert on_disk == json.loads((out / "manifest.json").read_text()) == manifest
    for field in ("task", "params", "tokenizer", "seed", "split", "counts", "content_hash", "groups"):
        assert field in on_disk
    assert on_disk["params"] == {"n": 100} and on_disk["groups"] == {"+": 1000, "-": 1000}
    assert on_disk["tokenizer"]["files_sha256"]["tokenizer.json"]
    assert available_splits(out)[:2] == ["finetune", "circuit"]
    ft, circ = load_split(out, "finetune"), load_split(out, "circuit")
    assert not {p.clean for p in ft} & {p.clean for p in circ}
    s0, s1 = load_split(out, "split_0"), load_split(out, "split_1")
    assert not {p.clean for p in s0} & {p.clean for p in s1}
    assert {p.clean for p in s0 + s1} <= {p.clean for p in circ}  # drawn from the circuit split
    p90 = load_split(out, "perturb_90")
    assert sum(a != b for a, b in zip(circ, p90)) == 360
    # Provenance: same spec -> byte-identical data and hash; a hand edit shows up as modified.
    prov = dataset_provenance(out)
    assert prov["content_hash"] == prov["content_hash_now"] == content_hash(out) and not prov["modified"]
    again = make_dataset(DatasetSpec(**{**spec.__dict__, "out": tmp_path / "again"}))
    assert again["content_hash"] == manifest["content_hash"]
    other = make_dataset(DatasetSpec(**{**spec.__dict__, "out": tmp_path / "other", "seed": 6}))
    assert other["content_hash"] != manifest["content_hash"]
    with (out / "circuit.csv").open("a") as fh:
        fh.write("x,y,1\n")
    assert dataset_provenance(out)["modified"]
    with pytest.raises(UserError, match="unknown split 'perturb_50'"):
        load_split(out, "perturb_50")
    with pytest.raises(UserError, match="exists and is not empty"):
        make_dataset(spec)


def test_disjoint_splits_need_enough_rows(tok_dir, tmp_path):
    with pytest.raises(UserError, match="disjoint splits of 200 need 1000 rows"):
        make_dataset(DatasetSpec(task="add_sub", tokenizer=tok_dir, out=tmp_path / "x", count=1000,
                                 disjoint=5, disjoint_size=200))
