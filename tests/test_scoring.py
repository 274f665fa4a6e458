"""UAS / UUAS and bakeoff segmentation scores on hand-computed cases."""
import pytest
import spacy
from spacy.tokens import Doc
from spacy.training import Example
from spacy.util import registry

from kx_spacy.errors import DataFormatError
from kx_spacy.scoring import attachment_counts, attachment_scores, segmentation_scores, word_spans


def test_uas_uuas_by_hand():
    gold = [-1, 2, 0, 2, 3]  # 1<-2, 2 root, 3<-2, 4<-3
    pred = [-1, 2, 0, 4, 2]  # 1 ok; 2 ok; 3<-4 (undirected {3,4} in gold); 4<-2 (not in gold)
    c = attachment_counts(pred, gold)
    assert (c.correct, c.undirected, c.total) == (2, 3, 4)
    # a reversed root arc: pred root 1, gold root 2
    c2 = attachment_counts([0, 1], [2, 0])
    assert (c2.correct, c2.undirected) == (0, 1)
    scores = attachment_scores([pred, [0, 1]], [gold, [2, 0]])
    assert scores["uas"] == pytest.approx(2 / 6)
    assert scores["uuas"] == pytest.approx(4 / 6)
    assert scores["total"] == 6


def test_exclude_punct():
    gold = [2, 0, 2]
    pred = [2, 0, 1]
    assert attachment_scores([pred], [gold])["uas"] == pytest.approx(2 / 3)
    s = attachment_scores([pred], [gold], punct=[[False, False, True]])
    assert s["uas"] == 1.0 and s["total"] == 2


def test_attachment_errors():
    with pytest.raises(DataFormatError):
        attachment_scores([[0]], [[0], [0]])
    with pytest.raises(DataFormatError):
        attachment_counts([0, 1, 1], [0], punct=[False])
    assert attachment_scores([], [])["uas"] == 0.0


def _example(nlp, words, gold_heads, pred_heads, pos=None):
    ref = Doc(nlp.vocab, words=words, heads=gold_heads, deps=["dep"] * len(words), pos=pos)
    pred = Doc(nlp.vocab, words=words, heads=pred_heads, deps=["dep"] * len(words))
    return Example(pred, ref)


def test_registered_scorer():
    nlp = spacy.blank("en")
    # gold: 0<-1, 1 root, 2<-1 ; pred: 0<-1, 1<-2, 2 root
    eg = _example(nlp, ["a", "b", "."], [1, 1, 1], [1, 2, 2], pos=["X", "X", "PUNCT"])
    scorer = registry.scorers.get("kx_spacy.UAS.v1")()
    s = scorer([eg])
    assert s["dep_uas"] == pytest.approx(1 / 3)
    # undirected: {1,2} ok, {2,3} ok, ROOT-{3} not in gold
    assert s["dep_uuas"] == pytest.approx(2 / 3)
    s2 = registry.scorers.get("kx_spacy.UAS.v1")(exclude_punct=True)([eg])
    assert s2["dep_uas"] == pytest.approx(1 / 2)
    assert scorer([])["dep_uas"] is None


def test_scorer_with_different_tokenization():
    nlp = spacy.blank("en")
    ref = Doc(nlp.vocab, words=["New", "York", "rocks"], heads=[1, 2, 2], deps=["d", "d", "ROOT"])
    pred = Doc(nlp.vocab, words=["New York", "rocks"], spaces=[True, False], heads=[1, 1], deps=["d", "ROOT"])
    pred_words = Doc(nlp.vocab, words=["New", "York", "rocks"], heads=[1, 2, 2], deps=["d", "d", "ROOT"])
    s = registry.scorers.get("kx_spacy.UAS.v1")()([Example(pred, ref)])
    # "New" and "York" have no one-to-one match: wrong; "rocks" is right
    assert s["dep_uas"] == pytest.approx(1 / 3)
    assert registry.scorers.get("kx_spacy.UAS.v1")()([Example(pred_words, ref)])["dep_uas"] == 1.0


def test_word_spans():
    assert word_spans(["ab", "c", "", "def"]) == [(0, 2), (2, 3), (3, 6)]


def test_segmentation_by_hand():
    gold = [["共同", "创造", "美好", "的"], ["新", "世纪"]]
    pred = [["共同", "创", "造", "美好的"], ["新世纪"]]
    train = {"共同", "创造", "的", "新"}
    s = segmentation_scores(pred, gold, train)
    # correct: 共同 only -> 1; pred words 5; gold words 6
    assert s["correct"] == 1 and s["pred_words"] == 5 and s["gold_words"] == 6
    assert s["precision"] == pytest.approx(1 / 5)
    assert s["recall"] == pytest.approx(1 / 6)
    assert s["f"] == pytest.approx(2 * (1 / 5) * (1 / 6) / (1 / 5 + 1 / 6))
    # OOV gold words: 美好, 世纪 -> none found
    assert s["oov_words"] == 2 and s["oov_recall"] == 0.0
    perfect = segmentation_scores(gold, gold, train)
    assert perfect["f"] == 1.0 and perfect["oov_recall"] == 1.0
    assert segmentation_scores(pred, gold)["oov_recall"] is None


def test_segmentation_mismatch():
    with pytest.raises(DataFormatError, match="Line 2"):
        segmentation_scores([["a"], ["b"]], [["a"], ["c"]])
    with pytest.raises(DataFormatError):
        segmentation_scores([["a"]], [["a"], ["b"]])
    # empty lines score nothing
    assert segmentation_scores([[]], [[]])["f"] == 0.0
