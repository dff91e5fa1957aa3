"""Micro-batched scoring (issue 18 item 3): a batch scored in chunks of C examples gives the unchunked
scores (float64, 1e-12 relative), for every method, under hannamw's batch-mean compat (which divides by
the whole batch's size, not the chunk's) and with answers of several tokens; the automatic chunk
follows the memory estimate."""

from __future__ import annotations

import pytest
import torch

from analysis.eap import choose_chunk, estimate_memory, score
from analysis.errors import UserError
from analysis.graph import build_graph
from analysis.models import load_model
from analysis.tasks.generate import generate
from analysis.tiny import build_tiny_model
from analysis.tokenizer import build_digit_tokenizer

torch.set_num_threads(2)

CASES = [dict(method="eap-ig-inputs", metric="kl", steps=3),
         dict(method="eap-ig-inputs", metric="logit-diff", steps=2, compat="hannamw"),
         dict(method="eap-ig-activations", metric="kl", steps=2, compat="hannamw"),
         dict(method="eap-ig-activations", metric="logit-diff", steps=2),
         dict(method="clean-corrupted", metric="kl", steps=None),
         dict(method="eap", metric="logit-diff", steps=None)]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("chunked")
    tok = build_digit_tokenizer(d / "tok")
    build_tiny_model(d, arch="llama", n_layers=2, n_heads=4, n_kv_heads=2, d_model=32, seed=5, tokenizer=tok,
                     init_std=0.3)
    return d


@pytest.fixture(scope="module")
def llama(llama_dir):
    return load_model(llama_dir, dtype="float64")


@pytest.fixture(scope="module")
def pairs(llama):
    """7 pairs with answers of 1 and 2 tokens (in one chunk): batches of 3 leave a short last batch."""
    made = generate("add_sub", llama.tokenizer, count=40, seed=1, answer_tokens="any", n=100)
    one = [p for p in made if len(p.label) == 1][:1]  # digits: a label's length is its token count
    two = [p for p in made if len(p.label) == 2][:6]
    assert len(one) == 1 and len(two) == 6
    return [two[0], two[1], one[0], two[2], two[3], two[4], two[5]]


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    scale = b.abs().max()
    assert scale > 0
    assert float((a - b).abs().max() / scale) <= 1e-12


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['method']}-{c['metric']}-{c.get('compat')}")
def test_chunked_equals_unchunked(llama, pairs, case):
    graph = build_graph(llama.spec)
    whole = score(llama, graph, pairs, batch_size=3, **case)
    for chunk in (1, 2):
        part = score(llama, graph, pairs, batch_size=3, chunk=chunk, **case)
        _close(part.dense, whole.dense)
        assert part.settings["chunk"] == chunk
        assert part.parity == pytest.approx(whole.parity, abs=1e-12)
    assert "chunk" not in whole.settings  # unsplit runs record what they always did


def test_chunk_from_memory_budget(llama, pairs):
    graph = build_graph(llama.spec)
    n_pos = 40
    one, four = (estimate_memory(llama, graph, c, n_pos) for c in (1, 4))
    per_example = one["total"] - one["weights"]
    # the estimate is weights + C x per example: a chunk of C is what the budget says
    assert four["total"] - four["weights"] == 4 * per_example
    assert choose_chunk(llama, graph, 8, n_pos, four["total"]) == 4
    assert choose_chunk(llama, graph, 8, n_pos, four["total"] + per_example - 1) == 4
    assert choose_chunk(llama, graph, 8, n_pos, None) == 8
    assert choose_chunk(llama, graph, 3, n_pos, 10 ** 15) == 3
    with pytest.raises(UserError, match="budget"):
        choose_chunk(llama, graph, 8, n_pos, one["weights"])
    # a budget that fits two examples of these prompts splits batches of 3, exactly
    P = max(len(p) for p in llama.encode_pairs(pairs).clean)
    budget = estimate_memory(llama, graph, 2, P)["total"]
    auto = score(llama, graph, pairs, batch_size=3, memory_budget=budget)
    assert auto.settings["chunk"] == 2
    _close(auto.dense, score(llama, graph, pairs, batch_size=3).dense)


def test_bad_chunk(llama, pairs):
    with pytest.raises(UserError, match="chunk"):
        score(llama, build_graph(llama.spec), pairs, batch_size=3, chunk=0)


def test_score_job_prints_the_chunk_and_mib(llama_dir, pairs, tmp_path, capsys):
    """`circuitshift score --chunk 2 --mib`: the estimate printed is the chunk's; CPR/CMD printed and written."""
    from analysis.datasets import pairs_csv_text
    from ingest.jobs.score import ScoreRequest, score_to_file

    data = tmp_path / "pairs.csv"
    data.write_text(pairs_csv_text(pairs))
    doc = score_to_file(ScoreRequest(model_path=str(llama_dir), data_path=data, out_path=tmp_path / "s.json",
                                     method="eap", batch_size=3, dtype="float64", chunk=2, mib=True))
    err = capsys.readouterr().err
    assert "batches in chunks of 2; memory estimate" in err and "CPR" in err and "CMD" in err
    assert doc["provenance"]["settings"]["chunk"] == 2
    assert {"cpr", "cmd", "faithfulness_percent"} <= set(doc["mib"])
