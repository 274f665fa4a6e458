"""Teachers for self-training a segmenter: a score per adjacent character pair (higher = join).

- ``mlm``: perturbed masking with a character MLM (Su's adjacent-pair impact; in
  :mod:`.mlm_impacts`), slow, so only on the first ``teach_limit`` lines;
- ``nvbe``: the join margin of the branching-entropy segmentation (no model);
- ``pmi``: bigram PMI of the raw text (a baseline).

Several names joined by ``+`` (``nvbe+mlm``) combine by mean corpus-wide rank
(:func:`~kx_spacy.segmentation.self_training.rank_average`). No gold data is used by any of them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy

from .self_training import SelfTrainingError, _rules, rank_average, words_from_joins

TEACHERS = ("mlm", "nvbe", "pmi")


def parse_teachers(spec: str) -> List[str]:
    """``"nvbe+mlm"`` → ``["nvbe", "mlm"]``, with a clear error for unknown or repeated names."""
    names = [n.strip() for n in spec.split("+") if n.strip()]
    bad = [n for n in names if n not in TEACHERS]
    if not names or bad or len(set(names)) != len(names):
        raise SelfTrainingError(
            f"Teacher {spec!r}: use one or more of {', '.join(TEACHERS)} joined by '+', each once"
        )
    return names


def pmi_scores(teach: Sequence[str], corpus: Sequence[str]) -> List[numpy.ndarray]:
    from .self_training import CorpusCounts

    counts = CorpusCounts.from_texts(corpus)
    return [numpy.array([counts.pmi(a, b) for a, b in zip(t, t[1:])]) for t in teach]


def nvbe_scores(teach: Sequence[str], corpus: Sequence[str], *, max_len: int, min_count: int,
                progress: bool = False):
    """The branching-entropy model fitted on ``corpus`` for ``teach``, and its pair margins."""
    from .branching_entropy import BranchingEntropy, pair_margins

    model = BranchingEntropy(max_len=max_len, min_count=min_count).fit(corpus, teach, progress=progress)
    return model, [pair_margins(model, t) for t in teach]


def teacher_scores(spec: str, teach: Sequence[str], corpus: Sequence[str], *, encoder: Optional[str],
                   max_len: int = 4, min_count: int = 1, cache: Optional[Path] = None,
                   weights: Optional[Sequence[float]] = None, progress: bool = False) -> Dict:
    """Pair scores of the teacher(s) ``spec`` on ``teach``.

    corpus (Sequence[str]): raw text for the corpus statistics (include ``teach``).
    weights: per teacher of ``spec``, its weight in the rank average.
    RETURNS (Dict): ``scores`` (per line), ``names``, and ``nvbe_model`` when nvbe took part.
    """
    names = parse_teachers(spec)
    parts, out = [], {"names": names}
    for name in names:
        if name == "pmi":
            parts.append(pmi_scores(teach, corpus))
        elif name == "nvbe":
            out["nvbe_model"], margins = nvbe_scores(teach, corpus, max_len=max_len, min_count=min_count,
                                                     progress=progress)
            parts.append(margins)
        else:
            from .mlm_impacts import mlm_scores

            parts.append(mlm_scores(teach, encoder, cache=cache, progress=progress))
    if weights is not None and len(weights) != len(names):
        raise SelfTrainingError(f"{len(weights)} weights for the {len(names)} teachers of {spec!r}")
    out["scores"] = parts[0] if len(parts) == 1 else rank_average(*parts, weights=weights)
    return out


def teacher_words(teach: Sequence[str], scores: Sequence[numpy.ndarray], *, names: Sequence[str],
                  quantile: float = 0.6) -> List[List[str]]:
    """The teacher on its own: nVBE alone joins where its margin is positive; any other
    teacher joins each line's pairs at or above its ``quantile`` (the segmenter's default rule)."""
    out = []
    for t, v in zip(teach, scores):
        r = _rules(t)
        if list(names) == ["nvbe"]:
            cut, strict = 0.0, True
        else:
            sc = numpy.array([x for x, rr in zip(v, r) if rr is None and not numpy.isnan(x)])
            cut, strict = (numpy.quantile(sc, quantile) if sc.size else numpy.inf), False
        joins = [bool(rr) if rr is not None else bool(not numpy.isnan(x) and (x > cut if strict else x >= cut))
                 for x, rr in zip(v, r)]
        out.append(words_from_joins(t, joins))
    return out
