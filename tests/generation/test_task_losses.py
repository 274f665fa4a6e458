"""Task losses for MGS: values on hand-made examples, registry names, bad input."""
import math

import pytest
import spacy
from spacy.tokens import Doc

from kx_spacy.generation.task_losses import (
    ChrFLoss,
    EditDistanceLoss,
    LengthLoss,
    NonTerminationLoss,
    RepetitionLoss,
    ScorerLoss,
    SumLoss,
    TaskLossError,
    levenshtein,
    mean_task_loss,
)

EOS = 2


def test_levenshtein_hand_made():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein([], [1, 2]) == 2
    assert levenshtein([1, 2, 3], [1, 2, 3]) == 0


def test_edit_distance_reference_normalised_and_capped():
    loss = EditDistanceLoss()
    # d = 2 (substitute 3->4, insert 5) over |ref| = 4
    assert loss([[1, 2, 3]], [[1, 2, 4, 5]]) == [0.5]
    # 10 edits over a reference of 1 are capped at 1
    assert loss([[9] * 10], [[1]]) == [1.0]
    assert loss([[1, 2]], [[1, 2]]) == [0.0]


def test_edit_distance_modes_units_and_eos():
    assert EditDistanceLoss(normalize="max")([[1, 2, 3, 4]], [[1, 2]]) == [0.5]
    assert EditDistanceLoss(normalize="none")([[1, 2, 3, 4]], [[1, 2]]) == [2.0]
    assert EditDistanceLoss()(["the cat sat"], ["the dog sat"]) == [pytest.approx(1 / 3)]
    assert EditDistanceLoss(unit="char")(["abcd"], ["abce"]) == [0.25]
    # everything after the first EOS is ignored
    assert EditDistanceLoss(eos=EOS)([[5, 6, EOS, 7, 7, 7]], [[5, 6, EOS]]) == [0.0]


def test_non_termination():
    loss = NonTerminationLoss(EOS)
    assert loss([[3, 4], [3, EOS], [EOS]], [[1], [1], [1]]) == [1.0, 0.0, 0.0]
    assert NonTerminationLoss("</s>")(["a b </s>", "a b"], ["x", "y"]) == [0.0, 1.0]
    with pytest.raises(TaskLossError):
        NonTerminationLoss(None)([[3, 4]], [[1]])

    class Hyp(str):
        stopped_by = "max_length"

    ended = Hyp("abc")
    ended.stopped_by = "eos"
    assert NonTerminationLoss()([Hyp("abc"), ended], ["x", "y"]) == [1.0, 0.0]


def test_repetition_four_grams():
    loss = RepetitionLoss(4)
    # a b c d a b c d: 5 four-grams, 4 distinct -> 1 - 4/5
    assert loss([list("abcdabcd")], [[0]]) == [pytest.approx(0.2)]
    assert loss([[7] * 8], [[0]]) == [pytest.approx(1 - 1 / 5)]
    assert loss([[1, 2, 3, 4, 5]], [[0]]) == [0.0]
    # fewer than n tokens: defined value (0 by default, the reference code's 1.0 on request)
    assert loss([[1, 2]], [[0]]) == [0.0]
    assert RepetitionLoss(4, short=1.0)([[1, 2]], [[0]]) == [1.0]
    # EOS and what follows are not counted
    assert RepetitionLoss(2, eos=EOS)([[1, 1, 1, EOS, 5, 6]], [[0]]) == [pytest.approx(0.5)]


def test_chrf_matches_sacrebleu():
    from sacrebleu.metrics import CHRF

    loss = ChrFLoss()
    hyp, ref = "the cat sat on the mat", "the cat sat on a mat"
    expected = 1 - CHRF().sentence_score(hyp, [ref]).score / 100
    assert loss([hyp, ref, "xyz"], [ref, ref, "abc"]) == [pytest.approx(expected), 0.0, 1.0]
    assert 0 < expected < 0.5
    # token ids are scored as space-joined strings
    assert loss([[3, 4, 5]], [[3, 4, 5]]) == [0.0]


def test_scorer_loss_tagger_scorer():
    nlp = spacy.blank("en")
    scorer = spacy.registry.scorers.get("spacy.tagger_scorer.v1")()
    ref = Doc(nlp.vocab, words=["a", "b", "c"], tags=["X", "Y", "Z"])
    hyp = Doc(nlp.vocab, words=["a", "b", "c"], tags=["X", "Y", "W"])
    loss = ScorerLoss(scorer, "tag_acc")
    assert loss([hyp, ref], [ref, ref]) == [pytest.approx(1 / 3), 0.0]
    # texts that cannot be aligned get the defined 'misaligned' distance
    other = Doc(nlp.vocab, words=["q", "r"], tags=["X", "Y"])
    assert loss([other], [ref]) == [1.0]


def test_scorer_loss_texts_with_tokenisation_scorer():
    from spacy.scorer import Scorer

    loss = ScorerLoss(Scorer.score_tokenization, "token_acc", lang="en")
    assert loss(["the cat sat"], ["the cat sat"]) == [0.0]
    assert ScorerLoss(Scorer.score_tokenization, "token_acc", misaligned=0.75)(["a b"], ["c d e"]) == [0.75]
    with pytest.raises(TaskLossError):
        ScorerLoss("not callable", "x")


@pytest.mark.parametrize("loss", [EditDistanceLoss(), NonTerminationLoss(EOS), RepetitionLoss(), ChrFLoss()])
def test_mismatched_lengths_raise(loss):
    with pytest.raises(TaskLossError):
        loss([[1], [2]], [[1]])


def test_registered_names_build_the_losses():
    edit = spacy.registry.misc.get("kx_spacy.EditDistanceLoss.v1")()
    assert edit([[1, 2, 3]], [[1, 2, 4, 5]]) == [0.5]
    assert spacy.registry.misc.get("kx_spacy.NonTerminationLoss.v1")(eos=EOS)([[1]], [[1]]) == [1.0]
    assert spacy.registry.misc.get("kx_spacy.RepetitionLoss.v1")()([[7] * 5], [[0]]) == [pytest.approx(0.5)]
    assert spacy.registry.misc.get("kx_spacy.ChrFLoss.v1")()(["abc"], ["abc"]) == [0.0]
    scorer = spacy.registry.scorers.get("spacy.tagger_scorer.v1")()
    assert callable(spacy.registry.misc.get("kx_spacy.ScorerLoss.v1")(scorer=scorer, key="tag_acc"))


def test_config_resolves_a_scorer_loss():
    from thinc.api import Config

    cfg = Config().from_str(
        """
        [loss]
        @misc = "kx_spacy.ScorerLoss.v1"
        key = "tag_acc"

        [loss.scorer]
        @scorers = "spacy.tagger_scorer.v1"
        """
    )
    loss = spacy.registry.resolve(cfg)["loss"]
    nlp = spacy.blank("en")
    ref = Doc(nlp.vocab, words=["a", "b"], tags=["X", "Y"])
    assert loss([ref], [ref]) == [0.0]


def test_mean_task_loss_skips_nan():
    def loss(h, r):
        return [1.0, math.nan, 3.0]

    assert mean_task_loss(loss, [0, 0, 0], [0, 0, 0]) == 2.0
    assert math.isnan(mean_task_loss(lambda h, r: [math.nan], [0], [0]))


def test_sum_loss_weighted_per_pair_and_bad_input():
    rep = RepetitionLoss(4)
    nonterm = NonTerminationLoss(eos=EOS)
    hyps = [[7] * 6, [1, 2, 3, 4, EOS]]  # loops without EOS: 1 + 2/3; distinct and stopped: 0
    assert SumLoss([nonterm, rep])(hyps, [[0], [0]]) == [pytest.approx(1 + 2 / 3), 0.0]
    assert SumLoss([nonterm, rep], [2.0, 0.5])(hyps, [[0], [0]]) == [pytest.approx(2 + 1 / 3), 0.0]
    assert math.isnan(SumLoss([nonterm, lambda h, r: [math.nan] * len(h)])([[1]], [[1]])[0])
    with pytest.raises(TaskLossError):
        SumLoss([])
    with pytest.raises(TaskLossError):
        SumLoss([nonterm], [1.0, 2.0])
    with pytest.raises(TaskLossError):
        SumLoss([nonterm, lambda h, r: [0.0]])([[1], [2]], [[1], [2]])


def test_config_resolves_a_sum_loss():
    from thinc.api import Config

    cfg = Config().from_str(
        f"""
        [loss]
        @misc = "kx_spacy.SumLoss.v1"
        weights = {{"nonterm": 2.0}}

        [loss.losses]

        [loss.losses.nonterm]
        @misc = "kx_spacy.NonTerminationLoss.v1"
        eos = {EOS}

        [loss.losses.repeat]
        @misc = "kx_spacy.RepetitionLoss.v1"
        """
    )
    loss = spacy.registry.resolve(cfg)["loss"]
    assert loss([[7] * 5], [[0]]) == [pytest.approx(2.0 + 0.5)]
    with pytest.raises(TaskLossError):
        spacy.registry.misc.get("kx_spacy.SumLoss.v1")(losses={"a": NonTerminationLoss(EOS)}, weights={"b": 1.0})


def test_length_loss_relative_capped_units_and_eos():
    loss = LengthLoss()
    assert loss([[1, 2, 3], [], [1] * 9, [1, 2]], [[1, 2, 3, 4], [1, 2], [1, 2], [1, 2]]) == \
        [pytest.approx(0.25), 1.0, 1.0, 0.0]
    assert LengthLoss(cap=5.0)([[1] * 9], [[1, 2]]) == [pytest.approx(3.5)]
    assert LengthLoss(unit="char")(["秋月明"], ["春风"]) == [pytest.approx(0.5)]
    assert LengthLoss(eos=EOS)([[1, 2, EOS, 9, 9]], [[1, 2]]) == [0.0]
    assert LengthLoss()([[], [1]], [[], []]) == [0.0, 1.0]
    assert spacy.registry.misc.get("kx_spacy.LengthLoss.v1")(unit="char")(["ab"], ["abcd"]) == [0.5]
    with pytest.raises(TaskLossError):
        LengthLoss(cap=0)
    with pytest.raises(TaskLossError):
        LengthLoss(unit="word")
