"""Sequence-level task losses for MGS / PG / MRT: (hypotheses, references) → per-sequence losses.

Every loss is a registered function (``spacy.registry.misc``) that returns a callable
``loss(hypotheses, references) -> List[float]``, lower is better, one value per pair. A
hypothesis or reference is a token sequence (a list of ids or strings) or a text (``str``);
what each loss does with either is said in its docstring.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Union

from spacy.util import registry

from ..errors import KxError

TaskLoss = Callable[[Sequence[Any], Sequence[Any]], List[float]]


class TaskLossError(KxError):
    """A task loss got inputs it cannot score (mismatched lengths, a missing setting)."""


def _check_pairs(hypotheses: Sequence[Any], references: Sequence[Any]) -> None:
    if len(hypotheses) != len(references):
        raise TaskLossError(
            f"{len(hypotheses)} hypotheses for {len(references)} references: give one reference per hypothesis"
        )


def _tokens(seq: Any, unit: str) -> Sequence[Any]:
    if isinstance(seq, str):
        return list(seq) if unit == "char" else seq.split()
    if hasattr(seq, "tolist"):
        return seq.tolist()
    return list(seq)


def _text(seq: Any) -> str:
    if isinstance(seq, str):
        return seq
    if hasattr(seq, "tolist"):
        seq = seq.tolist()
    return " ".join(str(t) for t in seq)


def levenshtein(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Edit distance (insertions, deletions, substitutions, each cost 1) of two sequences."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def _truncate(seq: Sequence[Any], eos: Any) -> Sequence[Any]:
    if eos is None:
        return seq
    for i, t in enumerate(seq):
        if t == eos:
            return seq[: i + 1]
    return seq


class EditDistanceLoss:
    """Levenshtein distance between hypothesis and reference, normalised.

    normalize (str): "reference" (min(d / |ref|, 1), the MGS reference), "max"
        (d / max(|hyp|, |ref|), in [0, 1]) or "none" (raw d).
    unit (str): how a ``str`` is split: "token" (whitespace) or "char".
    eos (Any): when set, hypotheses and references are cut after their first EOS.
    """

    def __init__(self, normalize: str = "reference", unit: str = "token", eos: Any = None):
        if normalize not in ("reference", "max", "none"):
            raise TaskLossError(f"normalize {normalize!r}: use 'reference', 'max' or 'none'")
        if unit not in ("token", "char"):
            raise TaskLossError(f"unit {unit!r}: use 'token' or 'char'")
        self.normalize = normalize
        self.unit = unit
        self.eos = eos

    def __call__(self, hypotheses: Sequence[Any], references: Sequence[Any]) -> List[float]:
        _check_pairs(hypotheses, references)
        out = []
        for hyp, ref in zip(hypotheses, references):
            h = _truncate(_tokens(hyp, self.unit), self.eos)
            r = _truncate(_tokens(ref, self.unit), self.eos)
            d = levenshtein(h, r)
            if self.normalize == "reference":
                out.append(min(d / len(r), 1.0) if r else float(d > 0))
            elif self.normalize == "max":
                denom = max(len(h), len(r))
                out.append(d / denom if denom else 0.0)
            else:
                out.append(float(d))
        return out


class NonTerminationLoss:
    """1.0 for a hypothesis that never produced EOS, else 0.0 (references unused).

    eos (Any): the EOS item (token id or string). A hypothesis with a ``stopped_by``
        attribute (the kx_generator's, which drops EOS from its text) is judged by it instead:
        "eos" → 0.0, anything else ("max_length") → 1.0.
    """

    def __init__(self, eos: Any = None):
        self.eos = eos

    def __call__(self, hypotheses: Sequence[Any], references: Sequence[Any]) -> List[float]:
        _check_pairs(hypotheses, references)
        out = []
        for hyp in hypotheses:
            stopped_by = getattr(hyp, "stopped_by", None)
            if stopped_by is not None:  # a decoder's hypothesis says how it ended
                out.append(0.0 if stopped_by == "eos" else 1.0)
                continue
            if self.eos is None:
                raise TaskLossError(
                    "NonTerminationLoss needs the EOS item (eos = <id or string>) for hypotheses "
                    "without a stopped_by attribute"
                )
            toks = _tokens(hyp, "token")
            out.append(0.0 if self.eos in toks else 1.0)
        return out


class RepetitionLoss:
    """1 − unique n-grams / n-grams of the hypothesis (references unused).

    n (int): the n-gram order (4 in the MGS paper).
    short (float): the value for a hypothesis with fewer than n tokens (no n-gram): 0.0 by
        default (nothing repeats); the MGS reference code uses 1.0.
    eos (Any): when set, the hypothesis is cut before its first EOS.
    unit (str): how a ``str`` is split: "token" or "char".
    """

    def __init__(self, n: int = 4, short: float = 0.0, eos: Any = None, unit: str = "token"):
        if not isinstance(n, int) or n < 1:
            raise TaskLossError(f"n must be an integer ≥ 1, got {n!r}")
        if unit not in ("token", "char"):
            raise TaskLossError(f"unit {unit!r}: use 'token' or 'char'")
        self.n = n
        self.short = float(short)
        self.eos = eos
        self.unit = unit

    def __call__(self, hypotheses: Sequence[Any], references: Sequence[Any]) -> List[float]:
        _check_pairs(hypotheses, references)
        return [self.one(h) for h in hypotheses]

    def one(self, hypothesis: Any) -> float:
        toks = list(_tokens(hypothesis, self.unit))
        if self.eos is not None and self.eos in toks:
            toks = toks[: toks.index(self.eos)]
        grams = [tuple(toks[i:i + self.n]) for i in range(len(toks) - self.n + 1)]
        if not grams:
            return self.short
        return 1.0 - len(set(grams)) / len(grams)


class ChrFLoss:
    """1 − sentence chrF / 100 (sacrebleu), in [0, 1].

    char_order (int), word_order (int), beta (int): sacrebleu's CHRF settings (chrF: 6, 0, 2;
        chrF++: word_order = 2).
    Token sequences are joined with spaces before scoring.
    """

    def __init__(self, char_order: int = 6, word_order: int = 0, beta: int = 2):
        try:
            from sacrebleu.metrics import CHRF
        except ImportError as err:  # pragma: no cover - sacrebleu is a dependency
            raise TaskLossError("ChrFLoss needs sacrebleu: pip install 'sacrebleu>=2.3,<3'") from err
        self.metric = CHRF(char_order=char_order, word_order=word_order, beta=beta)

    def __call__(self, hypotheses: Sequence[Any], references: Sequence[Any]) -> List[float]:
        _check_pairs(hypotheses, references)
        out = []
        for hyp, ref in zip(hypotheses, references):
            score = self.metric.sentence_score(_text(hyp), [_text(ref)]).score
            out.append(1.0 - score / 100.0)
        return out


class ScorerLoss:
    """Any spaCy scorer as a distance: ``best − score[key]`` per pair (lower is better).

    scorer (Callable[[Iterable[Example]], Dict[str, Any]]): a spaCy scorer, e.g. from
        ``spacy.registry.scorers`` (``spacy.tagger_scorer.v1``) or ``Scorer.score_tokenization``.
    key (str): the score to read ("tag_acc", "token_f", ...).
    lang (str): language of the blank pipeline that turns text into Docs.
    best (float): the best value of the score (1.0 for accuracies / F-scores).
    higher_is_better (bool): False for a score that is already a distance (then score − best).
    misaligned (float): the distance when the two docs cannot be aligned (different texts).
    missing (float): the distance when the scorer returns None for the key (nothing to score).
    Hypotheses and references may be ``Doc`` objects (used as they are) or texts.
    """

    def __init__(
        self,
        scorer: Callable[..., Dict[str, Any]],
        key: str,
        lang: str = "en",
        best: float = 1.0,
        higher_is_better: bool = True,
        misaligned: float = 1.0,
        missing: float = 0.0,
    ):
        if not callable(scorer):
            raise TaskLossError(f"scorer must be callable (a spaCy scorer), got {type(scorer).__name__}")
        self.scorer = scorer
        self.key = key
        self.lang = lang
        self.best = float(best)
        self.sign = 1.0 if higher_is_better else -1.0
        self.misaligned = float(misaligned)
        self.missing = float(missing)
        self._nlp = None

    def _doc(self, item: Any):
        from spacy.tokens import Doc

        if isinstance(item, Doc):
            return item
        if self._nlp is None:
            import spacy

            self._nlp = spacy.blank(self.lang)
        return self._nlp.make_doc(_text(item))

    def __call__(self, hypotheses: Sequence[Any], references: Sequence[Any]) -> List[float]:
        from spacy.training import Example

        _check_pairs(hypotheses, references)
        out = []
        for hyp, ref in zip(hypotheses, references):
            try:
                example = Example(self._doc(hyp), self._doc(ref))
                scores = self.scorer([example])
            except ValueError:  # spaCy E949: the texts cannot be aligned
                out.append(self.misaligned)
                continue
            value = scores.get(self.key)
            if value is None:
                out.append(self.missing)
            elif isinstance(value, (int, float)) and math.isfinite(value):
                out.append(self.sign * (self.best - float(value)))
            else:
                raise TaskLossError(f"Scorer key {self.key!r} gave {value!r}, not a number")
        return out


class LengthLoss:
    """min(|len(hyp) − len(ref)| / len(ref), cap): how far the hypothesis's length is from the
    reference's (a couplet's second line has the first line's length).

    unit (str): how a ``str`` is split: "token" (whitespace) or "char".
    cap (float): the largest value (1.0: an empty hypothesis scores as badly as one twice too long).
    eos (Any): when set, both sequences are cut before their first EOS.
    An empty reference: 0.0 for an empty hypothesis, else ``cap``.
    """

    def __init__(self, unit: str = "token", cap: float = 1.0, eos: Any = None):
        if unit not in ("token", "char"):
            raise TaskLossError(f"unit {unit!r}: use 'token' or 'char'")
        if not (isinstance(cap, (int, float)) and cap > 0 and math.isfinite(cap)):
            raise TaskLossError(f"cap must be a positive finite number, got {cap!r}")
        self.unit, self.cap, self.eos = unit, float(cap), eos

    def _len(self, seq: Any) -> int:
        toks = list(_tokens(seq, self.unit))
        if self.eos is not None and self.eos in toks:
            toks = toks[: toks.index(self.eos)]
        return len(toks)

    def __call__(self, hypotheses: Sequence[Any], references: Sequence[Any]) -> List[float]:
        _check_pairs(hypotheses, references)
        out = []
        for hyp, ref in zip(hypotheses, references):
            h, r = self._len(hyp), self._len(ref)
            out.append(min(abs(h - r) / r, self.cap) if r else (0.0 if h == 0 else self.cap))
        return out


class SumLoss:
    """A weighted sum of task losses: ``Σ_i weight_i · loss_i(h, r)`` per pair.

    losses (Sequence[Callable]): the task losses (each (hypotheses, references) → List[float]).
    weights (Sequence[float]): one weight per loss (None: all 1.0).
    A NaN from any part makes that pair's sum NaN (the MGS update then drops the candidate).
    """

    def __init__(self, losses: Sequence[TaskLoss], weights: Optional[Sequence[float]] = None):
        losses = list(losses)
        if not losses or not all(callable(f) for f in losses):
            raise TaskLossError("SumLoss needs at least one task loss, every one callable")
        weights = [1.0] * len(losses) if weights is None else [float(w) for w in weights]
        if len(weights) != len(losses):
            raise TaskLossError(f"{len(weights)} weights for {len(losses)} losses: give one weight per loss")
        if not all(math.isfinite(w) for w in weights):
            raise TaskLossError(f"SumLoss weights must be finite, got {weights}")
        self.losses, self.weights = losses, weights

    def __call__(self, hypotheses: Sequence[Any], references: Sequence[Any]) -> List[float]:
        _check_pairs(hypotheses, references)
        total = [0.0] * len(hypotheses)
        for loss, weight in zip(self.losses, self.weights):
            values = list(loss(hypotheses, references))
            if len(values) != len(total):
                raise TaskLossError(f"A SumLoss part returned {len(values)} values for {len(total)} pairs")
            total = [t + weight * float(v) for t, v in zip(total, values)]
        return total


@registry.misc("kx_spacy.EditDistanceLoss.v1")
def make_edit_distance_loss(normalize: str = "reference", unit: str = "token", eos: Optional[Any] = None) -> TaskLoss:
    """Levenshtein distance, normalised by the reference length and capped at 1 (MGS "edit").

    normalize (str): "reference", "max" or "none".
    unit (str): "token" or "char" (how texts are split).
    eos (Any): cut sequences after their first EOS when set.
    RETURNS (Callable): (hypotheses, references) → List[float].
    """
    return EditDistanceLoss(normalize=normalize, unit=unit, eos=eos)


@registry.misc("kx_spacy.NonTerminationLoss.v1")
def make_non_termination_loss(eos: Optional[Any] = None) -> TaskLoss:
    """1 for a hypothesis without EOS, 0 otherwise.

    eos (Any): the EOS token id or string (not needed for kx_generator hypotheses, which
        carry ``stopped_by``).
    RETURNS (Callable): (hypotheses, references) → List[float].
    """
    return NonTerminationLoss(eos=eos)


@registry.misc("kx_spacy.RepetitionLoss.v1")
def make_repetition_loss(n: int = 4, short: float = 0.0, eos: Optional[Any] = None, unit: str = "token") -> TaskLoss:
    """1 − unique n-grams / n-grams of each hypothesis (MGS "repeat-4").

    n (int): n-gram order. short (float): value below n tokens. eos (Any): cut at EOS.
    unit (str): "token" or "char".
    RETURNS (Callable): (hypotheses, references) → List[float].
    """
    return RepetitionLoss(n=n, short=short, eos=eos, unit=unit)


@registry.misc("kx_spacy.ChrFLoss.v1")
def make_chrf_loss(char_order: int = 6, word_order: int = 0, beta: int = 2) -> TaskLoss:
    """1 − sentence-level chrF / 100 (sacrebleu).

    char_order (int), word_order (int), beta (int): sacrebleu CHRF settings.
    RETURNS (Callable): (hypotheses, references) → List[float].
    """
    return ChrFLoss(char_order=char_order, word_order=word_order, beta=beta)


@registry.misc("kx_spacy.LengthLoss.v1")
def make_length_loss(unit: str = "token", cap: float = 1.0, eos: Optional[Any] = None) -> TaskLoss:
    """min(|len(hyp) − len(ref)| / len(ref), cap) per pair.

    unit (str): "token" or "char". cap (float): the largest value. eos (Any): cut at EOS.
    RETURNS (Callable): (hypotheses, references) → List[float].
    """
    return LengthLoss(unit=unit, cap=cap, eos=eos)


@registry.misc("kx_spacy.SumLoss.v1")
def make_sum_loss(losses: Dict[str, Any], weights: Optional[Dict[str, float]] = None) -> TaskLoss:
    """A weighted sum of task losses per pair (e.g. non-termination + repetition).

    losses (Dict[str, Callable]): named task losses (in a config: ``[loss.losses.nonterm]``
        blocks with their own ``@misc``).
    weights (Dict[str, float]): weight per name (missing names: 1.0; None: all 1.0).
    RETURNS (Callable): (hypotheses, references) → List[float].
    """
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(losses))
    if unknown:
        raise TaskLossError(f"SumLoss weights for unknown losses {unknown}: names are {sorted(losses)}")
    names = list(losses)
    return SumLoss([losses[n] for n in names], [weights.get(n, 1.0) for n in names])


@registry.misc("kx_spacy.ScorerLoss.v1")
def make_scorer_loss(
    scorer: Callable[..., Dict[str, Any]],
    key: str,
    lang: str = "en",
    best: float = 1.0,
    higher_is_better: bool = True,
    misaligned: float = 1.0,
    missing: float = 0.0,
) -> TaskLoss:
    """A spaCy scorer turned into a per-pair distance ``best − score[key]``.

    scorer (Callable): a spaCy scorer (``@scorers = "spacy.tagger_scorer.v1"`` in a config).
    key (str): the score key. lang (str): blank pipeline language for texts.
    best (float): the best score. higher_is_better (bool): orientation of the score.
    misaligned (float): distance for docs that cannot be aligned.
    missing (float): distance when the scorer has nothing to score (None).
    RETURNS (Callable): (hypotheses, references) → List[float].
    """
    return ScorerLoss(scorer, key, lang=lang, best=best, higher_is_better=higher_is_better,
                      misaligned=misaligned, missing=missing)


def mean_task_loss(loss: TaskLoss, hypotheses: Sequence[Any], references: Sequence[Any]) -> float:
    """The mean of ``loss`` over the pairs, NaN values skipped (NaN when none is finite)."""
    values = [v for v in loss(hypotheses, references) if math.isfinite(v)]
    return sum(values) / len(values) if values else math.nan
