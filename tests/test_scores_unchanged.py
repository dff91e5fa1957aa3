"""Issue 19 restructured the scoring engine's maths (the per-head norm VJP and the contraction); this
module proves that the scores did not change: every case below is scored now and compared with the
scores the engine produced BEFORE the change (stored in tests/data/scores_before_issue19.json, made
by this file's ``--write`` at commit 907633b, before any issue-19 edit).

The cases cover every native architecture (LayerNorm: gpt_neox, gpt2, gpt_neo, opt; RMSNorm and
grouped-query attention: llama), float64 and float32, every method, both IG rules, both metrics,
padded batches with a partial last batch, multi-token answers (a digit tokenizer) and
``compat="hannamw"``. Bound: max |now - before| <= 1e-6 * max |before| per case (float32 and float64
alike; float64 agrees to ~1e-15). The rebuilt models are checked against the stored weight hashes,
so a failure is a change of the engine, not of the models.

    # regenerate, only ever with the engine before issue 19 first on the path:
    git archive 907633b analysis | tar -x -C /tmp/before19
    PYTHONPATH=/tmp/before19 .venv/bin/python tests/test_scores_unchanged.py --write
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # appended: ``--write`` may put an older engine first on PYTHONPATH
    sys.path.append(str(ROOT))

from analysis.datasets import PromptPair  # noqa: E402
from analysis.eap import score  # noqa: E402
from analysis.graph import build_graph  # noqa: E402
from analysis.models import load_model  # noqa: E402
from analysis.tiny import build_tiny_model  # noqa: E402

torch.set_num_threads(2)

DATA = Path(__file__).parent / "data" / "scores_before_issue19.json"
RTOL = 1e-6
PFX = "Calculate the result of the following arithmetic expression and provide only the final answer:"

MODELS = {
    "gpt_neox": dict(arch="gpt_neox", n_layers=3, n_heads=4, d_model=32, seed=3, max_number=120, init_std=0.3),
    "gpt2": dict(arch="gpt2", n_layers=3, n_heads=4, d_model=32, seed=4, max_number=120, init_std=0.3),
    "gpt_neo": dict(arch="gpt_neo", n_layers=2, n_heads=4, d_model=32, seed=5, max_number=120, init_std=0.3),
    "opt": dict(arch="opt", n_layers=2, n_heads=4, d_model=32, seed=6, max_number=120, init_std=0.3),
    "llama": dict(arch="llama", n_layers=3, n_heads=4, n_kv_heads=2, d_model=32, seed=7, max_number=120,
                  init_std=0.3),
    "llama_digits": dict(arch="llama", n_layers=2, n_heads=4, n_kv_heads=2, d_model=32, seed=5, init_std=0.3,
                         digits=True),
}

# (method, metric, steps, ig_rule, compat)
METHODS = [
    ("eap-ig-inputs", "kl", 3, "right", None),
    ("eap-ig-inputs", "logit-diff", 2, "left", None),
    ("eap", "logit-diff", None, "right", None),  # (KL at the clean point has no gradient: all noise)
    ("clean-corrupted", "logit-diff", None, "right", None),
    ("eap-ig-activations", "kl", 2, "right", None),
    ("eap-ig-activations", "kl", 2, None, "hannamw"),
    ("eap-ig-inputs", "kl", 2, None, "hannamw"),
]
# multi-token answers of unequal corrupted lengths: KL only
DIGIT_METHODS = [
    ("eap-ig-inputs", "kl", 3, "right", None),
    ("eap-ig-inputs", "kl", 2, "left", None),
    ("eap-ig-inputs", "kl", 2, None, "hannamw"),
]


def make_pairs(model: str) -> list:
    if model == "llama_digits":
        # answers of one and two tokens (the digit tokenizer splits numbers into digits), one batch
        rows = [(41, 29), (5, 3), (12, 7), (60, 50), (9, 9)]
    else:
        rows = [(41, 29), (5, 3), (12, 7), (50, 1), (9, 9), (60, 50)]
    pairs = [PromptPair(f"{PFX} {a} + {b} =", f"{PFX} {a} - {b} =", str(a + b), str(a - b)) for a, b in rows]
    if model != "llama_digits":  # prompts of other lengths, so batches are padded
        pairs.append(PromptPair("Derive the following sequence: 1, 2, 3,", "Derive the following sequence: 1, 2, 5,",
                                "4", "6"))
    return pairs


def weights_sha256(model) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if t.is_floating_point():
            h.update(name.encode())
            h.update(t.detach().to(torch.float64).contiguous().numpy().tobytes())
    return h.hexdigest()


def build(model: str, root: Path, dtype: str):
    recipe = dict(MODELS[model])
    digits = recipe.pop("digits", False)
    d = root / f"{model}"
    if not (d / "config.json").exists():
        tok = None
        if digits:
            from analysis.tokenizer import build_digit_tokenizer

            tok = build_digit_tokenizer(d / "tok")
        build_tiny_model(d, tokenizer=tok, **recipe)
    return load_model(d, dtype=dtype)


def case_id(model, dtype, method, metric, steps, rule, compat) -> str:
    return f"{model}/{dtype}/{method}/{metric}/m{steps}/{rule}/{compat or 'native'}"


def cases():
    for model in MODELS:
        for dtype in ("float64", "float32"):
            for m in DIGIT_METHODS if model == "llama_digits" else METHODS:
                yield (model, dtype) + m


def run_case(adapter, model, dtype, method, metric, steps, rule, compat):
    pairs = make_pairs(model)
    graph = build_graph(adapter.spec)
    res = score(adapter, graph, pairs, method=method, metric=metric, steps=steps, ig_rule=rule, batch_size=3,
                compat=compat)
    return graph.edge_scores(res.dense).to(torch.float64)


def write(path: Path = DATA) -> None:
    import tempfile

    out = {"commit": "907633b", "rtol": RTOL, "models": {}, "cases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        adapters = {}
        for c in cases():
            model, dtype = c[0], c[1]
            if (model, dtype) not in adapters:
                adapters[(model, dtype)] = build(model, root, dtype)
                if dtype == "float64":
                    out["models"][model] = {"recipe": MODELS[model],
                                            "weights_sha256": weights_sha256(adapters[(model, dtype)].model)}
            out["cases"][case_id(*c)] = [float(x) for x in run_case(adapters[(model, dtype)], *c).tolist()]
            print(case_id(*c), flush=True)
    path.write_text(json.dumps(out))


# ------------------------------------------------------------------------------------------ tests
@pytest.fixture(scope="module")
def stored():
    return json.loads(DATA.read_text())


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, stored):
    root = tmp_path_factory.mktemp("before19")
    cache = {}

    def get(model, dtype):
        if (model, dtype) not in cache:
            a = build(model, root, dtype)
            if dtype == "float64":
                assert weights_sha256(a.model) == stored["models"][model]["weights_sha256"], (
                    f"the rebuilt {model} is not the stored one: the comparison would be meaningless")
            cache[(model, dtype)] = a
        return cache[(model, dtype)]

    return get


@pytest.mark.parametrize("case", list(cases()), ids=lambda c: case_id(*c))
def test_scores_unchanged_since_before_issue19(adapters, stored, case):
    model, dtype = case[0], case[1]
    if dtype == "float32":
        adapters(model, "float64")  # the weight hash check
    got = run_case(adapters(model, dtype), *case)
    ref = torch.tensor(stored["cases"][case_id(*case)], dtype=torch.float64)
    assert ref.abs().max() > 0
    err = float((got - ref).abs().max() / ref.abs().max())
    assert err <= RTOL, f"{case_id(*case)}: max relative difference {err:.2e} > {RTOL:g}"


if __name__ == "__main__":
    if "--write" in sys.argv:
        import analysis.eap

        print("engine:", analysis.eap.__file__)
        write()
