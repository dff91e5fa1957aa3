"""Prompt pairs as token batches: the one tokenisation both scoring backends use.

:class:`PairEncoding` is mixed into :class:`analysis.adapter.ModelAdapter` and
:class:`analysis.tl_adapter.TLAdapter` (it needs only their ``tokenizer`` and ``device``), so the two
backends score identical token batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from analysis.errors import UserError

Tensor = torch.Tensor


@dataclass
class EncodedPairs:
    """Token ids of prompt pairs, teacher-forced: BOS + prompt + every answer token but the last (the
    clean answer's tokens in both runs, so the two differ only in the prompt); no padding yet.

    ``label[i]`` are the answer's tokens (one per answer position), ``corrupted_label[i]`` the
    corrupted answer's (same length) or None, ``n_prompt[i]`` the prompt's length including BOS."""

    clean: list[list[int]]
    corrupted: list[list[int]]
    label: list[list[int]]
    corrupted_label: list[list[int] | None]
    n_prompt: list[int]


@dataclass
class Batch:
    """A right-padded batch. Answer positions: ``pos[b, j]`` is the position whose next-token logits
    predict answer token j of row b (the last prompt position for j = 0); rows with fewer answer
    tokens than A are padded with their last real answer position and ``amask`` False there."""

    clean: Tensor  # (B, P) long, right-padded
    corrupted: Tensor  # (B, P)
    last: Tensor  # (B,) index of each prompt's last real position (= pos[:, 0])
    label: Tensor  # (B, A) answer token ids
    corrupted_label: Tensor | None  # (B, A) or None
    pos: Tensor  # (B, A) answer positions
    amask: Tensor  # (B, A) bool, True at real answer positions

    @property
    def keep(self) -> Tensor:
        """The positions whose logits are computed (``logits_to_keep``): every answer position."""
        return torch.unique(self.pos)

    def answer_logits(self, kept_logits: Tensor, keep: Tensor | None = None) -> Tensor:
        """(B, A, V) logits at the answer positions, from logits computed only at ``keep``."""
        keep = self.keep if keep is None else keep
        rows = torch.arange(self.pos.shape[0], device=kept_logits.device)[:, None]
        return kept_logits[rows, torch.searchsorted(keep, self.pos).to(kept_logits.device)]


def _padded_answers(values: list[int], width: int) -> Tensor:
    """A row's per-answer-token values padded to ``width`` by repeating its last one."""
    return torch.tensor([values[min(j, len(values) - 1)] for j in range(width)])


class PairEncoding:
    """Tokenising prompt pairs into batches (the module docstring); needs ``self.tokenizer`` and
    ``self.device``."""

    tokenizer: object
    device: torch.device

    def token_id(self, text: str) -> int | None:
        """The single token of ``text`` (as written, no space added), or None if it is not one token."""
        ids = self.answer_ids(text)
        return ids[0] if len(ids) == 1 else None

    def answer_ids(self, text: str) -> list[int]:
        """The tokens of an answer exactly as it follows the prompt (a leading space is part of it)."""
        return self.tokenizer(str(text), add_special_tokens=False)["input_ids"]

    @property
    def bos_id(self) -> int:
        t = self.tokenizer
        for tid in (t.bos_token_id, t.eos_token_id):
            if tid is not None:
                return int(tid)
        raise UserError("the tokenizer has no BOS or EOS token to prepend")

    @property
    def pad_id(self) -> int:
        t = self.tokenizer
        return int(t.pad_token_id) if t.pad_token_id is not None else self.bos_id

    def encode_pairs(self, pairs: Sequence, need_corrupted_label: bool = False) -> EncodedPairs:
        """BOS + prompt + answer tokens but the last; one-line UserErrors naming the row for bad data.

        The answer is the label exactly as written (README, "Labels as the model sees them"). A
        corrupted answer of another token length is an error when the metric needs it and unused
        otherwise."""
        bos = self.bos_id
        out = EncodedPairs([], [], [], [], [])
        for i, p in enumerate(pairs, start=1):
            c = [bos] + self.tokenizer(p.clean, add_special_tokens=False)["input_ids"]
            k = [bos] + self.tokenizer(p.corrupted, add_special_tokens=False)["input_ids"]
            if len(c) != len(k):
                raise UserError(f"row {i}: clean and corrupted prompts have different token lengths "
                                f"({len(c) - 1} vs {len(k) - 1}): {p.clean!r} / {p.corrupted!r}")
            ans = self.answer_ids(p.label) if str(p.label).strip() else []
            if not ans:
                raise UserError(f"row {i}: empty answer (label {p.label!r})")
            cans = None
            if need_corrupted_label:
                if p.corrupted_label in (None, "") or not str(p.corrupted_label).strip():
                    raise UserError(f"row {i}: the logit-diff metric needs a corrupted_label column")
                cans = self.answer_ids(p.corrupted_label)
                if len(cans) != len(ans):
                    raise UserError(f"row {i}: answer {p.label!r} is {len(ans)} token(s) but corrupted "
                                    f"answer {p.corrupted_label!r} is {len(cans)}; they must be equal")
            out.clean.append(c + ans[:-1])
            out.corrupted.append(k + ans[:-1])
            out.label.append(ans)
            out.corrupted_label.append(cans)
            out.n_prompt.append(len(c))
        return out

    def make_batch(self, enc: EncodedPairs, idx: Sequence[int]) -> Batch:
        """Right-pad rows ``idx`` of ``enc`` into one batch on the model's device."""
        idx = list(idx)
        P = max(len(enc.clean[i]) for i in idx)
        A = max(len(enc.label[i]) for i in idx)
        pad = self.pad_id
        clean = torch.full((len(idx), P), pad, dtype=torch.long)
        corr = torch.full((len(idx), P), pad, dtype=torch.long)
        pos = torch.zeros((len(idx), A), dtype=torch.long)
        label = torch.zeros((len(idx), A), dtype=torch.long)
        amask = torch.zeros((len(idx), A), dtype=torch.bool)
        with_cl = all(enc.corrupted_label[i] is not None for i in idx)
        cl = torch.zeros((len(idx), A), dtype=torch.long) if with_cl else None
        for r, i in enumerate(idx):
            n, a = len(enc.clean[i]), len(enc.label[i])
            clean[r, :n] = torch.tensor(enc.clean[i])
            corr[r, :n] = torch.tensor(enc.corrupted[i])
            first = enc.n_prompt[i] - 1
            pos[r] = _padded_answers([first + j for j in range(a)], A)
            label[r] = _padded_answers(enc.label[i], A)
            amask[r, :a] = True
            if cl is not None:
                cl[r] = _padded_answers(enc.corrupted_label[i], A)
        d = self.device
        return Batch(clean.to(d), corr.to(d), pos[:, 0].to(d), label.to(d),
                     None if cl is None else cl.to(d), pos.to(d), amask.to(d))
