"""Scores for the perturbed-masking parser and segmenter.

Dependency trees (``attachment_scores``): per sentence the heads of words 1..n (0 = ROOT),
either as a list of length n or as the decoders' array of length n + 1 starting with -1.

* UAS: the share of words whose predicted head equals the gold head, micro-averaged over
  all words of all sentences. Punctuation counts like any word by default, as in the
  official perturbed-masking evaluation; ``punct`` masks let it be excluded.
* UUAS: the share of predicted arcs that match a gold arc when direction is ignored (the
  arc d -> ROOT counts as the edge {0, d}). Both trees have n edges, so this is
  |pred edges ∩ gold edges| / n. With punctuation excluded, only predicted arcs whose
  dependent is not punctuation are counted, over the number of non-punctuation words.

Segmentation (``segmentation_scores``): each line's words become character spans
[start, end) over the line's non-whitespace characters; a predicted word is correct when a
gold word has the same span. Precision, recall and F = 2PR / (P + R) are micro-averaged over
all lines (the bakeoff scorer's figures), and OOV recall is the recall over the gold words
that are not in the training word list. The predicted and gold lines must hold the same
characters, or a ``DataFormatError`` names the first line that differs.

``kx_spacy.UAS.v1`` (``registry.scorers``) scores spaCy ``Example``s:
``{"dep_uas": ..., "dep_uuas": ...}`` (fractions in 0..1, like spaCy's own scores).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from spacy.util import registry

from .errors import DataFormatError


def _as_heads(heads: Sequence[int]) -> List[int]:
    """Heads of words 1..n: a list starting with -1 (the ROOT placeholder) loses it."""
    heads = [int(h) for h in heads]
    return heads[1:] if heads and heads[0] == -1 else heads


@dataclass
class AttachmentCounts:
    """Counts behind UAS / UUAS (kept so several runs can be summed)."""

    correct: int = 0
    undirected: int = 0
    total: int = 0

    @property
    def uas(self) -> float:
        return self.correct / self.total if self.total else 0.0

    @property
    def uuas(self) -> float:
        return self.undirected / self.total if self.total else 0.0

    def to_dict(self) -> Dict[str, float]:
        return {"uas": self.uas, "uuas": self.uuas, "correct": self.correct,
                "undirected": self.undirected, "total": self.total}


def attachment_counts(
    pred_heads: Sequence[int],
    gold_heads: Sequence[int],
    punct: Optional[Sequence[bool]] = None,
) -> AttachmentCounts:
    """UAS / UUAS counts for one sentence.

    pred_heads (Sequence[int]): predicted heads (length n, or n+1 starting with -1).
    gold_heads (Sequence[int]): gold heads (length n, or n+1 starting with -1).
    punct (Sequence[bool] or None): per word, True to leave it out of the counts.
    RETURNS (AttachmentCounts): the counts.
    """
    gold = _as_heads(gold_heads)
    pred = _as_heads(pred_heads)
    n = len(gold)
    if len(pred) != n:
        raise DataFormatError(f"{len(pred)} predicted heads for {n} gold heads.")
    skip = list(punct) if punct is not None else [False] * n
    if len(skip) != n:
        raise DataFormatError(f"punct mask has {len(skip)} entries for {n} words.")
    gold_edges: Set[Tuple[int, int]] = {(min(d, h), max(d, h)) for d, h in enumerate(gold, start=1)}
    counts = AttachmentCounts()
    for d, (p, g, s) in enumerate(zip(pred, gold, skip), start=1):
        if s:
            continue
        counts.total += 1
        counts.correct += int(p == g)
        counts.undirected += int((min(d, p), max(d, p)) in gold_edges)
    return counts


def attachment_scores(
    pred: Iterable[Sequence[int]],
    gold: Iterable[Sequence[int]],
    punct: Optional[Iterable[Sequence[bool]]] = None,
) -> Dict[str, float]:
    """Micro-averaged UAS and UUAS over sentences.

    pred (Iterable[Sequence[int]]): per sentence, predicted heads.
    gold (Iterable[Sequence[int]]): per sentence, gold heads.
    punct (Iterable[Sequence[bool]] or None): per sentence, words to leave out (None: count
        every word, the official convention).
    RETURNS (Dict[str, float]): ``uas``, ``uuas`` (0..1), ``correct``, ``undirected``, ``total``.
    """
    pred = list(pred)
    gold = list(gold)
    if len(pred) != len(gold):
        raise DataFormatError(f"{len(pred)} predicted trees for {len(gold)} gold trees.")
    masks = list(punct) if punct is not None else [None] * len(gold)
    if len(masks) != len(gold):
        raise DataFormatError(f"{len(masks)} punctuation masks for {len(gold)} sentences.")
    total = AttachmentCounts()
    for p, g, m in zip(pred, gold, masks):
        c = attachment_counts(p, g, m)
        total.correct += c.correct
        total.undirected += c.undirected
        total.total += c.total
    return total.to_dict()


# ------------------------------------------------------------------ spaCy scorer
def _doc_heads(doc) -> List[int]:
    """Per token, 1-based head within its sentence-independent doc order (0 = root)."""
    return [0 if t.head.i == t.i else t.head.i + 1 for t in doc]


def _ragged_lists(ragged) -> List[List[int]]:
    """An alignment (spaCy ``AlignmentArray``) as one list of indices per item."""
    import numpy

    data = numpy.asarray(ragged.data).reshape(-1).tolist()
    lengths = numpy.asarray(ragged.lengths).tolist()
    out, start = [], 0
    for size in lengths:
        out.append(data[start : start + size])
        start += size
    return out


def score_uas(examples: Iterable, *, exclude_punct: bool = False, **_) -> Dict[str, Optional[float]]:
    """UAS and UUAS of the predicted docs of ``examples`` against their references.

    Gold tokens are matched to predicted tokens through each example's alignment; a gold
    token without a one-to-one match counts as wrong. A token whose head is itself is a
    root (head 0).

    examples (Iterable[Example]): the examples.
    exclude_punct (bool): leave out gold tokens tagged PUNCT (or with relation ``punct``).
    RETURNS (Dict[str, Optional[float]]): ``dep_uas`` and ``dep_uuas`` (None without tokens).
    """
    total = AttachmentCounts()
    for eg in examples:
        ref, pred = eg.reference, eg.predicted
        if len(ref) == 0:
            continue
        pred_to_ref = _ragged_lists(eg.alignment.x2y)
        ref_to_pred = _ragged_lists(eg.alignment.y2x)
        gold = _doc_heads(ref)
        gold_edges = {(min(d, h), max(d, h)) for d, h in enumerate(gold, start=1)}
        for g_i, tok in enumerate(ref):
            if exclude_punct and (tok.pos_ == "PUNCT" or tok.dep_.lower() == "punct"):
                continue
            total.total += 1
            p_idx = ref_to_pred[g_i]
            if len(p_idx) != 1 or len(pred_to_ref[p_idx[0]]) != 1:
                continue  # no one-to-one match: counts as wrong
            p_tok = pred[int(p_idx[0])]
            if p_tok.head.i == p_tok.i:
                p_head = 0
            else:
                back = pred_to_ref[p_tok.head.i]
                if len(back) != 1:
                    continue
                p_head = int(back[0]) + 1
            d = g_i + 1
            total.correct += int(p_head == gold[g_i])
            total.undirected += int((min(d, p_head), max(d, p_head)) in gold_edges)
    if total.total == 0:
        return {"dep_uas": None, "dep_uuas": None}
    return {"dep_uas": total.uas, "dep_uuas": total.uuas}


@registry.scorers("kx_spacy.UAS.v1")
def make_uas_scorer(exclude_punct: bool = False) -> Callable[..., Dict[str, Optional[float]]]:
    """Scorer for the kx parser: ``{"dep_uas": ..., "dep_uuas": ...}`` from Examples.

    exclude_punct (bool): leave punctuation out (default: count every token).
    RETURNS (Callable[[Iterable[Example]], Dict[str, Optional[float]]]): the scorer.
    """

    def scorer(examples: Iterable, **kwargs) -> Dict[str, Optional[float]]:
        return score_uas(examples, exclude_punct=exclude_punct)

    return scorer


# ------------------------------------------------------------------ segmentation
def word_spans(words: Sequence[str]) -> List[Tuple[int, int]]:
    """Character spans [start, end) of consecutive words (whitespace inside words dropped).

    words (Sequence[str]): the words of one line.
    RETURNS (List[Tuple[int, int]]): one span per non-empty word.
    """
    spans = []
    pos = 0
    for w in words:
        size = len("".join(w.split()))
        if size == 0:
            continue
        spans.append((pos, pos + size))
        pos += size
    return spans


@dataclass
class SegmentationCounts:
    """Counts behind bakeoff P / R / F / OOV recall."""

    correct: int = 0
    pred: int = 0
    gold: int = 0
    oov_gold: int = 0
    oov_correct: int = 0

    def to_dict(self) -> Dict[str, float]:
        p = self.correct / self.pred if self.pred else 0.0
        r = self.correct / self.gold if self.gold else 0.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        oov = self.oov_correct / self.oov_gold if self.oov_gold else None
        return {"precision": p, "recall": r, "f": f, "oov_recall": oov,
                "correct": self.correct, "pred_words": self.pred, "gold_words": self.gold,
                "oov_words": self.oov_gold, "oov_correct": self.oov_correct}


def segmentation_scores(
    pred: Sequence[Sequence[str]],
    gold: Sequence[Sequence[str]],
    train_words: Optional[Set[str]] = None,
) -> Dict[str, float]:
    """Bakeoff-style precision, recall, F and OOV recall, micro-averaged over lines.

    pred (Sequence[Sequence[str]]): per line, the predicted words.
    gold (Sequence[Sequence[str]]): per line, the gold words.
    train_words (Set[str] or None): the training word list; None: no OOV recall.
    RETURNS (Dict[str, float]): ``precision``, ``recall``, ``f``, ``oov_recall`` (None when
        there is no word list or no OOV word) and the counts.
    """
    if len(pred) != len(gold):
        raise DataFormatError(f"{len(pred)} predicted lines for {len(gold)} gold lines.")
    counts = SegmentationCounts()
    for line_no, (p_words, g_words) in enumerate(zip(pred, gold), start=1):
        p_text = "".join("".join(w.split()) for w in p_words)
        g_text = "".join("".join(w.split()) for w in g_words)
        if p_text != g_text:
            raise DataFormatError(
                f"Line {line_no}: the predicted words spell {p_text[:40]!r}... but the gold "
                f"words spell {g_text[:40]!r}...; segmentation must keep every character."
            )
        p_spans = set(word_spans(p_words))
        g_list = [w for w in g_words if "".join(w.split())]
        g_spans = word_spans(g_list)
        counts.pred += len(p_spans)
        counts.gold += len(g_spans)
        for word, span in zip(g_list, g_spans):
            hit = span in p_spans
            counts.correct += int(hit)
            if train_words is not None and word not in train_words:
                counts.oov_gold += 1
                counts.oov_correct += int(hit)
    out = counts.to_dict()
    if train_words is None:
        out["oov_recall"] = None
    return out
