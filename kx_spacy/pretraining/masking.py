"""Packing texts into sequences and dynamic 80/10/10 masking at collation time."""
from __future__ import annotations

import random
from typing import TYPE_CHECKING, Dict, Iterable, Iterator, List, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import torch


def pack_sequences(
    token_ids: Iterable[List[int]], *, max_length: int, cls_id: int, sep_id: int
) -> Iterator[List[int]]:
    """Greedily pack tokenised texts into ``[CLS] a [SEP] b [SEP] …`` of at most ``max_length``.

    A text longer than ``max_length - 2`` is cut into pieces. Empty texts are skipped.
    token_ids (Iterable[List[int]]): the texts' token ids (no special tokens).
    RETURNS (Iterator[List[int]]): packed sequences with special tokens.
    """
    if max_length < 3:
        raise ValueError("max_length must be at least 3")
    room = max_length - 1  # after [CLS]
    cur: List[int] = []
    for ids in token_ids:
        while ids:
            piece, ids = ids[: room - 1], ids[room - 1:]
            if cur and len(cur) + len(piece) + 1 > room:
                yield [cls_id] + cur
                cur = []
            cur += piece + [sep_id]
    if cur:
        yield [cls_id] + cur


class MLMCollator:
    """Pad a batch and mask it dynamically (new masks every time a sequence is seen).

    vocab_size (int): size of the vocabulary (for random replacements).
    mask_id (int): the [MASK] id.
    pad_id (int): the [PAD] id.
    special_ids (Sequence[int]): ids never selected for prediction.
    mlm_probability (float): fraction of tokens selected for prediction.
    mask_ratio (float), random_ratio (float): of the selected tokens, the fraction replaced by
        [MASK] and by a random token (the rest stay unchanged) — 0.8 / 0.1 by default.
    """

    def __init__(
        self, *, vocab_size: int, mask_id: int, pad_id: int, special_ids: Sequence[int],
        mlm_probability: float = 0.15, mask_ratio: float = 0.8, random_ratio: float = 0.1,
    ):
        if not 0 < mlm_probability < 1:
            raise ValueError("mlm_probability must be in (0, 1)")
        if mask_ratio < 0 or random_ratio < 0 or mask_ratio + random_ratio > 1:
            raise ValueError("mask_ratio + random_ratio must be within [0, 1]")
        self.vocab_size = vocab_size
        self.mask_id = mask_id
        self.pad_id = pad_id
        self.special_ids = sorted(set(special_ids))
        self.first_normal = len(self.special_ids)
        self.mlm_probability = mlm_probability
        self.mask_ratio = mask_ratio
        self.random_ratio = random_ratio

    def pad(self, seqs: List[List[int]]) -> Dict[str, "torch.Tensor"]:
        import torch

        n = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), n), self.pad_id, dtype=torch.long)
        att = torch.zeros((len(seqs), n), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            att[i, : len(s)] = 1
        return {"input_ids": ids, "attention_mask": att}

    def __call__(self, seqs: List[List[int]], generator: "torch.Generator" = None) -> Dict[str, "torch.Tensor"]:
        import torch

        batch = self.pad(seqs)
        ids = batch["input_ids"]
        labels = ids.clone()
        special = torch.isin(ids, torch.tensor(self.special_ids, dtype=torch.long))
        prob = torch.full(ids.shape, self.mlm_probability)
        prob.masked_fill_(special, 0.0)
        selected = torch.bernoulli(prob, generator=generator).bool()
        # every sequence predicts at least one token when it has one
        none = ~selected.any(dim=1) & (~special).any(dim=1)
        for row in none.nonzero().flatten().tolist():
            cand = (~special[row]).nonzero().flatten()
            pick = cand[torch.randint(len(cand), (1,), generator=generator)]
            selected[row, pick] = True
        labels[~selected] = -100
        r = torch.rand(ids.shape, generator=generator)
        to_mask = selected & (r < self.mask_ratio)
        to_random = selected & (r >= self.mask_ratio) & (r < self.mask_ratio + self.random_ratio)
        ids = ids.clone()
        ids[to_mask] = self.mask_id
        low = min(self.first_normal, self.vocab_size - 1)
        rand_ids = torch.randint(low, self.vocab_size, ids.shape, generator=generator)
        ids[to_random] = rand_ids[to_random]
        batch["input_ids"] = ids
        batch["labels"] = labels
        return batch


class ShuffleBuffer:
    """Approximate shuffling of a stream with a bounded buffer."""

    def __init__(self, size: int, seed: int):
        self.size = max(1, size)
        self.rng = random.Random(seed)

    def __call__(self, items: Iterable) -> Iterator:
        buf: list = []
        for item in items:
            if len(buf) < self.size:
                buf.append(item)
                continue
            i = self.rng.randrange(len(buf))
            yield buf[i]
            buf[i] = item
        self.rng.shuffle(buf)
        yield from buf
