"""Unsupervised word segmentation by normalised variation of branching entropy (nVBE).

The idea (Jin & Tanaka-Ishii 2006; Magistry & Sagot 2012): after the last character of a word
the next character is hard to predict, so the entropy of the right neighbours of a string
*rises* where a word ends (and symmetrically for left neighbours where a word starts).
For a string x of n characters:

    VBE_r(x) = h_r(x) − h_r(x[:-1])      VBE_l(x) = h_l(x) − h_l(x[1:])

normalised per length (minus the mean, optionally over the standard deviation, of the strings of
that length), and a string's *autonomy* is a(x) = nVBE_l(x) + nVBE_r(x). A line is segmented
by the dynamic programme that maximises Σ a(w)·|w| over its words.

Only raw text is counted, and only the strings that occur in the lines to segment (every
substring up to ``max_len`` characters), so the counts of a large corpus stay small. The
per-length normalisation is over those strings too (it was better on UD GSDSimp dev than over
corpus strings), so fit once on all the lines to segment, not line by line.
Line edges and punctuation count as boundaries: each is a neighbour seen once (the most
surprising neighbour there is), so a string that often ends a phrase looks like a word end.

Besides the segmentation, :func:`pair_margins` gives a confidence per adjacent pair: the best
score with the pair joined minus the best with it split (max-marginals of the same programme),
which the self-training teacher turns into pseudo-labels.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy

from ..errors import KxError


class BranchingEntropyError(KxError):
    """Bad settings or input for the branching-entropy segmenter."""


def chunks(text: str) -> List[Tuple[int, str]]:
    """(start, run) of the maximal runs of ``text`` without punctuation or whitespace."""
    from ..perturbed.segmenter import is_break  # the segmenter's own notion of a break

    out, start = [], None
    for i, ch in enumerate(text):
        if is_break(ch):
            if start is not None:
                out.append((start, text[start:i]))
                start = None
        elif start is None:
            start = i
    if start is not None:
        out.append((start, text[start:]))
    return out


def _entropy(neighbours: Counter, boundaries: int) -> float:
    """Entropy of a neighbour distribution where each boundary is a distinct neighbour."""
    total = sum(neighbours.values()) + boundaries
    if total == 0:
        return 0.0
    h = -sum(c / total * math.log(c / total) for c in neighbours.values())
    if boundaries:
        h -= boundaries * (1.0 / total) * math.log(1.0 / total)
    return h


class BranchingEntropy:
    """Branching-entropy statistics of the substrings of some target lines.

    max_len (int): longest word considered (and longest string counted).
    min_count (int): strings of two or more characters seen fewer times are not words.
    standardise (bool): divide the per-length VBE by its standard deviation, not only centre it.
    """

    def __init__(self, max_len: int = 4, min_count: int = 1, standardise: bool = False):
        if max_len < 1:
            raise BranchingEntropyError(f"max_len must be ≥ 1, got {max_len}")
        if min_count < 1:
            raise BranchingEntropyError(f"min_count must be ≥ 1, got {min_count}")
        self.max_len = max_len
        self.min_count = min_count
        self.standardise = standardise
        self.count: Counter = Counter()
        self._right: Dict[str, Counter] = {}
        self._left: Dict[str, Counter] = {}
        self._right_edge: Counter = Counter()
        self._left_edge: Counter = Counter()
        self._autonomy: Dict[str, float] = {}

    # ------------------------------------------------------------------ counting
    def fit(self, corpus: Iterable[str], targets: Sequence[str], *, progress: bool = False) -> "BranchingEntropy":
        """Count the neighbours, in ``corpus``, of every substring of ``targets``.

        corpus (Iterable[str]): raw text lines; include the targets for transductive use.
        targets (Sequence[str]): the lines to segment later.
        progress (bool): show a progress bar over the corpus lines.
        RETURNS (BranchingEntropy): self.
        """
        wanted = set()
        for text in targets:
            for _, run in chunks(text):
                for i in range(len(run)):
                    for n in range(1, min(self.max_len, len(run) - i) + 1):
                        wanted.add(run[i:i + n])
        if not wanted:
            raise BranchingEntropyError("The target lines hold no character to segment")
        L = self.max_len
        if progress:
            from tqdm import tqdm

            corpus = tqdm(corpus, desc="branching entropy", unit="line")
        for text in corpus:
            for _, run in chunks(text):
                m = len(run)
                for i in range(m):
                    left = run[i - 1] if i else None
                    for n in range(1, min(L, m - i) + 1):
                        s = run[i:i + n]
                        if s not in wanted:
                            break  # substrings are prefix-closed: no longer one is wanted
                        self.count[s] += 1
                        if i + n < m:
                            self._right.setdefault(s, Counter())[run[i + n]] += 1
                        else:
                            self._right_edge[s] += 1
                        if left is not None:
                            self._left.setdefault(s, Counter())[left] += 1
                        else:
                            self._left_edge[s] += 1
        if not self.count:
            raise BranchingEntropyError("The corpus holds none of the target strings")
        self._compute_autonomy()
        return self

    def _h_right(self, s: str) -> float:
        return _entropy(self._right.get(s, Counter()), self._right_edge[s])

    def _h_left(self, s: str) -> float:
        return _entropy(self._left.get(s, Counter()), self._left_edge[s])

    def _compute_autonomy(self) -> None:
        # the empty string's neighbours are the characters themselves
        unigrams = Counter({s: c for s, c in self.count.items() if len(s) == 1})
        h0 = _entropy(unigrams, 0)
        hr = {s: self._h_right(s) for s in self.count}
        hl = {s: self._h_left(s) for s in self.count}
        vbe: Dict[str, Tuple[float, float]] = {}
        for s in self.count:
            if len(s) > 1 and self.count[s] < self.min_count:
                continue
            r = hr[s] - (hr.get(s[:-1], h0) if len(s) > 1 else h0)
            l_ = hl[s] - (hl.get(s[1:], h0) if len(s) > 1 else h0)
            vbe[s] = (l_, r)
        for n in range(1, self.max_len + 1):
            keys = [s for s in vbe if len(s) == n]
            if not keys:
                continue
            lv = numpy.array([vbe[s][0] for s in keys])
            rv = numpy.array([vbe[s][1] for s in keys])
            lm, rm = lv.mean().item(), rv.mean().item()
            ls = (lv.std().item() or 1.0) if self.standardise else 1.0
            rs = (rv.std().item() or 1.0) if self.standardise else 1.0
            for s in keys:
                self._autonomy[s] = (vbe[s][0] - lm) / ls + (vbe[s][1] - rm) / rs

    # ------------------------------------------------------------------ scoring
    def autonomy(self, s: str) -> Optional[float]:
        """a(s), or None when s cannot be a word (unseen, or rarer than ``min_count``)."""
        return self._autonomy.get(s)

    def _word_scores(self, run: str) -> List[List[Tuple[int, float]]]:
        """Per start i: (end, a(w)·|w|) of each allowed word run[i:end]."""
        out = []
        for i in range(len(run)):
            row = []
            for n in range(1, min(self.max_len, len(run) - i) + 1):
                a = self._autonomy.get(run[i:i + n])
                if a is not None:
                    row.append((i + n, a * n))
                elif n == 1:
                    row.append((i + 1, -1e3))  # an unseen character stays a word of its own
            out.append(row)
        return out

    def run_margins(self, run: str) -> numpy.ndarray:
        """Per adjacent pair of ``run``: best score joined − best score split (> 0: join)."""
        m = len(run)
        if m < 2:
            return numpy.zeros(0)
        words = self._word_scores(run)
        neg = -math.inf
        fwd = [neg] * (m + 1)
        fwd[0] = 0.0
        for i in range(m):
            if fwd[i] == neg:
                continue
            for j, sc in words[i]:
                if fwd[i] + sc > fwd[j]:
                    fwd[j] = fwd[i] + sc
        bwd = [neg] * (m + 1)
        bwd[m] = 0.0
        for i in range(m - 1, -1, -1):
            for j, sc in words[i]:
                if sc + bwd[j] > bwd[i]:
                    bwd[i] = sc + bwd[j]
        inside = [neg] * (m + 1)  # best score with position p strictly inside a word
        for i in range(m):
            for j, sc in words[i]:
                total = fwd[i] + sc + bwd[j]
                for p in range(i + 1, j):
                    if total > inside[p]:
                        inside[p] = total
        margins = numpy.empty(m - 1)
        for p in range(1, m):
            margins[p - 1] = inside[p] - (fwd[p] + bwd[p])
        return numpy.maximum(margins, -1e6)


def pair_margins(model: BranchingEntropy, text: str) -> numpy.ndarray:
    """Per adjacent pair of ``text``: the join margin, NaN where punctuation decides."""
    out = numpy.full(max(len(text) - 1, 0), numpy.nan)
    for start, run in chunks(text):
        out[start:start + len(run) - 1] = model.run_margins(run)
    return out


def segment(model: BranchingEntropy, text: str) -> List[str]:
    """The words of ``text`` under the model (punctuation and runs of letters/digits by rule)."""
    from .self_training import _rules, words_from_joins

    margins = pair_margins(model, text)
    joins = [bool(r) if r is not None else bool(v > 0) for v, r in zip(margins, _rules(text))]
    return words_from_joins(text, joins)
