"""Tokenizer-aware filters (method.md 1, general rules), for any Hugging Face tokenizer.

Names of the filters are what error messages and manifests report.
"""

from __future__ import annotations

from analysis.errors import UserError

DUPLICATE = "duplicate clean prompt"
INVALID = "invalid instance"
NO_CORRUPTION = "no valid corruption"
SINGLE_LABEL = "single-token label"
SINGLE_OTHER = "single-token operands"
EQUAL_LENGTH = "equal token length"


class TokenChecker:
    """Token counts and single-token tests with caches (the same numbers come up over and over)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._single: dict[tuple[str, bool], bool] = {}
        self._count: dict[str, int] = {}

    def is_single(self, text: str, leading_space: bool = False) -> bool:
        """`tokenizer.tokenize(text)` is one token that is not <unk> (the paper writes no leading space)."""
        key = (text, leading_space)
        if key not in self._single:
            pieces = self.tokenizer.tokenize((" " if leading_space else "") + text) if text else []
            unk = getattr(self.tokenizer, "unk_token", None)
            self._single[key] = len(pieces) == 1 and (unk is None or pieces[0] != unk)
        return self._single[key]

    def n_tokens(self, text: str) -> int:
        if text not in self._count:
            self._count[text] = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return self._count[text]


def check_pair(task, inst, corr, checker: TokenChecker) -> str | None:
    """The name of the first tokenizer filter that rejects this clean/corrupted pair, or None."""
    label = task.answer(inst)
    if label is None or not checker.is_single(label, task.label_space):
        return SINGLE_LABEL
    if not all(checker.is_single(v) for v in task.single_tokens(inst, corr)):
        return SINGLE_OTHER
    if checker.n_tokens(task.render(inst)) != checker.n_tokens(task.render(corr)):
        return EQUAL_LENGTH
    return task.extra_check(inst, corr, checker)


def corrupted_label(task, corr, checker: TokenChecker | None) -> str | None:
    """The corrupted answer when it is well defined and (given a tokenizer) a single token."""
    value = task.answer(corr)
    if value is None or (checker is not None and not checker.is_single(value, task.label_space)):
        return None
    return value


def load_tokenizer(path):
    """AutoTokenizer from a local folder; a UserError (not a traceback) for a path that is not one."""
    from pathlib import Path
    path = Path(path)
    if not path.exists():
        raise UserError(f"tokenizer path {path} does not exist")
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # transformers raises many types for a folder without a tokenizer
        raise UserError(f"cannot load a tokenizer from {path}: {' '.join(str(exc).split())[:200]}") from exc
