"""Decoding a student's pair scores into words: per-pair threshold, or a semi-Markov Viterbi.

The student scores each adjacent pair on its own (the log-odds z_k that characters k and k + 1
are in one word). Thresholding each pair ignores what the words then look like: a run of
confident joins makes a 9-character "word" as readily as a 2-character one. The semi-Markov
decoder chooses the whole segmentation of a line that maximises

    Σ_words [ Σ_{pairs inside} log σ(z_k') + log σ(−z_end') + weight · log q(|w|) + bias ]

where z' = z − logit(threshold) (so ``weight = bias = 0`` gives exactly the threshold rule),
``q`` is a word-length distribution and ``end`` is the pair that closes the word (none for a
line's last word). ``q`` is *not* gold: it is the length distribution of the student's own
threshold decoding of the raw lines it was taught on (:func:`length_prior`). A first-order
CRF over B/I labels with fixed transition scores is the special case of a geometric ``q``.

Rules still decide where they apply (punctuation and whitespace cut; digit / Latin runs and
decimal points join): those joins make unbreakable atoms, those cuts end every word, and the
length limit ``max_len`` applies to words of several atoms only (a long number stays whole).
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import numpy

from ..errors import KxError

DECODERS = ("threshold", "semi_markov")


class DecoderError(KxError):
    """Bad decoder settings."""


def _log_sigmoid(z: numpy.ndarray) -> numpy.ndarray:
    return -numpy.logaddexp(0.0, -z)


def length_prior(words: Sequence[Sequence[str]], max_len: int, smoothing: float = 1.0) -> List[float]:
    """log q(n) for n = 1 … max_len: the (add-``smoothing``) length distribution of ``words``.

    words: per line, its words (e.g. the student's own threshold decoding of raw lines).
    RETURNS (List[float]): ``max_len`` log probabilities; longer words count as ``max_len``.
    """
    if max_len < 1:
        raise DecoderError(f"max_len must be ≥ 1, got {max_len}")
    counts = numpy.full(max_len, float(smoothing))
    for line in words:
        for w in line:
            counts[min(len(w), max_len) - 1] += 1
    return numpy.log(counts / counts.sum()).tolist()


def check_decoder(decoder: Optional[Dict]) -> Dict:
    """The decoder settings, completed and checked (``None``: the threshold rule)."""
    decoder = dict(decoder or {"name": "threshold"})
    name = decoder.get("name")
    if name not in DECODERS:
        raise DecoderError(f"Decoder {name!r}: use one of {', '.join(DECODERS)}")
    if name == "semi_markov":
        prior = decoder.get("length_logprior")
        if not prior or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in prior):
            raise DecoderError("The semi_markov decoder needs length_logprior: finite log probabilities per length")
        decoder.setdefault("weight", 1.0)
        decoder.setdefault("bias", 0.0)
        decoder["max_len"] = len(prior)
    return decoder


def decode_joins(z: numpy.ndarray, rules: Sequence[Optional[bool]], threshold: float,
                 decoder: Optional[Dict] = None) -> List[bool]:
    """Per adjacent pair: join or cut, from the student's log-odds ``z`` and the rules."""
    decoder = check_decoder(decoder)
    n = len(rules)
    if n == 0:
        return []
    t = min(max(threshold, 1e-12), 1 - 1e-12)
    zs = numpy.asarray(z, dtype=numpy.float64) - math.log(t / (1 - t))
    if decoder["name"] == "threshold":
        return [bool(r) if r is not None else bool(v >= 0.0) for r, v in zip(rules, zs)]
    join_lp, cut_lp = _log_sigmoid(zs), _log_sigmoid(-zs)
    prior, weight, bias, max_len = decoder["length_logprior"], decoder["weight"], decoder["bias"], decoder["max_len"]
    out = [bool(r) if r is not None else False for r in rules]
    # pieces between forced cuts; atoms inside a piece are runs joined by a rule
    start = 0
    for end in [k + 1 for k, r in enumerate(rules) if r is False] + [n + 1]:
        _decode_piece(out, rules, join_lp, cut_lp, start, end, prior, weight, bias, max_len)
        start = end
    return out


def _decode_piece(out: List[bool], rules, join_lp, cut_lp, c0: int, c1: int, prior, weight: float,
                  bias: float, max_len: int) -> None:
    """Viterbi over the characters [c0, c1) (no forced cut inside); writes its open pairs into out."""
    if c1 - c0 < 2:
        return
    # atom boundaries: character positions where a new atom starts
    starts = [c0] + [k + 1 for k in range(c0, c1 - 1) if rules[k] is not True]
    m = len(starts)
    ends = starts[1:] + [c1]
    best = [-math.inf] * (m + 1)
    back = [0] * (m + 1)
    best[0] = 0.0
    for i in range(m):
        if best[i] == -math.inf:
            continue
        inside = 0.0  # joins inside the word: open pairs between its atoms (rule-joined pairs add 0)
        for j in range(i + 1, m + 1):
            length = ends[j - 1] - starts[i]
            if j > i + 1:
                if length > max_len:
                    break
                inside += join_lp[starts[j - 1] - 1]  # the word grew by atom j - 1
            sc = inside
            if j < m:
                sc += cut_lp[starts[j] - 1]
            sc += weight * prior[min(length, max_len) - 1] + bias
            if best[i] + sc > best[j]:
                best[j] = best[i] + sc
                back[j] = i
    j = m
    while j > 0:
        i = back[j]
        for a in range(i + 1, j):
            out[starts[a] - 1] = True
        if j < m:
            out[starts[j] - 1] = False
        j = i
