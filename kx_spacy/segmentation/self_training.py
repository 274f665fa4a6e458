"""Self-training a word segmenter on perturbed-masking pseudo-labels (no gold data anywhere).

The perturbed-masking rule (``kx_spacy.perturbed.segmenter``) scores each adjacent character
pair of a line by the mutual impact of the two characters under a masked LM. The scores are
noisy pair by pair, but the *confident* ones are informative: pairs with a high impact are
usually inside a word, pairs with a low impact usually between words (the BOPT idea, Findings
of ACL 2022: join ≥ high threshold, split < low threshold, never join across punctuation).

Here the confident pairs become pseudo-labels for a light student: a logistic-regression
boundary classifier over hashed character n-gram features of the pair and its context, plus
unsupervised corpus statistics (bigram PMI and frequency, counted on the same raw text). The
student generalises each decision to every occurrence of the same character context, so it
needs the (slow) teacher on a subset of lines only and segments any number of lines fast.
Rounds > 1 relabel with the student's own confident decisions.
"""
from __future__ import annotations

import math
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy

from ..errors import KxError

BOS, EOS = "<s>", "</s>"


class SelfTrainingError(KxError):
    """Bad settings or input for self-training (thresholds, empty input, no confident pair)."""


@dataclass
class CorpusCounts:
    """Unigram and adjacent-bigram counts of raw text, for PMI features."""

    unigrams: Counter = field(default_factory=Counter)
    bigrams: Counter = field(default_factory=Counter)
    total: int = 0

    @classmethod
    def from_texts(cls, texts: Sequence[str]) -> "CorpusCounts":
        c = cls()
        for text in texts:
            c.unigrams.update(text)
            c.bigrams.update(a + b for a, b in zip(text, text[1:]))
            c.total += len(text)
        return c

    def pmi(self, a: str, b: str) -> float:
        ab = self.bigrams.get(a + b, 0)
        if not ab:
            return -10.0
        return math.log(ab * self.total / (self.unigrams[a] * self.unigrams[b]))

    def branching(self, ch: str) -> Tuple[float, float]:
        """(right, left) branching entropy of one character: the entropy of the characters
        that follow it / precede it in the counted text (0.0 for a character never seen)."""
        table = self.__dict__.get("_branching")
        if table is None:
            right: Dict[str, Counter] = {}
            left: Dict[str, Counter] = {}
            for ab, c in self.bigrams.items():
                right.setdefault(ab[0], Counter())[ab[1]] = c
                left.setdefault(ab[1], Counter())[ab[0]] = c

            def h(cnt: Counter) -> float:
                tot = sum(cnt.values())
                return -sum(v / tot * math.log(v / tot) for v in cnt.values())

            table = {ch_: (h(right[ch_]) if ch_ in right else 0.0, h(left[ch_]) if ch_ in left else 0.0)
                     for ch_ in set(right) | set(left)}
            self.__dict__["_branching"] = table
        return table.get(ch, (0.0, 0.0))


def _bucket(value: float, step: float, lo: float, hi: float) -> int:
    return int(math.floor(min(max(value, lo), hi) / step))


FEATURE_SETS = ("base", "be")


def pair_features(text: str, k: int, counts: Optional[CorpusCounts], features: str = "base") -> List[str]:
    """Feature strings of the boundary between ``text[k]`` and ``text[k + 1]``.

    features (str): ``"base"`` (character n-grams around the pair, bigram PMI and frequency) or
        ``"be"`` (those plus the branching entropy of the characters on either side of the
        pair, bucketed: a character after which anything may follow tends to end a word).
    """
    p = text[k - 1] if k > 0 else BOS
    a, b = text[k], text[k + 1]
    n = text[k + 2] if k + 2 < len(text) else EOS
    feats = ["bias", "a:" + a, "b:" + b, "ab:" + a + b, "pa:" + p + a, "bn:" + b + n,
             "pab:" + p + a + b, "abn:" + a + b + n, "p_b:" + p + b, "a_n:" + a + n]
    if counts is not None:
        pmi = counts.pmi(a, b)
        freq = counts.bigrams.get(a + b, 0)
        feats += [f"pmi:{_bucket(pmi, 0.5, -3.0, 8.0)}", f"lf:{_bucket(math.log1p(freq), 0.5, 0, 8)}"]
        # PMI of the competing pairs around the boundary (is ab the stronger bond?)
        if k > 0:
            feats.append(f"dl:{_bucket(pmi - counts.pmi(p, a), 1.0, -4, 4)}")
        if k + 2 < len(text):
            feats.append(f"dr:{_bucket(pmi - counts.pmi(b, n), 1.0, -4, 4)}")
        if features == "be":
            ra, la = counts.branching(a)
            rb, lb = counts.branching(b)
            hr, hl = _bucket(ra, 0.5, 0.0, 7.0), _bucket(lb, 0.5, 0.0, 7.0)
            feats += [f"hra:{hr}", f"hlb:{hl}", f"hrl:{hr}_{hl}",
                      f"dra:{_bucket(ra - rb, 0.5, -4, 4)}", f"dlb:{_bucket(lb - la, 0.5, -4, 4)}"]
    return feats


def _hash(feats: List[str], dim: int) -> numpy.ndarray:
    return numpy.array([zlib.crc32(f.encode("utf-8")) % dim for f in feats], dtype=numpy.int64)


class BoundaryClassifier:
    """Logistic regression over hashed sparse binary features, trained with plain SGD.

    dim (int): size of the hashed feature space.
    l2 (float): L2 penalty.
    lr (float): learning rate.
    seed (int): shuffling seed.
    """

    def __init__(self, dim: int = 1 << 20, l2: float = 1e-6, lr: float = 0.2, seed: int = 0):
        self.dim = dim
        self.l2 = l2
        self.lr = lr
        self.w = numpy.zeros(dim, dtype=numpy.float64)
        self.rng = numpy.random.default_rng(seed)

    def score(self, rows: List[numpy.ndarray]) -> numpy.ndarray:
        return numpy.array([self.w[r].sum() for r in rows])

    def predict_proba(self, rows: List[numpy.ndarray]) -> numpy.ndarray:
        return 1.0 / (1.0 + numpy.exp(-self.score(rows)))

    def fit(self, rows: List[numpy.ndarray], y: numpy.ndarray, *, epochs: int = 5,
            weights: Optional[numpy.ndarray] = None) -> "BoundaryClassifier":
        if not rows:
            raise SelfTrainingError("No training pair for the boundary classifier")
        weights = numpy.ones(len(rows)) if weights is None else weights
        for epoch in range(epochs):
            lr = self.lr / (1 + epoch)
            for i in self.rng.permutation(len(rows)):
                r = rows[i]
                z = self.w[r].sum()
                p = 1.0 / (1.0 + math.exp(-max(min(z, 30.0), -30.0)))
                g = (p - y[i]) * weights[i]
                self.w[r] -= lr * (g + self.l2 * self.w[r])
        return self


def pseudo_labels(
    impacts: Sequence[numpy.ndarray], rules: Sequence[Sequence[Optional[bool]]], *,
    high: float, low: float, per_line: bool = False,
) -> List[List[Optional[int]]]:
    """Confident labels from teacher scores: 1 (join) ≥ ``high`` quantile, 0 (split) < ``low``.

    impacts: per line, the teacher's score of each pair (NaN where not scored).
    rules: per line, True/False where a rule decides (kept as a label), None elsewhere.
    high, low (float): quantiles in [0, 1] of the scored pairs (over the corpus, or per line).
    RETURNS: per line and pair, 1, 0 or None (no confident label).
    """
    if not 0.0 <= low <= high <= 1.0:
        raise SelfTrainingError(f"Need 0 <= low <= high <= 1, got low={low}, high={high}")
    allv = numpy.concatenate([v[~numpy.isnan(v)] for v in impacts] or [numpy.zeros(0)])
    if allv.size == 0:
        raise SelfTrainingError("The teacher scored no pair (empty or all-punctuation input?)")
    g_hi, g_lo = numpy.quantile(allv, high), numpy.quantile(allv, low)
    out = []
    for vals, rule in zip(impacts, rules):
        scored = vals[~numpy.isnan(vals)]
        hi, lo = (numpy.quantile(scored, high), numpy.quantile(scored, low)) if per_line and scored.size >= 4 else (g_hi, g_lo)
        labels: List[Optional[int]] = []
        for v, r in zip(vals, rule):
            if r is not None:
                labels.append(int(r))
            elif numpy.isnan(v):
                labels.append(None)
            elif v >= hi:
                labels.append(1)
            elif v < lo:
                labels.append(0)
            else:
                labels.append(None)
        out.append(labels)
    return out


def rank_average(*teachers: Sequence[numpy.ndarray], weights: Optional[Sequence[float]] = None) -> List[numpy.ndarray]:
    """Combine teachers' pair scores on the same lines: the (weighted) mean of their ranks.

    Each teacher's scores become their quantile (0-1) among all its scored pairs, so scales and
    units do not matter; a pair one teacher did not score (NaN) takes the others' mean.
    teachers: per teacher, per line, one score per pair (NaN where not scored).
    weights: one non-negative weight per teacher (default: equal).
    RETURNS (List[numpy.ndarray]): per line, the combined score (NaN where no teacher scored).
    """
    if not teachers:
        raise SelfTrainingError("rank_average needs at least one teacher")
    w = numpy.ones(len(teachers)) if weights is None else numpy.asarray(weights, dtype=float)
    if w.shape != (len(teachers),) or (w < 0).any() or not w.sum() > 0:
        raise SelfTrainingError(f"Need one non-negative weight per teacher (not all zero), got {weights}")
    n_lines = len(teachers[0])
    if any(len(t) != n_lines for t in teachers):
        raise SelfTrainingError("The teachers scored different numbers of lines")
    ranked = []
    for lines in teachers:
        flat = numpy.concatenate([numpy.asarray(v, dtype=float) for v in lines] or [numpy.zeros(0)])
        ok = ~numpy.isnan(flat)
        q = numpy.full(flat.shape, numpy.nan)
        if ok.any():
            order = numpy.sort(flat[ok])
            # mid-rank of ties, so equal scores get equal quantiles
            lo = numpy.searchsorted(order, flat[ok], side="left")
            hi = numpy.searchsorted(order, flat[ok], side="right")
            q[ok] = (lo + hi) / (2.0 * order.size)
        ranked.append(q)
    if any(r.shape != ranked[0].shape for r in ranked):
        raise SelfTrainingError("The teachers scored lines of different lengths")
    stack = numpy.stack(ranked)
    wk = numpy.where(numpy.isnan(stack), 0.0, w[:, None])
    with numpy.errstate(invalid="ignore", divide="ignore"):
        mean = (numpy.nan_to_num(stack) * wk).sum(axis=0) / wk.sum(axis=0)  # 0/0: NaN, no teacher
    offsets = numpy.cumsum([0] + [len(v) for v in teachers[0]])
    return [mean[a:b] for a, b in zip(offsets[:-1], offsets[1:])]


def _rules(text: str) -> List[Optional[bool]]:
    from ..perturbed.segmenter import _pair_rules

    return _pair_rules(list(text))


def words_from_joins(text: str, joins: Sequence[bool]) -> List[str]:
    """Cut ``text`` between characters k and k + 1 wherever ``joins[k]`` is False."""
    words, cur = [], ""
    for k, ch in enumerate(text):
        cur += ch
        if k == len(text) - 1 or not joins[k]:
            words.append(cur)
            cur = ""
    return words


def self_train(
    teach_texts: Sequence[str], impacts: Sequence[numpy.ndarray], segment_texts: Sequence[str], *,
    high: float = 0.75, low: float = 0.45, per_line: bool = False, rounds: int = 2,
    epochs: int = 4, extra_texts: Sequence[str] = (), threshold: float = 0.5,
    join_rate: Optional[float] = None, seed: int = 0,
) -> Tuple[List[List[str]], Dict]:
    """Train the student on the teacher's confident pairs and segment ``segment_texts``.

    The arguments are those of :func:`train_student`.
    RETURNS (Tuple[List[List[str]], Dict]): words per line of ``segment_texts``, and statistics.
    """
    student, stats = train_student(teach_texts, impacts, segment_texts, high=high, low=low, per_line=per_line,
                                   rounds=rounds, epochs=epochs, extra_texts=extra_texts, threshold=threshold,
                                   join_rate=join_rate, seed=seed)
    words, stats["predicted_join_rate"] = segment_lines(student, segment_texts)
    return words, stats


def segment_lines(student, texts: Sequence[str]) -> Tuple[List[List[str]], float]:
    """The words of each line under ``student``, and the share of adjacent pairs joined."""
    joins = [student.joins(list(t)) for t in texts]
    words = [words_from_joins(t, j) for t, j in zip(texts, joins)]
    n_pairs = sum(len(j) for j in joins)
    return words, float(sum(map(sum, joins)) / n_pairs) if n_pairs else 0.0


def train_student(
    teach_texts: Sequence[str], impacts: Sequence[numpy.ndarray], segment_texts: Sequence[str], *,
    high: float = 0.75, low: float = 0.45, per_line: bool = False, rounds: int = 2,
    epochs: int = 4, extra_texts: Sequence[str] = (), threshold: float = 0.5,
    join_rate: Optional[float] = None, seed: int = 0, features: str = "base",
    relabel: str = "segment", confident: float = 0.9, decoder: str = "threshold",
    decoder_weight: float = 1.0, decoder_bias: float = 0.0, decoder_max_len: int = 6,
    round_labels: str = "confident",
):
    """Train the student on the teacher's confident pairs (no gold data).

    teach_texts (Sequence[str]): lines the teacher scored (no whitespace).
    impacts (Sequence[numpy.ndarray]): the teacher's pair scores for them (n - 1 per line).
    segment_texts (Sequence[str]): the lines to segment (may include the teacher's); counted in
        the corpus statistics, and relabelled in rounds > 1.
    high, low (float): pseudo-label quantiles (join ≥ high, split < low).
    per_line (bool): quantiles per line instead of over all lines.
    rounds (int): 1 = train on the teacher's labels; each further round retrains on the
        student's own confident decisions (p ≥ ``confident`` or ≤ 1 − ``confident``).
    epochs (int): SGD epochs per round.
    extra_texts (Sequence[str]): more raw text for the PMI / frequency counts.
    threshold (float): join when the student's probability ≥ this.
    join_rate (Optional[float]): instead of ``threshold``, join this fraction of the pairs that
        no rule decides (the most probable ones among ``segment_texts``) — a prior on word
        length, not gold data.
    features (str): the student's feature set (:data:`FEATURE_SETS`, see :func:`pair_features`).
    relabel (str): the lines rounds > 1 relabel: ``"segment"`` (``segment_texts``) or ``"all"``
        (the teacher's lines too).
    confident (float): the student's probability (or 1 − it) that makes a round-2 label.
    round_labels (str): what rounds > 1 learn: ``"confident"`` (the pairs the student is
        confident about, per pair) or ``"decoded"`` (every pair, as ``decoder`` segments the
        line with the previous round's student: the structured output, not the per-pair one).
    decoder (str): ``"threshold"`` (each pair on its own) or ``"semi_markov"`` (the best
        segmentation of each line under a word-length prior taken from the student's own
        threshold decoding of the taught and segmented lines; see :mod:`.decoding`).
    decoder_weight, decoder_bias, decoder_max_len: the semi-Markov decoder's prior weight,
        score per word and longest word of several atoms.
    RETURNS (Tuple[SegmenterStudent, Dict]): the student (it segments any text) and statistics.
    """
    from .decoding import DECODERS
    from .student import SegmenterStudent

    if len(teach_texts) != len(impacts):
        raise SelfTrainingError(f"{len(teach_texts)} teacher lines but {len(impacts)} impact rows")
    if rounds < 1:
        raise SelfTrainingError("rounds must be ≥ 1")
    if join_rate is not None and not 0.0 <= join_rate <= 1.0:
        raise SelfTrainingError(f"join_rate must be in [0, 1], got {join_rate}")
    if features not in FEATURE_SETS:
        raise SelfTrainingError(f"features {features!r}: use one of {', '.join(FEATURE_SETS)}")
    if relabel not in ("segment", "all"):
        raise SelfTrainingError(f"relabel {relabel!r}: use 'segment' or 'all'")
    if not 0.5 < confident < 1.0:
        raise SelfTrainingError(f"confident must be in (0.5, 1), got {confident}")
    if decoder not in DECODERS:
        raise SelfTrainingError(f"decoder {decoder!r}: use one of {', '.join(DECODERS)}")
    if round_labels not in ("confident", "decoded"):
        raise SelfTrainingError(f"round_labels {round_labels!r}: use 'confident' or 'decoded'")
    for t, v in zip(teach_texts, impacts):
        if len(v) != max(len(t) - 1, 0):
            raise SelfTrainingError(f"Line {t[:20]!r}: {len(v)} impacts for {len(t)} characters")
    counts = CorpusCounts.from_texts(list(segment_texts) + list(teach_texts) + list(extra_texts))
    dim = 1 << 20

    def featurise(texts):
        rows, index = [], []
        for li, text in enumerate(texts):
            for k in range(len(text) - 1):
                rows.append(_hash(pair_features(text, k, counts, features), dim))
                index.append((li, k))
        return rows, index

    rules_t = [_rules(t) for t in teach_texts]
    labels = pseudo_labels(impacts, rules_t, high=high, low=low, per_line=per_line)
    rows_t, index_t = featurise(teach_texts)
    sel = [i for i, (li, k) in enumerate(index_t) if labels[li][k] is not None]
    y = numpy.array([labels[index_t[i][0]][index_t[i][1]] for i in sel], dtype=float)
    if y.size == 0 or y.min() == y.max():
        raise SelfTrainingError("The pseudo-labels hold one class only: widen high/low")
    stats: Dict = {"teacher_lines": len(teach_texts), "pairs": len(rows_t), "pseudo_labelled": int(y.size),
                   "pseudo_join_rate": float(y.mean()), "rounds": []}
    clf = BoundaryClassifier(dim=dim, seed=seed).fit([rows_t[i] for i in sel], y, epochs=epochs)
    if rounds > 1 or join_rate is not None:
        rows_s, index_s = featurise(segment_texts)
        rules_s = [_rules(t) for t in segment_texts]
    if rounds > 1:
        if relabel == "all":
            seen = set(segment_texts)
            more = [li for li, t in enumerate(teach_texts) if t not in seen]
            more_set = set(more)
            pick = [i for i, (li, k) in enumerate(index_t) if li in more_set]
            rows_r = rows_s + [rows_t[i] for i in pick]
            rules_r = [rules_s[li][k] for li, k in index_s] + [rules_t[index_t[i][0]][index_t[i][1]] for i in pick]
            lines_r = list(segment_texts) + [teach_texts[li] for li in more]
        else:
            rows_r, rules_r = rows_s, [rules_s[li][k] for li, k in index_s]
            lines_r = list(segment_texts)
    for rnd in range(1, rounds):
        if round_labels == "decoded":
            ys = _decoded_labels(clf.score(rows_r), lines_r, threshold, decoder, decoder_weight,
                                 decoder_bias, decoder_max_len)
            keep = list(range(len(ys)))
        else:
            prob = clf.predict_proba(rows_r)
            keep, ys = [], []
            for i, (r, pr) in enumerate(zip(rules_r, prob)):
                if r is not None:
                    keep.append(i); ys.append(float(r))
                elif pr >= confident or pr <= 1.0 - confident:
                    keep.append(i); ys.append(float(pr >= 0.5))
        stats["rounds"].append({"round": rnd + 1, "labelled": len(keep), "join_rate": float(numpy.mean(ys))})
        clf = BoundaryClassifier(dim=dim, seed=seed + rnd).fit([rows_r[i] for i in keep], numpy.array(ys), epochs=epochs)
    if join_rate is not None:
        prob = clf.predict_proba(rows_s) if rows_s else numpy.zeros(0)
        open_probs = numpy.array([pr for (li, k), pr in zip(index_s, prob) if rules_s[li][k] is None])
        if open_probs.size:
            threshold = float(numpy.quantile(open_probs, 1.0 - join_rate))
        stats["threshold_from_join_rate"] = threshold
    meta = {"high": high, "low": low, "per_line": per_line, "rounds": rounds, "epochs": epochs,
            "threshold": threshold, "join_rate": join_rate, "seed": seed, "features": features,
            "relabel": relabel, "confident": confident, "round_labels": round_labels, "stats": stats}
    student = SegmenterStudent(clf.w, counts, threshold, meta=meta, features=features)
    if decoder == "semi_markov":
        student = with_semi_markov(student, list(dict.fromkeys(list(teach_texts) + list(segment_texts))),
                                   weight=decoder_weight, bias=decoder_bias, max_len=decoder_max_len)
        stats["length_logprior"] = student.decoder["length_logprior"]
    return student, stats


def _decoded_labels(z: numpy.ndarray, lines: Sequence[str], threshold: float, decoder: str, weight: float,
                    bias: float, max_len: int) -> List[float]:
    """Per pair of ``lines`` (their pairs in order, as ``z``): 1.0 / 0.0 as ``decoder`` decodes them."""
    from .decoding import decode_joins, length_prior

    offsets = numpy.cumsum([0] + [max(len(t) - 1, 0) for t in lines])
    per_line = [(t, z[a:b], _rules(t)) for t, a, b in zip(lines, offsets[:-1], offsets[1:])]
    dec = None
    if decoder == "semi_markov":
        plain = [words_from_joins(t, decode_joins(v, r, threshold)) for t, v, r in per_line if t]
        dec = {"name": "semi_markov", "length_logprior": length_prior(plain, max_len), "weight": weight, "bias": bias}
    out: List[float] = []
    for t, v, r in per_line:
        out += [float(j) for j in decode_joins(v, r, threshold, dec)]
    return out


def with_semi_markov(student, texts: Sequence[str], *, weight: float = 1.0, bias: float = 0.0,
                     max_len: int = 6):
    """``student`` with the semi-Markov decoder, its word-length prior taken from the student's
    own threshold decoding of the raw ``texts`` (no gold). RETURNS: a new SegmenterStudent."""
    from .decoding import length_prior
    from .student import SegmenterStudent

    plain = SegmenterStudent(student.weights, student.counts, student.threshold, meta=student.meta,
                             features=student.features)
    prior = length_prior([plain.segment(t) for t in texts], max_len)
    return SegmenterStudent(student.weights, student.counts, student.threshold, meta=student.meta,
                            features=student.features,
                            decoder={"name": "semi_markov", "length_logprior": prior, "weight": weight, "bias": bias})
