"""Grouped-query attention through the score and circuit files: a `circuitshift score` document of a GQA
model (Llama with fewer kv-heads, like SmolLM2) records n_kv_heads, and `circuit select` reads it back as
the GQA graph (its edge count, so top-frac selects the right number of edges)."""

from __future__ import annotations

import csv
import json

import pytest

from analysis.eap_json import read_graph
from analysis.graph import GraphSpec, build_graph
from analysis.tiny import build_tiny_model
from ingest.cli import main

PFX = "Calculate the result of the following arithmetic expression and provide only the final answer:"
ROWS = [(f"{PFX} {a} + {b} =", f"{PFX} {a} - {b} =", str(a + b), str(a - b)) for a, b in [(4, 3), (20, 7), (9, 1)]]


def run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_gqa_scores_select_as_the_gqa_graph(tmp_path, capsys):
    model = tmp_path / "llama"
    build_tiny_model(model, arch="llama", n_layers=2, n_heads=4, n_kv_heads=2, d_model=32, seed=1, max_number=120)
    data = tmp_path / "d.csv"
    with open(data, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(("clean", "corrupted", "label", "corrupted_label"))
        w.writerows(ROWS)
    scores = tmp_path / "s.json"
    code, _, err = run(["score", "--model", str(model), "--data", str(data), "--steps", "2", "--batch-size", "3",
                        "--out", str(scores)], capsys)
    assert code == 0, err
    doc = json.loads(scores.read_text())
    gqa = build_graph(GraphSpec(2, 4, False, 2))
    assert doc["graph"]["n_kv_heads"] == 2 and doc["graph"]["n_edges"] == len(gqa.edges)
    assert set(doc["scores"]) == set(gqa.edge_index)

    out = tmp_path / "c.json"
    code, _, err = run(["circuit", "select", str(scores), "--top-frac", "0.2", "--no-prune", "--out", str(out)],
                       capsys)
    assert code == 0, err
    g = read_graph(out)
    assert g.spec.n_kv_heads == 2
    assert sum(g.in_graph) == int(0.2 * len(gqa.edges))  # the GQA graph's count, not the full-kv one's
    # and an EAP-IG file re-selects the same way
    again = tmp_path / "c2.json"
    code, _, err = run(["circuit", "select", str(out), "--top-frac", "0.2", "--no-prune", "--out", str(again)],
                       capsys)
    assert code == 0, err
    assert sum(read_graph(again).in_graph) == int(0.2 * len(gqa.edges))
