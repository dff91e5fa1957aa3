"""Tokenizer-aware filters (method.md 1, general rules), for any Hugging Face tokenizer.

Names of the filters are what error messages and manifests report.

The answer rule (README, "Labels as the model sees them"): a label is the exact text that follows the
prompt, so a leading space is part of it. Whether a task's answers carry one is the task's
``label_space`` (word answers: yes; the paper's numbers: no, method.md 1) unless a dataset overrides
it; the manifest records the choice as ``label_leading_space``. ``answer_tokens`` says how many tokens
an answer may have: "1" (the paper's filter; operands that must be single tokens are checked too) or
"any" (digit-splitting tokenizers: answers of any length, clean and corrupted answers of equal token
length, prompts of equal token length).
"""

from __future__ import annotations

from analysis.errors import UserError

DUPLICATE = "duplicate clean prompt"
INVALID = "invalid instance"
NO_CORRUPTION = "no valid corruption"
SINGLE_LABEL = "single-token label"
SINGLE_OTHER = "single-token operands"
EQUAL_LENGTH = "equal token length"
EQUAL_ANSWER_LENGTH = "equal answer token length"
ANSWER_TOKENS = ("1", "any")


class TokenChecker:
    """Token counts and single-token tests with caches (the same numbers come up over and over)."""

    def __init__(self, tokenizer, answer_tokens: str = "1", leading_space: bool | None = None):
        if answer_tokens not in ANSWER_TOKENS:
            raise UserError(f"--answer-tokens must be one of {', '.join(ANSWER_TOKENS)}, not {answer_tokens!r}")
        self.tokenizer = tokenizer
        self.answer_tokens = answer_tokens
        self.leading_space = leading_space  # None: each task's own rule
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


def leading_space(task, checker: TokenChecker | None) -> bool:
    """Whether this dataset's answers follow the prompt with a space (the task's rule by default)."""
    if checker is not None and checker.leading_space is not None:
        return checker.leading_space
    return task.label_space


def answer_text(task, value: str, checker: TokenChecker | None) -> str:
    """A task's answer as the label the model must produce: with its leading space, if any."""
    return (" " if leading_space(task, checker) else "") + value


def check_pair(task, inst, corr, checker: TokenChecker) -> str | None:
    """The name of the first tokenizer filter that rejects this clean/corrupted pair, or None."""
    label = task.answer(inst)
    if label is None:
        return SINGLE_LABEL
    if checker.answer_tokens == "1":
        if not checker.is_single(answer_text(task, label, checker)):
            return SINGLE_LABEL
        if not all(checker.is_single(v) for v in task.single_tokens(inst, corr)):
            return SINGLE_OTHER
    else:
        n = checker.n_tokens(answer_text(task, label, checker))
        other = task.answer(corr)
        if n == 0:
            return SINGLE_LABEL
        if other is not None and checker.n_tokens(answer_text(task, other, checker)) != n:
            return EQUAL_ANSWER_LENGTH
    if checker.n_tokens(task.render(inst)) != checker.n_tokens(task.render(corr)):
        return EQUAL_LENGTH
    return task.extra_check(inst, corr, checker)


def corrupted_label(task, corr, checker: TokenChecker | None) -> str | None:
    """The corrupted answer when it is well defined and (given a tokenizer) passes the answer rule."""
    value = task.answer(corr)
    if value is None:
        return None
    text = answer_text(task, value, checker)
    filtering = checker is not None and checker.tokenizer is not None
    if filtering and checker.answer_tokens == "1" and not checker.is_single(text):
        return None
    return text


def load_tokenizer(name_or_path):
    """The tokenizer of a local model or tokenizer folder, a ``.gguf`` file or a shipped model name; a
    one-line UserError for anything else (the one loader: :func:`analysis.models.load_tokenizer`)."""
    from analysis.models import load_tokenizer as load

    return load(name_or_path)
