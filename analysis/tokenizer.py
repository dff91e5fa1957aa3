"""An offline word-level tokenizer for tiny test models (no model hub is reachable here).

Every integer 0..max_number is ONE token; larger numbers split into digit pieces (WordPiece `##`
continuations), so the single-token filters of the task generators are really exercised with a small
`max_number`. Words and punctuation of every task template are in the vocabulary; `\\n` is its own
token (fine-tuning text is `prompt\\nanswer`); `<|endoftext|>` is bos = eos = pad as in Pythia, and
nothing is added automatically (Pythia adds no BOS either). Spaces are dropped, so " 70" and "70"
tokenize the same.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from analysis.tasks.words import template_texts

EOT = "<|endoftext|>"
UNK = "<unk>"
# A piece is a run of letters, a run of digits, a newline, or one punctuation mark; spaces are removed.
_PIECE = r"\p{L}+|\p{N}+|\n|[^\s\p{L}\p{N}]"
# A few extra everyday words so that free text in demos does not collapse into <unk>.
_EXTRA_WORDS = ("the a an of to and is in it that this was for on with as be at by or not what".split()
                + "Q A Question True False yes no".split())


def build_word_tokenizer(out_dir: Path, max_number: int = 999, extra_words: tuple[str, ...] = ()):
    """Build, save (`save_pretrained(out_dir)`) and return a PreTrainedTokenizerFast.

    `AutoTokenizer.from_pretrained(out_dir)` loads it back. With `max_number=200`, "345" becomes the two
    tokens "34", "##5" (decoded back to "345").
    """
    if max_number < 9:
        raise ValueError("max_number must be at least 9 (every digit is a token)")
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"[ \t\r]+"), behavior="removed"),
        pre_tokenizers.Split(Regex(_PIECE), behavior="isolated"),
    ])
    words: list[str] = []
    seen: set[str] = set()

    def add(token: str) -> None:
        if token not in seen:
            seen.add(token)
            words.append(token)

    for tok in (EOT, UNK, "\n"):
        add(tok)
    for n in range(max_number + 1):
        add(str(n))
    for d in range(10):
        add(f"##{d}")
    for text in template_texts() + list(_EXTRA_WORDS) + list(extra_words):
        for piece, _ in pre.pre_tokenize_str(text):
            if not piece.isdigit():  # numbers above max_number must NOT become single tokens
                add(piece)
    vocab = {tok: i for i, tok in enumerate(words)}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token=UNK, continuing_subword_prefix="##",
                                     max_input_chars_per_word=100))
    return _saved(tok, pre, decoders.WordPiece(prefix="##", cleanup=False), out_dir)


def _saved(tok: Tokenizer, pre, decoder, out_dir: Path) -> PreTrainedTokenizerFast:
    """``tok`` with its pre-tokenizer and decoder as a PreTrainedTokenizerFast (bos = eos = pad =
    EOT, as Pythia's), saved into ``out_dir``."""
    tok.pre_tokenizer = pre
    tok.decoder = decoder
    tok.add_special_tokens([EOT, UNK])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT, pad_token=EOT,
                                   unk_token=UNK)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    return fast


# Digit-splitting, space-aware pieces, as in Llama-3 / SmolLM2 style byte-level BPE tokenizers: a word
# keeps its leading space (" Mary" and "Mary" are different tokens), every digit is a token of its own
# and a space before a number is a token of its own (" 70" -> " ", "7", "0").
_DIGIT_PIECE = r" ?\p{L}+|\p{N}| |\n|[^\s\p{L}\p{N}]"


def build_digit_tokenizer(out_dir: Path, extra_words: tuple[str, ...] = ()):
    """Build, save and return a tokenizer that splits numbers into digits and keeps leading spaces on
    words, so multi-token answers and leading-space labels are exercised offline the way a modern
    pretrained tokenizer (SmolLM2, Llama-3, Qwen2) exercises them. Every word of the task templates is
    in the vocabulary with and without its leading space."""
    pre = pre_tokenizers.Split(Regex(_DIGIT_PIECE), behavior="isolated")
    words = [EOT, UNK, "\n", " "] + [str(d) for d in range(10)]
    for text in template_texts() + list(_EXTRA_WORDS) + list(extra_words):
        for piece, _ in pre.pre_tokenize_str(" " + text):
            stem = piece.strip()
            for form in (stem, " " + stem) if stem.isalpha() else (piece,):
                if form and form not in words:
                    words.append(form)
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token=UNK))
    return _saved(tok, pre, decoders.Fuse(), out_dir)
