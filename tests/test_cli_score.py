"""`circuitshift score` end to end on a tiny model, and its one-line errors."""

import csv
import json

import pytest

from analysis.graph import build_graph, GraphSpec
from analysis.tiny import build_tiny_model
from ingest.cli import main

PFX = "Calculate the result of the following arithmetic expression and provide only the final answer:"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("m")
    build_tiny_model(d, arch="gpt_neox", n_layers=2, n_heads=2, d_model=16, seed=0, max_number=120)
    return d


def write_csv(path, rows, header=("clean", "corrupted", "label", "corrupted_label")):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


GOOD = [(f"{PFX} {a} + {b} =", f"{PFX} {a} - {b} =", str(a + b), str(a - b)) for a, b in [(4, 3), (20, 7), (9, 1)]]


def test_score_writes_every_edge_with_provenance(model_dir, tmp_path, capsys):
    data = write_csv(tmp_path / "d.csv", GOOD)
    out = tmp_path / "s.json"
    code, _, err = run(["score", "--model", str(model_dir), "--data", str(data), "--method", "eap-ig-inputs",
                        "--steps", "2", "--metric", "logit-diff", "--batch-size", "2", "--out", str(out)], capsys)
    assert code == 0, err
    assert "memory estimate" in err
    doc = json.loads(out.read_text())
    g = build_graph(GraphSpec(2, 2, True))
    assert set(doc["scores"]) == set(g.edge_index)
    prov = doc["provenance"]
    assert prov["settings"]["method"] == "eap-ig-inputs" and prov["settings"]["steps"] == 2
    assert prov["settings"]["ig_rule"] == "right" and prov["data_hash"] and prov["code_version"]
    assert prov["parity_max_abs_logit_diff"] < 1e-4
    assert any(v != 0 for v in doc["scores"].values())


@pytest.mark.parametrize("rows,extra,message", [
    ([(f"{PFX} 4 + 3 =", f"{PFX} 4 + 3 + 1 =", "7", "8")], [], "row 1: clean and corrupted prompts have different token lengths"),
    ([GOOD[0], (f"{PFX} 4 + 3 =", f"{PFX} 4 - 3 =", "1234", "1")], ["--metric", "logit-diff"],
     "row 2: answer '1234' is 3 token(s) but corrupted answer '1' is 1; they must be equal"),
    (GOOD, ["--steps", "0"], "positive number of IG steps"),
    (GOOD, ["--method", "magic"], "unknown method 'magic'"),
    (GOOD, ["--metric", "accuracy"], "unknown metric 'accuracy'"),
    ([r[:3] for r in GOOD], ["--metric", "logit-diff"], "corrupted_label"),
])
def test_one_line_errors(model_dir, tmp_path, capsys, rows, extra, message):
    data = write_csv(tmp_path / "d.csv", rows)
    code, _, err = run(["score", "--model", str(model_dir), "--data", str(data), "--out", str(tmp_path / "o.json"),
                        "--quiet", *extra], capsys)
    assert code == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_missing_model_and_unsupported_architecture(tmp_path, capsys):
    data = write_csv(tmp_path / "d.csv", GOOD)
    code, _, err = run(["score", "--model", str(tmp_path / "none"), "--data", str(data), "--out", str(tmp_path / "o.json")], capsys)
    assert code == 2 and "does not exist" in err and err.count("\n") == 1
    from transformers import MistralConfig, MistralForCausalLM  # OPT is supported since issue 7 part 3

    MistralForCausalLM(MistralConfig(vocab_size=40, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, num_key_value_heads=2)).save_pretrained(tmp_path / "mistral")
    code, _, err = run(["score", "--model", str(tmp_path / "mistral"), "--data", str(data), "--out", str(tmp_path / "o.json")], capsys)
    assert code == 2 and "unsupported architecture 'mistral'; supported: gpt_neox, gpt2" in err
