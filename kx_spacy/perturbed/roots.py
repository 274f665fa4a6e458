"""Root predictors that read the words: a small log-linear score per language.

``kx_parser`` must pick the word that hangs from ROOT before it decodes. The impact
matrices alone are weak evidence for it (with MiniLM on EWT dev sentences of <= 10 words:
centrality 39.4 %, ``M[0, j]`` 35.1 %, in-degree 38.8 %, the word whose masking moves the rest
of the sentence most 38.0 %), so ``LexicalRoot`` scores every non-punctuation word j by
``sum_f weights[f] * feature_f(j)`` over features of the word strings only:

* position: ``log_pos`` (log of the 1-based position), ``rel_pos`` (0 first .. 1 last),
  ``first_content`` / ``last_content`` (first / last non-punctuation word), ``first_open``
  (the first non-punctuation word in none of the language's closed classes), ``prev_none``
  (the sentence's first word), ``next_end`` (last word, or followed by punctuation);
* the word: ``log_len`` (log of its characters), the language's surface patterns
  (English: ``title``, ``allcaps``, ``digit``, ``odd`` (a character other than a letter,
  digit, apostrophe or hyphen: URLs, e-mail addresses) and suffixes ``suf_ing``, ``suf_ed``,
  ``suf_s``, ``suf_ly``, ``suf_adj``, ``suf_noun``; Chinese: ``latin``, ``digit``);
* closed classes: for each class c of the language's lexicon (short hand-written lists of
  function words: pronouns, determiners, adpositions, copulas, auxiliaries, negation,
  conjunctions, wh-words, interjections; Chinese also aspect markers and 的), ``self_c``
  (the word is in c), ``prev_c`` (the previous word is), ``next_c`` (the next word is).

No tree, no part-of-speech tag and no annotated word enters the features; the weights
(``ROOT_WEIGHTS``) were fitted by ``fit_root_weights`` (a conditional log-linear model over
each sentence's words, L2-penalised) to the gold roots of the dev sets only: EWT dev
sentences of <= 10 words for English, UD GSDSimp dev for Chinese. The closed-class lists are
hand-written linguistic knowledge (a few dozen words per language), not learned. Weights may
also name the impact features of ``impact.root_features`` ("centrality", "in_degree",
"out_degree", "root_row", "masking_effect", "log_piece_rank"); the shipped tables do not (on
EWT dev they added under one point, and they would tie the weights to one encoder).

``LanguageRoot`` (``kx_spacy.LanguageRoot.v1``, ``kx_parser``'s default) is the
language-aware choice: ``for_language(nlp.lang)`` gives the ``LexicalRoot`` of that
language where ``ROOT_WEIGHTS`` has one, else the language-neutral fallback (centrality).
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Pattern, Sequence, Tuple, Union

import numpy
from spacy.util import registry

from ..errors import KxError
from .impact import ROOT_FEATURES, ROOT_STRATEGIES, _best_word, _is_punct, predict_root, root_features


@dataclass(frozen=True)
class Lexicon:
    """What ``LexicalRoot`` knows of a language: closed classes (lower-cased word forms) and
    surface patterns (feature name -> regular expression searched in the lower-cased word,
    or one of the built-in tests "title", "allcaps", "digit", "latin")."""

    classes: Dict[str, frozenset]
    patterns: Dict[str, Union[str, Pattern]] = field(default_factory=dict)

    def __post_init__(self):
        compiled = {k: (re.compile(v) if isinstance(v, str) and v not in _BUILTIN_TESTS else v)
                    for k, v in self.patterns.items()}
        object.__setattr__(self, "patterns", compiled)
        object.__setattr__(self, "closed", frozenset().union(*self.classes.values()) if self.classes else frozenset())


def _classes(spec: Dict[str, str]) -> Dict[str, frozenset]:
    return {name: frozenset(words.split()) for name, words in spec.items()}


_BUILTIN_TESTS = {
    "title": lambda w: w[:1].isupper() and w[1:].islower(),
    "allcaps": lambda w: len(w) > 1 and w.isupper(),
    "digit": lambda w: any(c.isdigit() for c in w),
    "latin": lambda w: any("a" <= c.lower() <= "z" for c in w),
}

LEXICONS: Dict[str, Lexicon] = {
    "en": Lexicon(
        classes=_classes({
            "pron": "i you he she we they it me him her us them myself yourself itself this that these those there",
            "subj": "i you he she we they it there",
            "det": "the a an this that these those my your his her its our their some any no every each all another",
            "adp": "of in on at for with by from to about into over after before under between through during without against near",
            "be": "is are was were be been being am 's 're 'm s",
            "aux": "do does did have has had will would can could shall should may might must 've 'll 'd wo ca",
            "neg": "not n't never",
            "conj": "and or but so because if when while as than since though although",
            "wh": "what who where when why how which whom whose",
            "intj": "thanks thank yes no hi hello ok okay please wow oh lol yeah sorry",
            "to": "to",
        }),
        patterns={
            "title": "title", "allcaps": "allcaps", "digit": "digit",
            "odd": r"[^a-z0-9'\-]",
            "suf_ing": r"^.{3,}ing$", "suf_ed": r"^.{3,}ed$", "suf_s": r"^.{3,}s$", "suf_ly": r"^.{3,}ly$",
            "suf_adj": r"^.{2,}(ful|ous|ive|able|ible|al|ic|est|er)$",
            "suf_noun": r"(tion|ment|ness|ity|ance|ence|ship)$",
        },
    ),
    "zh": Lexicon(
        classes=_classes({
            "pron": "我 你 您 他 她 它 我们 你们 他们 她们 它们 自己 其 这 那 这里 那里 大家",
            "det": "这 那 这个 那个 这些 那些 每 各 该 本 此 一 其",
            "adp": "在 于 从 对 向 把 被 给 与 跟 以 由 为 到 自 按 据 将 和 对于 关于 通过",
            "be": "是 为 乃",
            "aux": "会 能 可以 要 应 应该 可能 将 已 已经 曾 曾经 正在 得 能够 须 必须",
            "neg": "不 没 没有 未 无 非 别",
            "conj": "和 与 及 或 但 但是 而 而且 因为 所以 如果 虽然 并 并且 以及 或者 因此",
            "wh": "什么 谁 哪 哪里 怎么 为什么 多少 如何",
            "asp": "了 着 过",
            "de": "的 之 地",
            "prt": "吗 呢 吧 啊 也 都 就 还 又 很",
        }),
        patterns={"latin": "latin", "digit": "digit"},
    ),
}

# fitted on the dev gold roots only (see the module notes and fit_root_weights); rounded
# en: EWT dev, the 1,174 sentences of <= 10 non-punctuation words, l2 = 1e-4 (chosen by 5-fold
# cross-validation on dev: 72.1 %); zh: UD GSDSimp dev, all 500 sentences, l2 = 3e-4 (CV 25.0 %)
ROOT_WEIGHTS: Dict[str, Dict[str, float]] = {
    "en": {
        "log_pos": -0.39, "rel_pos": -2.31, "first_content": 0.97, "last_content": 1.07, "first_open": 0.38,
        "prev_none": -1.5, "next_end": 0.93, "log_len": 0.16, "title": -0.61, "allcaps": -1.33, "digit": -1.01,
        "odd": -0.85, "suf_ing": 0.13, "suf_ed": 1.1, "suf_s": 0.32, "suf_ly": -1.62, "suf_adj": 0.12,
        "suf_noun": 0.57, "self_pron": -1.48, "prev_pron": -0.1, "next_pron": 2.1, "self_subj": -3.43,
        "prev_subj": 1.18, "next_subj": -1.19, "self_det": -2.72, "prev_det": -1.66, "next_det": 0.89,
        "self_adp": -2.47, "prev_adp": -1.2, "next_adp": 1.63, "self_be": -2.48, "prev_be": 0.83,
        "next_be": -0.67, "self_aux": -0.42, "prev_aux": 1.09, "next_aux": -2.66, "self_neg": -3.81,
        "prev_neg": 2.07, "next_neg": -0.04, "self_conj": -3.63, "prev_conj": -2.08, "next_conj": 1.44,
        "self_wh": 0.46, "prev_wh": -0.8, "next_wh": 1.46, "self_intj": 1.34, "prev_intj": 1.7,
        "next_intj": 0.95, "self_to": -1.0, "prev_to": -0.05, "next_to": 0.36,
    },
    "zh": {
        "log_pos": -0.33, "rel_pos": 0.82, "first_content": -0.73, "last_content": 0.47, "first_open": -0.83,
        "prev_none": -0.48, "next_end": 0.54, "log_len": 0.48, "latin": -2.67, "digit": -2.32,
        "self_pron": -1.96, "prev_pron": -0.05, "next_pron": 1.5, "self_det": -0.63, "prev_det": -0.63,
        "next_det": 0.19, "self_adp": -0.92, "prev_adp": -1.29, "next_adp": 1.2, "self_be": 0.48,
        "prev_be": -1.7, "next_be": -0.07, "self_aux": -2.49, "prev_aux": 1.25, "next_aux": -0.17,
        "self_neg": 1.24, "prev_neg": 0.7, "next_neg": 1.49, "self_conj": -2.76, "prev_conj": 0.17,
        "next_conj": -0.93, "self_wh": -0.32, "prev_wh": 1.75, "next_wh": -0.23, "self_asp": -1.77,
        "prev_asp": -1.81, "next_asp": 2.24, "self_de": -3.39, "prev_de": -0.62, "next_de": -2.85,
        "self_prt": -1.92, "prev_prt": 1.48, "next_prt": -1.58,
    },
}


def _test(pattern, word: str) -> bool:
    if isinstance(pattern, str):
        return bool(_BUILTIN_TESTS[pattern](word))
    return bool(pattern.search(word.lower()))


def get_lexicon(lang: str) -> Lexicon:
    """The ``Lexicon`` of a language code (``LEXICONS``); a clear error for others."""
    if lang not in LEXICONS:
        raise KxError(f"No root lexicon for language {lang!r}; have {sorted(LEXICONS)}. "
                      "Use kx_spacy.LanguageRoot.v1 (falls back to centrality) or another root_strategy.")
    return LEXICONS[lang]


def feature_names(lang: str) -> List[str]:
    """The lexical feature names of a language, in a fixed order."""
    lex = get_lexicon(lang)
    names = ["log_pos", "rel_pos", "first_content", "last_content", "first_open", "prev_none", "next_end",
             "log_len"]
    names += list(lex.patterns)
    for c in lex.classes:
        names += [f"self_{c}", f"prev_{c}", f"next_{c}"]
    return names


def lexical_features(words: Sequence[str], lang: str) -> Dict[str, numpy.ndarray]:
    """Per-word lexical root features of one sentence (see the module), each a length-n vector.

    words (Sequence[str]): the n words.
    lang (str): a language of ``LEXICONS``.
    RETURNS (Dict[str, numpy.ndarray]): feature name (``feature_names(lang)``) -> n floats.
    """
    lex = get_lexicon(lang)
    words = [str(w) for w in words]
    n = len(words)
    lower = [w.strip().lower() for w in words]
    punct = [_is_punct(w.strip()) or not w.strip() for w in words]
    content = [i for i in range(n) if not punct[i]]
    first_open = next((i for i in content if lower[i] not in lex.closed), None)
    pos = numpy.arange(n, dtype="float64")
    out: Dict[str, numpy.ndarray] = {
        "log_pos": numpy.log(pos + 1.0),
        "rel_pos": pos / max(n - 1, 1),
        "first_content": numpy.array([float(bool(content) and i == content[0]) for i in range(n)]),
        "last_content": numpy.array([float(bool(content) and i == content[-1]) for i in range(n)]),
        "first_open": numpy.array([float(i == first_open) for i in range(n)]),
        "prev_none": (pos == 0).astype("float64"),
        "next_end": numpy.array([float(i + 1 >= n or punct[i + 1]) for i in range(n)]),
        "log_len": numpy.log([max(len(w.strip()), 1) for w in words]),
    }
    for name, pattern in lex.patterns.items():
        out[name] = numpy.array([float(_test(pattern, w.strip())) for w in words])
    for c, members in lex.classes.items():
        inside = numpy.array([float(w in members) for w in lower])
        out[f"self_{c}"] = inside
        out[f"prev_{c}"] = numpy.concatenate([[0.0], inside[:-1]]) if n else inside
        out[f"next_{c}"] = numpy.concatenate([inside[1:], [0.0]]) if n else inside
    return out


_IMPACT_FEATURES = tuple(f for f in ROOT_FEATURES if f not in ("log_position", "log_length"))
_NEEDS = {"log_piece_rank": "piece_ranks", "masking_effect": "effects"}


class LexicalRoot:
    """Root predictor: the non-punctuation word with the highest weighted sum of its
    ``lexical_features`` (and of any ``impact.root_features`` the weights name). ``needs``
    names the extra inputs those use ("piece_ranks", "effects"), which ``kx_parser`` then
    computes."""

    def __init__(self, lang: str, weights: Optional[Dict[str, float]] = None):
        self.lang = lang
        get_lexicon(lang)
        if weights is None:
            if lang not in ROOT_WEIGHTS:
                raise KxError(f"LexicalRoot: no fitted weights for {lang!r} (have {sorted(ROOT_WEIGHTS)}); give weights.")
            weights = ROOT_WEIGHTS[lang]
        known = set(feature_names(lang)) | set(_IMPACT_FEATURES)
        unknown = sorted(k for k in weights if k not in known)
        if unknown:
            raise KxError(f"LexicalRoot: unknown features {unknown} for {lang!r}; choose from {sorted(known)}.")
        try:
            values = {k: float(v) for k, v in weights.items()}
        except (TypeError, ValueError) as err:
            raise KxError(f"LexicalRoot: weights must be numbers: {err}") from err
        bad = sorted(k for k, v in values.items() if not numpy.isfinite(v))
        if bad:
            raise KxError(f"LexicalRoot: weights must be finite numbers; not for {bad}.")
        self.weights = {k: v for k, v in values.items() if v != 0.0}
        if not self.weights:
            raise KxError("LexicalRoot: every weight is 0; give at least one feature a weight.")
        self.needs = tuple(need for feat, need in _NEEDS.items() if feat in self.weights)
        self.name = f"lexical-{lang}"

    def scores(self, M, words: Sequence[str], *, piece_ranks=None, effects=None) -> numpy.ndarray:
        """Per word, its root score (before punctuation is excluded)."""
        if words is None:
            raise KxError("LexicalRoot reads the words: pass words=... (the sentence's word strings).")
        feats = lexical_features(words, self.lang)
        if any(k in _IMPACT_FEATURES for k in self.weights):
            given = {"piece_ranks": piece_ranks, "effects": effects}
            missing = [k for k in self.needs if given[k] is None]
            if missing:
                raise KxError(f"LexicalRoot: the weights use {missing}, which were not given.")
            feats.update(root_features(M, words, piece_ranks=piece_ranks, effects=effects))
        return sum(w * feats[k] for k, w in self.weights.items())

    def __call__(self, M, words=None, *, piece_ranks=None, effects=None) -> int:
        M = numpy.asarray(M, dtype="float64")
        n = M.shape[0] - 1
        if words is not None and len(words) != n:
            raise KxError(f"LexicalRoot: {len(words)} words for a matrix of {n} words.")
        if n <= 1:
            return max(n, 0)
        return _best_word(self.scores(M, words, piece_ranks=piece_ranks, effects=effects), words)


class LanguageRoot:
    """The language-aware default: ``for_language(lang)`` is the ``LexicalRoot`` of that
    language when ``ROOT_WEIGHTS`` has one, else ``fallback`` (a ``predict_root`` strategy
    name). Called directly (before ``kx_parser`` binds it) it behaves as the fallback."""

    def __init__(self, fallback: str = "centrality"):
        if fallback not in ROOT_STRATEGIES or fallback == "scored":
            raise KxError(f"LanguageRoot: fallback must be one of {[s for s in ROOT_STRATEGIES if s != 'scored']}, "
                          f"not {fallback!r}.")
        self.fallback = fallback
        self.name = "language"
        self.needs: Tuple[str, ...] = ()

    def for_language(self, lang: str) -> Union[str, LexicalRoot]:
        """The predictor for a pipeline of language ``lang`` (``nlp.lang``)."""
        if lang in ROOT_WEIGHTS:
            return LexicalRoot(lang)
        return self.fallback

    def __call__(self, M, words=None, *, piece_ranks=None, effects=None) -> int:
        return predict_root(M, self.fallback, words=words)


def bind_root_strategy(strategy, lang: str):
    """``strategy.for_language(lang)`` where the strategy is language-aware, else itself."""
    bind = getattr(strategy, "for_language", None)
    return bind(lang) if callable(bind) else strategy


@registry.misc("kx_spacy.LexicalRoot.v1")
def make_lexical_root(lang: str = "en", weights: Optional[Dict[str, float]] = None) -> LexicalRoot:
    """A log-linear root predictor over the words' lexical features (see ``LexicalRoot``).

    lang (str): the lexicon ("en", "zh").
    weights (Dict[str, float] or None): feature -> weight; None: the weights fitted on that
        language's dev set (``ROOT_WEIGHTS``).
    RETURNS (LexicalRoot): ``predict(M, words, piece_ranks=..., effects=...) -> root``.
    """
    return LexicalRoot(lang, weights)


@registry.misc("kx_spacy.LanguageRoot.v1")
def make_language_root(fallback: str = "centrality") -> LanguageRoot:
    """``kx_parser``'s default root predictor: the ``LexicalRoot`` of the pipeline's language
    (English, Chinese), else ``fallback``.

    fallback (str): ``predict_root`` strategy for languages without fitted weights.
    RETURNS (LanguageRoot): bound to ``nlp.lang`` by ``kx_parser``.
    """
    return LanguageRoot(fallback)


# ------------------------------------------------------------------------ fitting
def fit_root_weights(
    sentences: Sequence[Sequence[str]],
    roots: Sequence[int],
    lang: str,
    *,
    l2: float = 3e-4,
    features: Optional[Sequence[str]] = None,
    max_iter: int = 300,
) -> Dict[str, float]:
    """Fit ``LexicalRoot`` weights to gold roots: maximise the mean log-probability of the
    gold root under a softmax over each sentence's non-punctuation words, minus
    ``l2 * sum(w^2)`` (L-BFGS). Sentences whose gold root is punctuation only add to the
    count of misses; they are left out of the fit.

    sentences (Sequence[Sequence[str]]): word lists.
    roots (Sequence[int]): per sentence its gold root (1-based).
    lang (str): a language of ``LEXICONS``.
    l2 (float): penalty weight.
    features (Sequence[str] or None): which ``feature_names(lang)`` to use (None: all).
    max_iter (int): L-BFGS iterations.
    RETURNS (Dict[str, float]): feature -> weight.
    """
    import torch

    names = list(features) if features is not None else feature_names(lang)
    unknown = [k for k in names if k not in feature_names(lang)]
    if unknown:
        raise KxError(f"fit_root_weights: unknown features {unknown}.")
    if len(sentences) != len(roots):
        raise KxError(f"fit_root_weights: {len(sentences)} sentences but {len(roots)} roots.")
    data = []
    for words, root in zip(sentences, roots):
        if len(words) < 2 or not 1 <= int(root) <= len(words):
            continue
        punct = numpy.array([_is_punct(w) for w in words])
        if punct[int(root) - 1] and not punct.all():
            continue
        feats = lexical_features(words, lang)
        X = numpy.stack([feats[k] for k in names], axis=1)
        mask = punct if not punct.all() else numpy.zeros_like(punct)
        data.append((torch.tensor(X), torch.tensor(mask), int(root) - 1))
    if not data:
        raise KxError("fit_root_weights: no sentence of two or more words with a non-punctuation root.")
    w = torch.zeros(len(names), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = l2 * (w * w).sum()
        for X, mask, gold in data:
            s = (X @ w).masked_fill(mask, -1e9)
            loss = loss - torch.log_softmax(s, 0)[gold] / len(data)
        loss.backward()
        return loss

    opt.step(closure)
    return {k: float(v) for k, v in zip(names, w.detach().numpy())}


def root_accuracy(predictor: Callable, sentences: Sequence[Sequence[str]], roots: Sequence[int],
                  matrices: Optional[Sequence] = None) -> float:
    """Fraction of sentences whose gold root ``predictor(M, words)`` finds (M: the impact
    matrix, or zeros when ``matrices`` is None: enough for a purely lexical predictor)."""
    if not sentences:
        raise KxError("root_accuracy: no sentences.")
    hits = 0
    for k, (words, root) in enumerate(zip(sentences, roots)):
        M = numpy.zeros((len(words) + 1,) * 2) if matrices is None else matrices[k]
        hits += int(predict_root(M, predictor, words=list(words)) == int(root))
    return hits / len(sentences)


def cross_validated_accuracy(sentences: Sequence[Sequence[str]], roots: Sequence[int], lang: str, *,
                             l2: float = 3e-4, folds: int = 5) -> float:
    """Root accuracy of ``fit_root_weights`` under k-fold cross-validation (sentence i is in
    fold ``i % folds``; each fold scored by the weights fitted on the others)."""
    if folds < 2 or folds > len(sentences):
        raise KxError(f"cross_validated_accuracy: folds must be in 2..{len(sentences)}, not {folds}.")
    hits = 0.0
    for f in range(folds):
        test = [i for i in range(len(sentences)) if i % folds == f]
        train = [i for i in range(len(sentences)) if i % folds != f]
        w = fit_root_weights([sentences[i] for i in train], [roots[i] for i in train], lang, l2=l2)
        hits += root_accuracy(LexicalRoot(lang, w), [sentences[i] for i in test], [roots[i] for i in test]) * len(test)
    return hits / len(sentences)
