"""The demo's pre-training (analysis/pretrain.py): every line of the mix is in the demo tokenizer's
vocabulary, the task format only ever shows small operands, and a run is reproducible bit for bit."""

from __future__ import annotations

import random

import pytest

from analysis.pretrain import KINDS, WORDS, PretrainConfig, corpus_line, pretrain


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from analysis.tiny import build_tiny_model
    from analysis.tokenizer import build_word_tokenizer

    root = tmp_path_factory.mktemp("demo-recipe")
    tok = build_word_tokenizer(root / "base", max_number=9, extra_words=WORDS)
    return build_tiny_model(root / "base", arch="gpt_neox", n_layers=2, n_heads=2, d_model=32, seed=1,
                            tokenizer=tok), root


def test_every_line_is_in_the_vocabulary_and_small_in_the_task_format(base):
    from transformers import AutoTokenizer

    model, _ = base
    tok = AutoTokenizer.from_pretrained(str(model))
    rng, cfg = random.Random(0), PretrainConfig()
    biggest = {k: 0 for k in KINDS}
    for kind in KINDS:
        for _ in range(300):
            prompt, answer = corpus_line(rng, kind, cfg)
            assert tok.unk_token_id not in tok(prompt + answer, add_special_tokens=False)["input_ids"], prompt
            nums = [int(w) for w in prompt.replace(",", " ").split() if w.isdigit()]
            biggest[kind] = max(biggest[kind], *nums)
    assert biggest["task"] <= cfg.max_operand < biggest["words"] <= cfg.words_max


def test_pretraining_is_reproducible(base):
    import torch
    from transformers import AutoModelForCausalLM

    model, root = base
    torch.set_num_threads(1)
    cfg = PretrainConfig(steps=6, batch_size=4, warmup=2, seed=3)
    for name in ("a", "b"):
        pretrain(model, root / name, cfg, progress=False)
    pretrain(model, root / "c", PretrainConfig(steps=6, batch_size=4, warmup=2, seed=4), progress=False)
    a, b, c = (AutoModelForCausalLM.from_pretrained(str(root / n)).state_dict() for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    before = AutoModelForCausalLM.from_pretrained(str(model)).state_dict()
    assert any(not torch.equal(a[k], v) for k, v in before.items())


def test_demo_refuses_bad_options_in_one_line_before_any_work(cli_env):
    from conftest import run_cli

    for args, message in ((["--threads", "0"], "--threads must be at least 1, got 0"),
                          (["--top-n", "0"], "--top-n must be a positive number of edges, got 0"),
                          (["--finetune-steps", "5"], "--max-steps 5 is fewer than --checkpoints 10")):
        proc = run_cli(["demo", *args], env=cli_env, timeout=60)
        assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [f"error: {message}"], args
