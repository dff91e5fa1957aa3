"""The offline word tokenizer: numbers as single tokens, template words known, loadable by AutoTokenizer."""

from __future__ import annotations

import pytest

from analysis.tasks.words import IOI_NAMES, IOI_OBJECTS, countries
from analysis.tokenizer import EOT, UNK, build_word_tokenizer


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    build_word_tokenizer(out)
    return out


@pytest.fixture(scope="module")
def tok(tok_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(tok_dir))


def test_every_number_up_to_max_is_one_token_and_decodes_back(tok):
    for n in range(1000):
        ids = tok(str(n), add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, n
        assert tok.decode(ids) == str(n)
    assert tok.convert_ids_to_tokens(tok(str(1008))["input_ids"]) == ["100", "##8"]


def test_function_text_splits_into_symbols(tok):
    assert tok.tokenize("y=5x+75") == ["y", "=", "5", "x", "+", "75"]


def test_template_words_are_known(tok):
    texts = ["Calculate the result of the following arithmetic expression and provide only the final answer: "
             "(41 + 29) * 3 =", "Derive the following sequence: 152, 157, 162, 167,",
             "Calculate the least common multiple (LCM) of two numbers. LCM(20, 160) = 160, LCM(8, 64) =",
             "Is 121 > 112? Answer: Yes", "Robert needed brush, Kelly wanted pan, Daniel handed brush to",
             "If Abkhazia corresponds to Sukhumi, then Moldova corresponds to",
             " ".join(IOI_NAMES + IOI_OBJECTS), " ".join(c + " " + k for c, k in countries())]
    for text in texts:
        assert UNK not in tok.tokenize(text), text
    assert tok.tokenize("Zorglub") == [UNK]


def test_newline_survives_and_special_tokens_match_pythia(tok):
    assert tok.tokenize("41 + 29 =\n70") == ["41", "+", "29", "=", "\n", "70"]
    assert tok.bos_token == tok.eos_token == tok.pad_token == EOT
    assert tok.unk_token == UNK
    # Like Pythia, nothing is added to the encoded text.
    assert tok("70")["input_ids"] == [tok.convert_tokens_to_ids("70")]


def test_small_max_number_splits_large_numbers(tmp_path):
    small = build_word_tokenizer(tmp_path, max_number=200)
    assert small.tokenize("200") == ["200"]
    assert small.tokenize("345") == ["34", "##5"]
    assert small.decode(small("345")["input_ids"]) == "345"
