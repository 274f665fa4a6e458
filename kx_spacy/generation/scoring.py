"""Scores of generated text: chrF and BLEU (sacrebleu), exact match, non-termination ratio.

``kx_spacy.GenerationScorer.v1`` (``registry.scorers``) scores spaCy Examples whose predicted
Doc carries ``doc._.kx_generation`` and whose reference carries the target in
``user_data["kx_target"]`` (``kx_spacy.Seq2SeqCorpus.v1``). Keys (fractions in 0..1, like
spaCy's own scores): ``gen_chrf``, ``gen_bleu``, ``gen_exact`` and ``gen_nonterm`` (share of
generations stopped by ``max_length`` instead of EOS: lower is better).
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional, Sequence

from spacy.util import registry

from .corpus import example_target

SCORE_KEYS = ("gen_chrf", "gen_bleu", "gen_exact", "gen_nonterm")


def text_scores(hypotheses: Sequence[str], references: Sequence[str], *, bleu_tokenize: str = "13a") -> Dict[str, float]:
    """Corpus chrF, BLEU (0..1) and exact match of hypotheses against one reference each.

    bleu_tokenize (str): sacrebleu's BLEU tokenizer ("13a", "zh", "char", ...).
    """
    import sacrebleu

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references.")
    if not hypotheses:
        return {"chrf": None, "bleu": None, "exact": None}
    hyps, refs = list(hypotheses), list(references)
    chrf = sacrebleu.corpus_chrf(hyps, [refs]).score / 100.0
    bleu = sacrebleu.corpus_bleu(hyps, [refs], tokenize=bleu_tokenize).score / 100.0
    exact = sum(h.strip() == r.strip() for h, r in zip(hyps, refs)) / len(hyps)
    return {"chrf": chrf, "bleu": bleu, "exact": exact}


def score_generation(examples: Iterable, *, bleu_tokenize: str = "13a", **_) -> Dict[str, Optional[float]]:
    """The generator's scores over Examples (see the module docstring)."""
    hyps: List[str] = []
    refs: List[str] = []
    n_gen = n_nonterm = 0
    for eg in examples:
        record = eg.predicted._.kx_generation if eg.predicted.has_extension("kx_generation") else None
        if record is not None:
            n_gen += 1
            n_nonterm += int(record.get("stopped_by") == "max_length")
        target = example_target(eg)
        if target is None:
            continue
        hyps.append(record["text"] if record is not None else "")
        refs.append(target)
    out = text_scores(hyps, refs, bleu_tokenize=bleu_tokenize)
    return {
        "gen_chrf": out["chrf"],
        "gen_bleu": out["bleu"],
        "gen_exact": out["exact"],
        "gen_nonterm": n_nonterm / n_gen if n_gen else None,
    }


@registry.scorers("kx_spacy.GenerationScorer.v1")
def make_generation_scorer(bleu_tokenize: str = "13a") -> Callable[..., Dict[str, Optional[float]]]:
    """Scorer for kx_generator: chrF, BLEU, exact match, non-termination ratio.

    bleu_tokenize (str): sacrebleu's BLEU tokenizer ("13a" for English, "zh" for Chinese).
    RETURNS (Callable[[Iterable[Example]], Dict[str, Optional[float]]]): the scorer.
    """

    def scorer(examples: Iterable, **kwargs) -> Dict[str, Optional[float]]:
        return score_generation(examples, bleu_tokenize=bleu_tokenize)

    return scorer
