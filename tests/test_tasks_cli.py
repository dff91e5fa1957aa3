"""`circuitshift data make|show|tasks`: happy paths and one-line errors with a non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from analysis.datasets import load_split
from analysis.tokenizer import build_word_tokenizer
from ingest.cli import cli

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO.parent / "shared" / "paper-data"


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    build_word_tokenizer(out)
    return out


def run_main(args):
    """The real entry point in a subprocess: UserError -> `error: ...` on stderr, exit 2."""
    code = "import sys; from ingest.cli import main; main(sys.argv[1:])"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO,
                          timeout=120)


def test_make_and_show(tok_dir, tmp_path):
    out = tmp_path / "seq"
    res = CliRunner().invoke(cli, ["data", "make", "sequence", "--count", "500", "--tokenizer", str(tok_dir),
                                   "--out", str(out), "--perturb", "10,50", "--disjoint-splits", "2",
                                   "--split-size", "40"])
    assert res.exit_code == 0, res.output
    assert "finetune 400, circuit 100" in res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["task"] == "sequence" and manifest["count"] == 500
    assert len(load_split(out, "perturb_50")) == 100 and len(load_split(out, "split_1")) == 40
    show = CliRunner().invoke(cli, ["data", "show", str(out), "--rows", "1"])
    assert show.exit_code == 0, show.output
    assert "task: sequence" in show.output and manifest["content_hash"] in show.output
    assert "[perturb_10] 100 rows" in show.output and "Derive the following sequence:" in show.output


def test_make_add_sub_n_and_split(tok_dir, tmp_path):
    out = tmp_path / "as300"
    res = CliRunner().invoke(cli, ["data", "make", "add_sub", "--n", "300", "--count", "1000", "--tokenizer",
                                   str(tok_dir), "--out", str(out), "--finetune-frac", "0.9"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["params"] == {"n": 300} and manifest["counts"] == {"finetune": 900, "circuit": 100}


@pytest.mark.skipif(not PAPER.is_dir(), reason="../shared/paper-data is not beside the checkout")
def test_import_paper_csv(tmp_path):
    out = tmp_path / "paper"
    res = CliRunner().invoke(cli, ["data", "make", "compositional", "--from-csv",
                                   str(PAPER / "compositional.csv"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"finetune": 4000, "circuit": 1000}
    assert manifest["source"]["kind"] == "csv" and manifest["tokenizer"] is None


def test_tasks_lists_every_task():
    res = CliRunner().invoke(cli, ["data", "tasks"])
    assert res.exit_code == 0
    for name in ("add_sub", "mul_div", "sequence", "lcm", "function", "compositional",
                 "compositional_add_sub", "compositional_mul_div", "comparison", "ioi", "capital"):
        assert name in res.output


@pytest.mark.parametrize("args,expected", [
    (["data", "make", "nope"], "unknown task 'nope'"),
    (["data", "make", "add_sub", "--n", "600"], "N must be one of 100, 200, 300, 400, 500"),
    (["data", "make", "add_sub_250"], "N must be one of"),
    (["data", "make", "add_sub", "--finetune-frac", "0.7", "--circuit-frac", "0.2"], "must add up to 1"),
    (["data", "make", "add_sub", "--finetune-frac", "1.3"], "split fractions"),
    (["data", "make", "add_sub", "--count", "7"], "cannot be balanced"),
    (["data", "make", "add_sub", "--perturb", "150"], "perturbation level"),
    (["data", "make", "mul_div", "--n", "200"], "takes no parameter"),
])
def test_bad_options_give_one_error_line(args, expected, tok_dir, tmp_path):
    res = run_main(args + ["--tokenizer", str(tok_dir), "--out", str(tmp_path / "x")])
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], res.stderr
    assert not (tmp_path / "x").exists()


def test_missing_tokenizer_path_and_dataset(tmp_path):
    res = run_main(["data", "make", "add_sub", "--tokenizer", str(tmp_path / "no-tok"),
                    "--out", str(tmp_path / "x")])
    assert res.returncode == 2 and res.stderr.strip() == f"error: tokenizer path {tmp_path / 'no-tok'} does not exist"
    res = run_main(["data", "show", str(tmp_path / "none")])
    assert res.returncode == 2 and res.stderr.startswith("error: ") and len(res.stderr.strip().splitlines()) == 1
    res = run_main(["data", "make", "add_sub", "--out", str(tmp_path / "x")])
    assert res.returncode == 2 and "--tokenizer is required" in res.stderr
