"""The semi-Markov decoder, the branching-entropy features and round-2 relabelling."""
import json

import numpy
import pytest

from kx_spacy.perturbed.segmenter import _pair_rules
from kx_spacy.segmentation.decoding import DecoderError, check_decoder, decode_joins, length_prior
from kx_spacy.segmentation.self_training import CorpusCounts, SelfTrainingError, pair_features, train_student
from kx_spacy.segmentation.student import SegmenterStudent, StudentFormatError

from .test_self_training import _corpus, _joins
from .test_student import _noisy_impacts


def _semi(prior, weight=1.0, bias=0.0):
    return {"name": "semi_markov", "length_logprior": list(prior), "weight": weight, "bias": bias}


def test_semi_markov_without_prior_is_the_threshold_rule():
    rng = numpy.random.default_rng(0)
    text = "我们喜欢北京，天气很好。Python3.5和１９９８年的苹果电影非常精彩"
    rules = _pair_rules(list(text))
    for threshold in (0.5, 0.3, 0.8):
        z = rng.normal(0, 2, len(rules))
        plain = decode_joins(z, rules, threshold)
        assert plain == [bool(r) if r is not None else bool(1 / (1 + numpy.exp(-v)) >= threshold) for r, v in zip(rules, z)]
        # weight 0, bias 0, no length limit in reach: the same decisions, whatever the prior says
        prior = numpy.log(numpy.r_[[0.1, 0.6, 0.2], numpy.full(len(text), 0.1 / len(text))])
        assert decode_joins(z, rules, threshold, _semi(prior, weight=0.0)) == plain
        # with a length limit, no word of several atoms is longer than it
        short = decode_joins(z + 3.0, rules, threshold, _semi(numpy.log([0.25] * 4), weight=0.0))
        from kx_spacy.segmentation.self_training import words_from_joins
        assert all(len(w) <= 4 or w.isascii() for w in words_from_joins(text, short))


def test_the_prior_shapes_words_and_rules_still_decide():
    text = "甲乙丙丁戊己庚辛"
    rules = _pair_rules(list(text))
    z = numpy.zeros(len(rules))  # the student has no opinion: the prior decides
    two = decode_joins(z, rules, 0.5, _semi(numpy.log([0.05, 0.85, 0.05, 0.05]), weight=2.0))
    assert two == [True, False] * 3 + [True]
    # a strong per-word bonus makes single characters
    assert not any(decode_joins(z, rules, 0.5, _semi(numpy.log([0.25] * 4), bias=5.0)))
    # punctuation always cuts, digit runs always join, even beyond max_len
    text = "１２３４５６７８９年，好"
    rules = _pair_rules(list(text))
    j = decode_joins(numpy.full(len(rules), 3.0), rules, 0.5, _semi(numpy.log([0.4, 0.4, 0.1, 0.1])))
    assert j[:8] == [True] * 8 and j[9] is False and j[10] is False
    assert decode_joins(numpy.zeros(0), [], 0.5, _semi([0.0])) == []


def test_length_prior_and_bad_settings():
    lp = length_prior([["我们", "很", "好"], ["北京天气很"]], 4, smoothing=0.0 + 1e-9)
    assert len(lp) == 4 and numpy.exp(lp).sum() == pytest.approx(1.0)
    assert numpy.exp(lp[0]) == pytest.approx(0.5) and numpy.exp(lp[3]) == pytest.approx(0.25)
    with pytest.raises(DecoderError):
        length_prior([], 0)
    with pytest.raises(DecoderError):
        check_decoder({"name": "crf"})
    with pytest.raises(DecoderError):
        check_decoder({"name": "semi_markov"})
    with pytest.raises(DecoderError):
        check_decoder(_semi([0.0, float("nan")]))


def test_branching_entropy_features():
    c = CorpusCounts.from_texts(["的我的你的他", "我们我们"])
    right, left = c.branching("的")
    assert right == pytest.approx(numpy.log(3)) and left == pytest.approx(numpy.log(2))
    assert c.branching("魑") == (0.0, 0.0)
    base = pair_features("我的你", 0, c)
    be = pair_features("我的你", 0, c, "be")
    assert be[:len(base)] == base and len(be) == len(base) + 5 and any(f.startswith("hra:") for f in be)


def test_student_with_be_features_semi_markov_and_round_two(tmp_path):
    teach, gold = _corpus(100, 0)
    impacts = _noisy_impacts(teach, gold)
    kw = dict(high=0.6, low=0.4, epochs=2, rounds=2, confident=0.6, features="be")
    student, stats = train_student(teach, impacts, teach[:30], relabel="all", decoder="semi_markov",
                                   decoder_max_len=4, **kw)
    assert student.features == "be" and student.decoder["name"] == "semi_markov"
    _, only = train_student(teach, impacts, teach[:30], relabel="segment", **kw)
    assert stats["rounds"][0]["labelled"] > 2 * only["rounds"][0]["labelled"]  # the teacher's lines too
    acc = numpy.mean([numpy.mean(numpy.array(_joins(student.segment(t))) == numpy.array(_joins(g)))
                      for t, g in zip(teach, gold)])
    assert acc > 0.8
    student.to_disk(tmp_path / "st")
    again = SegmenterStudent.from_disk(tmp_path / "st")
    assert again.decoder == student.decoder and again.features == "be"
    assert [again.segment(t) for t in teach[:20]] == [student.segment(t) for t in teach[:20]]
    assert SegmenterStudent.from_bytes(student.to_bytes()).decoder == student.decoder
    long = "".join(teach) * 20  # one line of ~25k characters: the decoder is linear in its length
    assert "".join(student.segment(long)) == long
    for text in ["魑魅魍魉", "我们喜欢Python3.5和北京！", "", "好", "ﾃｽﾄ테스트我们"]:
        assert "".join(student.segment(text)) == text
    for bad in ({"features": "mlm"}, {"relabel": "some"}, {"confident": 0.4}, {"decoder": "crf"}):
        with pytest.raises(SelfTrainingError):
            train_student(teach, impacts, teach, **bad)


def test_a_version_1_folder_still_reads_as_base_features_and_threshold(tmp_path):
    import srsly

    teach, gold = _corpus(40, 1)
    student, _ = train_student(teach, _noisy_impacts(teach, gold), teach, high=0.6, low=0.4, epochs=1, rounds=1)
    folder = tmp_path / "v1"
    student.to_disk(folder)
    payload = srsly.msgpack_loads((folder / "student.msgpack").read_bytes())
    for key in ("features", "decoder"):
        payload.pop(key)
    (folder / "student.msgpack").write_bytes(srsly.msgpack_dumps(payload))
    meta = json.loads((folder / "meta.json").read_text(encoding="utf8"))
    (folder / "meta.json").write_text(json.dumps({**meta, "version": 1}), encoding="utf8")
    old = SegmenterStudent.from_disk(folder)
    assert old.features == "base" and old.decoder == {"name": "threshold"}
    assert [old.segment(t) for t in teach] == [student.segment(t) for t in teach]
    payload["decoder"] = {"name": "semi_markov"}
    (folder / "student.msgpack").write_bytes(srsly.msgpack_dumps(payload))
    with pytest.raises(StudentFormatError, match="length_logprior"):
        SegmenterStudent.from_disk(folder)


def test_round_two_on_the_decoded_output_labels_every_pair():
    teach, gold = _corpus(60, 2)
    impacts = _noisy_impacts(teach, gold)
    n_pairs = sum(len(t) - 1 for t in teach)
    student, stats = train_student(teach, impacts, teach, high=0.6, low=0.4, epochs=2, rounds=2,
                                   round_labels="decoded", decoder="semi_markov", decoder_max_len=4)
    assert stats["rounds"][0]["labelled"] == n_pairs and 0 < stats["rounds"][0]["join_rate"] < 1
    assert all("".join(student.segment(t)) == t for t in teach[:10])
    with pytest.raises(SelfTrainingError):
        train_student(teach, impacts, teach, round_labels="all")
