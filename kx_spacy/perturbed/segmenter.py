"""``kx_segmenter``: unsupervised Chinese word segmentation by perturbed masking.

Su Jianlin's rule (bojone/perturbed_masking): for a line of n characters run the 2n - 1
inputs x \\ {i} and x \\ {i, i+1}; the mutual impact of the adjacent pair (i, i+1) is the
mean of the two directed impacts

    f(i, i+1) = d(H(x \\ {i})_i,     H(x \\ {i, i+1})_i)
    f(i+1, i) = d(H(x \\ {i+1})_i+1, H(x \\ {i, i+1})_i+1)

(last layer, Euclidean by default), and the pair is joined when it reaches the threshold.
Only the pairs the rules below leave open are scored, and only the inputs they need are run
(all lines of a batch together, through ``Backbone.hidden_states``).

Rules, before any model:
* never join across punctuation, symbols or whitespace (or a character that maps to no
  word piece);
* runs of ASCII / full-width digits and Latin letters are kept whole (always joined);
* every other adjacent pair is joined iff its mutual impact >= the threshold.

Threshold. ``threshold`` (float) fixes it (Su used 8 for Chinese BERT-base). The default,
``threshold = null``, calibrates it to the encoder's scale from the impact distribution of
each line: the ``quantile`` (default 0.6) of that line's scored pairs, i.e. the ~40 % most
related pairs are joined (PKU-style words average ~1.6 characters, so about 40 % of
adjacent pairs lie inside a word). The calibration is per line, so a doc's segmentation
never depends on which other docs share its batch.

Long lines. A line is cut, for the encoder only, into pieces that fit its window
(``Backbone.max_content_length``): cuts go after punctuation where possible (the pair
across a punctuation mark is never joined anyway); a stretch with no punctuation longer
than the window is cut at the window's length and that one pair across the cut is split.

The pipe runs BEFORE the transformer on ``spacy.blank("zh")`` character tokens, borrows
the transformer pipe's module at call time (``Backbone.from_nlp``), and merges the joined
tokens with ``doc.retokenize()``. ``segment_texts`` is the same core as a plain function.
"""
from __future__ import annotations

import unicodedata
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy
from spacy.language import Language
from spacy.pipeline import Pipe
from spacy.tokens import Doc
from spacy.util import minibatch
from thinc.api import Config

from ..errors import KxError
from ..segmentation.merge import joined_spans, merge_spans
from .impact import Distance, Layers, _check_layers, get_distance

DEFAULT_CONFIG_STR = """
[kx_segmenter]
transformer = "transformer"
threshold = null
quantile = 0.6
layers = -1
batch_size = 256

[kx_segmenter.distance]
@misc = "kx_spacy.EuclideanDistance.v1"
"""
DEFAULT_CONFIG = Config().from_str(DEFAULT_CONFIG_STR)["kx_segmenter"]


# ----------------------------------------------------------------------- rules
def is_break(text: str) -> bool:
    """Whether a unit is punctuation, a symbol or whitespace (never joined to anything)."""
    if not text or not text.strip():
        return True
    return all(unicodedata.category(c)[0] in "PSZC" for c in text)


def is_alnum_run(text: str) -> bool:
    """Whether a unit is made of digits / Latin letters (ASCII or full-width) only."""
    if not text:
        return False
    for c in text:
        c = unicodedata.normalize("NFKC", c)
        if not (c.isascii() and c.isalnum()):
            return False
    return True


DECIMAL_POINTS = frozenset(".．")


def _is_digits(text: str) -> bool:
    return bool(text) and unicodedata.normalize("NFKC", text).isdigit()


def _pair_rules(units: Sequence[str]) -> List[Optional[bool]]:
    """Per adjacent pair: True (join), False (split) or None (ask the model).

    Punctuation and whitespace split; runs of digits / Latin letters join, and so does a decimal
    point between digits (3.14, ３．５), which is one number in every segmentation standard.
    """
    out: List[Optional[bool]] = []
    n = len(units)
    for i, (a, b) in enumerate(zip(units[:-1], units[1:])):
        if b in DECIMAL_POINTS and _is_digits(a) and i + 2 < n and _is_digits(units[i + 2]):
            out.append(True)
        elif a in DECIMAL_POINTS and i > 0 and _is_digits(units[i - 1]) and _is_digits(b):
            out.append(True)
        elif is_break(a) or is_break(b):
            out.append(False)
        elif is_alnum_run(a) and is_alnum_run(b):
            out.append(True)
        else:
            out.append(None)
    return out


# ---------------------------------------------------------------------- engine
def _chunks(lengths: Sequence[int], breaks: Sequence[bool], width: int) -> List[Tuple[int, int]]:
    """[start, end) unit ranges of at most ``width`` pieces, cut after breaks if possible."""
    n = len(lengths)
    out = []
    s = 0
    while s < n:
        total, e, last_break = 0, s, -1
        while e < n and total + lengths[e] <= width:
            total += lengths[e]
            if breaks[e]:
                last_break = e
            e += 1
        if e == s:  # a single unit longer than the window: Backbone windows it
            e = s + 1
        elif e < n and last_break >= s:
            e = last_break + 1
        out.append((s, e))
        s = e
    return out


def adjacent_impacts(
    backbone,
    lines: Sequence[Sequence[str]],
    *,
    pairs: Optional[Sequence[Sequence[bool]]] = None,
    layers: Layers = -1,
    distance: Union[str, Distance] = "euclidean",
    batch_size: int = 256,
) -> List[numpy.ndarray]:
    """Mutual impacts of adjacent units, all lines batched together (Su's 2n - 1 inputs).

    backbone (Backbone): the encoder (must have a mask token).
    lines (Sequence[Sequence[str]]): per line, its units (characters or tokens).
    pairs (Sequence[Sequence[bool]] or None): per line, which of the n - 1 pairs to score
        (None: all).
    layers (int or Sequence[int]): hidden state(s), -1 = last.
    distance (str or callable): see ``compute_impacts``.
    batch_size (int): inputs per forward.
    RETURNS (List[numpy.ndarray]): per line, n - 1 floats (NaN where not scored, where a
        unit has no piece, or across a window cut).
    """
    mask_id = backbone.require_mask()
    layers = _check_layers(layers)
    dist = get_distance(distance)
    offset = backbone.content_offset
    width = backbone.max_content_length
    results = []
    seqs, poss, jobs = [], [], []  # jobs: (line, pair index, idx_i, idx_j, idx_ij, span_i, span_j)
    for li, units in enumerate(lines):
        n = len(units)
        res = numpy.full(max(n - 1, 0), numpy.nan)
        results.append(res)
        if n < 2:
            continue
        want = [True] * (n - 1) if pairs is None else list(pairs[li])
        if not any(want):
            continue
        wp = backbone.tokenize_words(list(units))
        lengths = [e - s for s, e in wp.spans]
        for cs, ce in _chunks(lengths, [is_break(u) for u in units], width):
            content: List[int] = []
            spans = []
            for k in range(cs, ce):
                a, b = wp.spans[k]
                spans.append((len(content), len(content) + b - a))
                content.extend(wp.ids[a:b])
            single = {}

            def variant(*which):
                ids = list(content)
                rows = []
                for k in which:
                    s, e = spans[k - cs]
                    ids[s:e] = [mask_id] * (e - s)
                    rows.extend(range(offset + s, offset + e))
                seqs.append(ids)
                poss.append(rows)
                return len(seqs) - 1

            for k in range(cs, ce - 1):
                if not want[k] or lengths[k] == 0 or lengths[k + 1] == 0:
                    continue
                for u in (k, k + 1):
                    if u not in single:
                        single[u] = variant(u)
                both = variant(k, k + 1)
                jobs.append((li, k, single[k], single[k + 1], both, lengths[k], lengths[k + 1]))
    if not seqs:
        return results
    states = backbone.hidden_states(seqs, positions=poss, layers=layers, batch_size=batch_size)
    for li, k, vi, vj, vij, ni, nj in jobs:
        hi = states[vi].mean(0)
        hj = states[vj].mean(0)
        both = states[vij]
        f_ij = dist(hi, both[:ni].mean(0))
        f_ji = dist(hj, both[ni : ni + nj].mean(0))
        results[li][k] = float((f_ij + f_ji).item()) / 2.0
    return results


def segment_units(
    backbone,
    lines: Sequence[Sequence[str]],
    *,
    threshold: Optional[float] = None,
    quantile: float = 0.6,
    layers: Layers = -1,
    distance: Union[str, Distance] = "euclidean",
    batch_size: int = 256,
) -> List[List[bool]]:
    """Join decisions for the adjacent units of each line (the segmentation core).

    RETURNS (List[List[bool]]): per line, n - 1 booleans, True = join units k and k + 1.
    """
    if threshold is None and not 0.0 <= quantile <= 1.0:
        raise KxError(f"quantile must be in [0, 1]; got {quantile}.")
    rules = [_pair_rules(units) for units in lines]
    impacts = adjacent_impacts(
        backbone,
        lines,
        pairs=[[r is None for r in rule] for rule in rules],
        layers=layers,
        distance=distance,
        batch_size=batch_size,
    )
    out = []
    for rule, values in zip(rules, impacts):
        scored = values[~numpy.isnan(values)]
        if threshold is not None:
            cut = float(threshold)
        elif scored.size:
            cut = float(numpy.quantile(scored, quantile))
        else:
            cut = numpy.inf
        joins = []
        for r, v in zip(rule, values):
            if r is not None:
                joins.append(r)
            else:
                joins.append(bool(not numpy.isnan(v) and v >= cut))
        out.append(joins)
    return out


def segment_texts(
    backbone,
    texts: Sequence[str],
    *,
    threshold: Optional[float] = None,
    quantile: float = 0.6,
    layers: Layers = -1,
    distance: Union[str, Distance] = "euclidean",
    batch_size: int = 256,
) -> List[List[str]]:
    """Segment raw lines into words (whitespace separates and is dropped).

    backbone (Backbone): the encoder, e.g. ``Backbone.from_nlp(nlp, "transformer")``.
    texts (Sequence[str]): the lines.
    threshold (float or None): fixed join threshold; None calibrates per line (``quantile``).
    quantile (float): calibrated threshold = this quantile of the line's pair impacts.
    layers, distance, batch_size: see ``adjacent_impacts``.
    RETURNS (List[List[str]]): per line, its words.
    """
    lines = [list(text) for text in texts]
    decisions = segment_units(
        backbone, lines, threshold=threshold, quantile=quantile, layers=layers, distance=distance, batch_size=batch_size
    )
    out = []
    for chars, joins in zip(lines, decisions):
        words: List[str] = []
        current = ""
        for k, c in enumerate(chars):
            current += c
            if k == len(chars) - 1 or not joins[k]:
                if current.strip():
                    words.append(current.strip())
                current = ""
        out.append(words)
    return out


# ---------------------------------------------------------------------- component
@Language.factory("kx_segmenter", default_config=DEFAULT_CONFIG, assigns=["token.text"])
def make_kx_segmenter(
    nlp: Language,
    name: str,
    transformer: str,
    threshold: Optional[float],
    quantile: float,
    layers: Union[int, List[int]],
    distance: Callable,
    batch_size: int,
) -> "KxSegmenter":
    """Build the perturbed-masking word segmenter (add it BEFORE the transformer).

    transformer (str): name of the spacy-transformers pipe whose encoder is borrowed.
    threshold (float or None): fixed join threshold; None: calibrated per doc (``quantile``).
    quantile (float): calibrated threshold = this quantile of the doc's pair impacts.
    layers (int or List[int]): hidden state(s), -1 = last.
    distance (Callable): impact distance (``kx_spacy.EuclideanDistance.v1``...).
    batch_size (int): masked inputs per forward.
    RETURNS (KxSegmenter): the pipe.
    """
    return KxSegmenter(
        nlp, name, transformer=transformer, threshold=threshold, quantile=quantile,
        layers=layers, distance=distance, batch_size=batch_size,
    )


class KxSegmenter(Pipe):
    """Merges character tokens into words by perturbed masking. See the module docstring."""

    def __init__(
        self,
        nlp: Language,
        name: str = "kx_segmenter",
        *,
        transformer: str = "transformer",
        threshold: Optional[float] = None,
        quantile: float = 0.6,
        layers: Union[int, List[int]] = -1,
        distance: Callable = None,
        batch_size: int = 256,
    ) -> None:
        if threshold is None and not 0.0 <= float(quantile) <= 1.0:
            raise KxError(f"kx_segmenter: quantile must be in [0, 1]; got {quantile}.")
        if batch_size < 1:
            raise KxError("kx_segmenter: batch_size must be at least 1.")
        self.nlp = nlp
        self.name = name
        self.transformer = transformer
        self.threshold = threshold
        self.quantile = float(quantile)
        self.layers = _check_layers(layers)
        self.distance = distance if distance is not None else "euclidean"
        self.batch_size = batch_size

    def initialize(self, get_examples=None, *, nlp=None) -> None:
        """Nothing to learn (the encoder is the transformer pipe's, loaded after this)."""

    def __call__(self, doc: Doc) -> Doc:
        return next(self.pipe([doc]))

    def pipe(self, stream: Iterable[Doc], *, batch_size: int = 32) -> Iterator[Doc]:
        for docs in minibatch(stream, size=batch_size):
            yield from self._segment_batch(list(docs))

    def _segment_batch(self, docs: List[Doc]) -> List[Doc]:
        from ..backbone import Backbone

        backbone = Backbone.from_nlp(self.nlp, self.transformer)
        backbone.require_mask()
        lines = [[t.text for t in doc] for doc in docs]
        decisions = segment_units(
            backbone, lines, threshold=self.threshold, quantile=self.quantile,
            layers=self.layers, distance=self.distance, batch_size=self.batch_size,
        )
        for doc, joins in zip(docs, decisions):
            merge_spans(doc, joined_spans(joins, 0, len(doc)))
        return docs
