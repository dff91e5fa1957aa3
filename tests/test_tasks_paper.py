"""Our templates and corruption rules against the paper's released CSVs (../shared/paper-data/)."""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

import pytest

from analysis.datasets import load_split, read_manifest
from analysis.errors import UserError
from analysis.tasks.build import DatasetSpec, import_rows, make_dataset
from analysis.tasks.generate import generate
from analysis.tasks.registry import make_task
from analysis.tasks.splits import SplitConfig
from analysis.tasks.words import ARITH_PREFIX
from analysis.tokenizer import build_word_tokenizer

PAPER = Path(__file__).resolve().parents[1].parent / "shared" / "paper-data"
FILES = {"add_sub_100.csv": ("add_sub", 5000), "mul_div.csv": ("mul_div", 2000),
         "sequence.csv": ("sequence", 5000), "lcm.csv": ("lcm", 2500), "function.csv": ("function", 5000),
         "compositional.csv": ("compositional", 5000)}

pytestmark = pytest.mark.skipif(not PAPER.is_dir(), reason="../shared/paper-data is not beside the checkout")

# Independent template regexes (written from method.md, not taken from the task modules), with the
# group index of every number, so a change to a template in the code cannot pass unnoticed.
P = re.escape(ARITH_PREFIX)
TEMPLATES = {
    "add_sub": re.compile(P + r"(\d+) ([-+]) (\d+) ="),
    "mul_div": re.compile(P + r"(\d+) ([*/]) (\d+) ="),
    "sequence": re.compile(r"Derive the following sequence: (\d+), (\d+), (\d+), (\d+),"),
    "lcm": re.compile(r"Calculate the least common multiple \(LCM\) of two numbers\. "
                      r"LCM\((\d+), (\d+)\) = (\d+), LCM\((\d+), (\d+)\) ="),
    "function": re.compile(r"There is a function y=(\d+)x\+(\d+)\. Given x=1,2,3,4, y=(\d+),(\d+),(\d+),"),
    "compositional": re.compile(P + r"\((\d+) ([-+]) (\d+)\) ([*/]) (\d+) ="),
}
# Which regex groups a corruption may change, per task (method.md 1).
CHANGED = {"add_sub": {(2,)}, "mul_div": {(1,)}, "sequence": {(3,), (4,)}, "lcm": {(4, 5), (4,), (5,)},
           "function": {(2, 3, 4, 5)}, "compositional": {(5,)}}


def corruption_shape(task: str, clean: str, corrupted: str) -> tuple[int, ...]:
    a = TEMPLATES[task].fullmatch(clean)
    b = TEMPLATES[task].fullmatch(corrupted)
    assert a and b, (clean, corrupted)
    return tuple(i for i in range(1, len(a.groups()) + 1) if a[i] != b[i])


def rows(name):
    with (PAPER / name).open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    build_word_tokenizer(out)
    return out


@pytest.mark.parametrize("fname", list(FILES))
def test_paper_rows_have_our_template_and_corruption(fname):
    task_name, count = FILES[fname]
    task = make_task(task_name)
    data = rows(fname)
    assert len(data) == count
    kinds = Counter()
    for row in data:
        assert corruption_shape(task_name, row["clean"], row["corrupted"]) in CHANGED[task_name], row
        inst, corr = task.parse_pair(row["clean"], row["corrupted"])
        kinds[task.corruption_kind(inst, corr)] += 1
        assert task.answer(inst) == row["label"]
        assert task.render(inst) == row["clean"]  # our renderer writes the paper's exact text
    assert set(kinds) <= set(task.corruption_kinds), kinds


@pytest.mark.parametrize("fname", list(FILES))
def test_our_rows_have_the_paper_shape(fname, tok):
    from transformers import AutoTokenizer
    task_name, _ = FILES[fname]
    pairs = generate(task_name, AutoTokenizer.from_pretrained(str(tok)), count=300, seed=11)
    paper_changed = Counter(corruption_shape(task_name, r["clean"], r["corrupted"]) for r in rows(fname))
    for p in pairs:
        shape = corruption_shape(task_name, p.clean, p.corrupted)
        assert shape in paper_changed, (shape, p)


def test_paper_invariants_of_method_md_12():
    add = rows("add_sub_100.csv")
    assert Counter(re.search(r" ([-+]) \d+ =$", r["clean"])[1] for r in add) == {"+": 2500, "-": 2500}
    assert {int(r["label"]) for r in add} <= set(range(200))
    assert len({r["clean"] for r in add}) == 5000


def test_import_add_sub_reproduces_the_papers_90_10_split(tok, tmp_path):
    out = tmp_path / "as100"
    manifest = make_dataset(DatasetSpec(task="add_sub", tokenizer=tok, out=out,
                                        from_csv=PAPER / "add_sub_100.csv",
                                        split=SplitConfig(finetune=0.9, circuit=0.1, seed=42)))
    assert manifest["counts"] == {"finetune": 4500, "circuit": 500}
    assert manifest["source"]["kind"] == "csv" and manifest["source"]["rows_dropped_by_filter"] == {}
    ft, circ = load_split(out, "finetune"), load_split(out, "circuit")
    assert not {p.clean for p in ft} & {p.clean for p in circ}
    original = {r["clean"]: r for r in rows("add_sub_100.csv")}
    for p in ft + circ:
        assert original[p.clean]["corrupted"] == p.corrupted and original[p.clean]["label"] == p.label
        assert p.corrupted_label is not None
    # sklearn's train_test_split(test_size=0.1, random_state=42): the test set is the first 500 rows of
    # RandomState(42).permutation(5000), in that order.
    import numpy as np
    perm = np.random.RandomState(42).permutation(5000)
    data = rows("add_sub_100.csv")
    assert [p.clean for p in circ] == [data[i]["clean"] for i in perm[:500]]
    assert read_manifest(out)["split"]["finetune"] == 0.9


def test_import_drops_rows_that_fail_the_tokenizer_filters(tok):
    task = make_task("lcm")
    from transformers import AutoTokenizer
    from analysis.tasks.filters import TokenChecker
    kept, dropped = import_rows(task, PAPER / "lcm.csv", TokenChecker(AutoTokenizer.from_pretrained(str(tok))))
    assert 0 < len(kept) < 2500 and sum(dropped.values()) == 2500 - len(kept)
    assert "single-token label" in dropped  # in-context and query LCMs above 999 are not one token here
    kept_all, none_dropped = import_rows(task, PAPER / "lcm.csv", None)
    assert len(kept_all) == 2500 and none_dropped == {}


def test_import_rejects_a_file_of_another_task(tmp_path):
    with pytest.raises(UserError, match=r"add_sub_100.csv: line 2: mul_div: not an exact"):
        import_rows(make_task("mul_div"), PAPER / "add_sub_100.csv", None)
    bad = tmp_path / "bad.csv"
    with (PAPER / "add_sub_100.csv").open() as fh:
        head = [next(fh) for _ in range(3)]
    # Corrupt the corruption: change an operand instead of the operator.
    head[1] = head[1].replace("41 - 29 =", "42 + 29 =")
    bad.write_text("".join(head))
    with pytest.raises(UserError, match="not a add_sub corruption"):
        import_rows(make_task("add_sub"), bad, None)
