import numpy
import pytest

from kx_spacy.errors import KxError
from kx_spacy.segmentation.self_training import (
    BoundaryClassifier, CorpusCounts, SelfTrainingError, pseudo_labels, self_train, words_from_joins,
)

WORDS = ["我们", "喜欢", "北京", "天气", "很", "好", "苹果", "电影", "非常", "精彩", "今天", "吃"]


def _corpus(n, seed):
    rng = numpy.random.default_rng(seed)
    lines, golds = [], []
    for _ in range(n):
        ws = [WORDS[i] for i in rng.integers(0, len(WORDS), size=6)]
        lines.append("".join(ws))
        golds.append(ws)
    return lines, golds


def _joins(words):
    out = []
    for w in words:
        out += [True] * (len(w) - 1) + [False]
    return out[:-1]


def test_words_from_joins_roundtrip():
    assert words_from_joins("我们很好", [True, False, False]) == ["我们", "很", "好"]
    assert words_from_joins("好", []) == ["好"]


def test_pseudo_labels_confident_only_and_rules():
    imp = [numpy.array([9.0, 1.0, 5.0, numpy.nan]), numpy.array([8.0, 2.0])]
    rules = [[None, None, None, False], [None, True]]
    lab = pseudo_labels(imp, rules, high=0.7, low=0.3)
    assert lab[0][0] == 1 and lab[0][1] == 0 and lab[0][2] is None and lab[0][3] == 0
    assert lab[1][1] == 1  # a rule's decision is kept
    with pytest.raises(SelfTrainingError):
        pseudo_labels(imp, rules, high=0.2, low=0.5)
    with pytest.raises(KxError):
        pseudo_labels([numpy.array([numpy.nan])], [[None]], high=0.8, low=0.2)


def test_student_beats_a_noisy_teacher():
    """A teacher right on 75 % of its confident pairs: the student generalises past its noise."""
    teach, gold_t = _corpus(150, 0)
    test, gold = _corpus(60, 1)
    rng = numpy.random.default_rng(2)
    impacts, teacher_acc = [], []
    for line, ws in zip(teach, gold_t):
        truth = numpy.array(_joins(ws), dtype=float)
        noisy = numpy.where(rng.random(truth.size) < 0.25, 1 - truth, truth)
        impacts.append(noisy * 5 + rng.random(truth.size))
        teacher_acc.append(float((noisy == truth).mean()))
    words, stats = self_train(teach, impacts, test, high=0.6, low=0.4, epochs=3)
    pair_acc = numpy.mean([
        numpy.mean(numpy.array(_joins(w)) == numpy.array(_joins(g))) for w, g in zip(words, gold)
    ])
    assert pair_acc > numpy.mean(teacher_acc) + 0.1
    assert all("".join(w) == t for w, t in zip(words, test))
    assert stats["pseudo_labelled"] > 0 and 0 < stats["predicted_join_rate"] < 1


def test_self_train_bad_input():
    with pytest.raises(SelfTrainingError):
        self_train(["我们"], [], ["我们"])
    with pytest.raises(SelfTrainingError):
        self_train(["我们很好"], [numpy.array([1.0])], ["我们"])
    with pytest.raises(SelfTrainingError, match="one class"):
        self_train(["我们很好"], [numpy.array([1.0, 1.0, 1.0])], ["我们"], high=0.0, low=0.0)


def test_counts_and_classifier_basics():
    c = CorpusCounts.from_texts(["我们我们", "我们"])
    assert c.pmi("我", "们") > 0 and c.pmi("们", "好") == -10.0
    clf = BoundaryClassifier(dim=64, lr=1.0).fit([numpy.array([1, 2]), numpy.array([3, 4])], numpy.array([1.0, 0.0]), epochs=20)
    p = clf.predict_proba([numpy.array([1, 2]), numpy.array([3, 4])])
    assert p[0] > 0.8 and p[1] < 0.2


def test_join_rate_prior_sets_the_fraction_joined():
    teach, _ = _corpus(40, 3)
    rng = numpy.random.default_rng(4)
    impacts = [rng.random(len(t) - 1) for t in teach]
    for rate in (0.2, 0.6):
        words, stats = self_train(teach, impacts, teach, join_rate=rate, epochs=1)
        assert abs(stats["predicted_join_rate"] - rate) < 0.05
    with pytest.raises(SelfTrainingError):
        self_train(teach, impacts, teach, join_rate=1.5)


def test_cli_pmi_teacher_scores_against_gold(tmp_path):
    import json

    from typer.testing import CliRunner

    from kx_spacy.cli import app

    lines, gold = _corpus(30, 5)
    inp, gp = tmp_path / "in.txt", tmp_path / "gold.txt"
    inp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    gp.write_text("\n".join("  ".join(g) for g in gold) + "\n", encoding="utf-8")
    out = tmp_path / "m.json"
    res = CliRunner().invoke(app, ["self-train-segmenter", str(inp), "--gold", str(gp), "--teacher", "pmi",
                                   "--teach-limit", "0", "--join-rate", "0.5", "-o", str(out),
                                   "--segmented", str(tmp_path / "seg.txt")])
    assert res.exit_code == 0, res.output
    result = json.loads(out.read_text())
    assert result["lines"] == 30 and 0.0 <= result["f"] <= 1.0 and result["teacher"] == "pmi"
    seg = (tmp_path / "seg.txt").read_text(encoding="utf-8").splitlines()
    assert ["".join(s.split()) for s in seg] == lines
    res = CliRunner().invoke(app, ["self-train-segmenter", str(inp), "--teacher", "bert?"])
    assert res.exit_code == 1


def test_rank_average_combines_by_rank_and_fills_gaps():
    from kx_spacy.segmentation.self_training import rank_average

    a = [numpy.array([1.0, 2.0, numpy.nan]), numpy.array([3.0])]
    b = [numpy.array([300.0, 200.0, 100.0]), numpy.array([numpy.nan])]
    out = rank_average(a, b)
    assert [len(v) for v in out] == [3, 1]
    assert out[0][0] == pytest.approx((1 / 6 + 5 / 6) / 2) and out[0][1] == pytest.approx(0.5)
    assert out[0][2] == pytest.approx(1 / 6) and out[1][0] == pytest.approx(5 / 6)  # one teacher only
    # monotone transforms of a teacher change nothing
    same = rank_average(a, [numpy.exp(v / 100) for v in b])
    assert all(numpy.allclose(x, y) for x, y in zip(out, same))
    with pytest.raises(SelfTrainingError):
        rank_average(a, b[:1])
    with pytest.raises(SelfTrainingError):
        rank_average()


def test_parse_teachers():
    from kx_spacy.segmentation.teachers import parse_teachers

    assert parse_teachers("nvbe+mlm") == ["nvbe", "mlm"]
    for bad in ("bert", "nvbe+nvbe", "", "+"):
        with pytest.raises(SelfTrainingError):
            parse_teachers(bad)


def test_cli_combined_teacher_with_the_mlm_and_its_cache(tmp_path, tiny_mlm_dir, monkeypatch):
    import json

    from typer.testing import CliRunner

    import kx_spacy.pipeline_builder
    from kx_spacy.cli import app

    lines, gold = _corpus(20, 6)
    inp, gp = tmp_path / "in.txt", tmp_path / "gold.txt"
    inp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    gp.write_text("\n".join("  ".join(g) for g in gold) + "\n", encoding="utf-8")
    cache, out = tmp_path / "impacts.npz", tmp_path / "m.json"
    args = ["self-train-segmenter", str(inp), "--gold", str(gp), "--teacher", "nvbe+mlm", "--encoder", str(tiny_mlm_dir),
            "--teach-limit", "6", "--high", "0.7", "--low", "0.3", "--impacts-cache", str(cache), "-o", str(out)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    result = json.loads(out.read_text())
    assert result["teacher"] == "nvbe+mlm" and result["teach_lines"] == 6 and result["lines"] == 20
    assert cache.exists() and 0.0 <= result["teacher_f_on_teach_lines"] <= 1.0

    def no_model(*args, **kwargs):
        raise AssertionError("the cached impacts should have been reused")

    monkeypatch.setattr(kx_spacy.pipeline_builder, "build_pipeline", no_model)
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["f"] == pytest.approx(result["f"])
    res = CliRunner().invoke(app, args[:2] + ["--teacher", "nvbe+nvbe", "-o", str(out)])
    assert res.exit_code == 1 and "each once" in res.output


def test_rank_average_weights():
    from kx_spacy.segmentation.self_training import rank_average

    a = [numpy.array([1.0, 2.0, 3.0])]
    b = [numpy.array([3.0, 2.0, numpy.nan])]
    out = rank_average(a, b, weights=[3, 1])[0]
    assert out[0] == pytest.approx((3 * 1 / 6 + 1 * 3 / 4) / 4)
    assert out[2] == pytest.approx(5 / 6)  # b did not score it: a alone
    assert numpy.allclose(rank_average(a, b, weights=[1, 0])[0], [1 / 6, 1 / 2, 5 / 6])  # b weighs nothing
    for bad in ([1], [1, -1], [0, 0]):
        with pytest.raises(SelfTrainingError):
            rank_average(a, b, weights=bad)


def test_mlm_cache_scores_only_new_lines(tmp_path, tiny_mlm_dir, monkeypatch):
    import kx_spacy.perturbed.segmenter as seg
    from kx_spacy.segmentation.mlm_impacts import mlm_scores

    lines, _ = _corpus(8, 7)
    seen = []
    real = seg.adjacent_impacts

    def counting(backbone, units, **kw):
        seen.extend("".join(u) for u in units)
        return real(backbone, units, **kw)

    monkeypatch.setattr(seg, "adjacent_impacts", counting)
    cache = tmp_path / "c.npz"
    first = mlm_scores(lines[:5], str(tiny_mlm_dir), cache=cache)
    assert seen == lines[:5]
    again = mlm_scores(lines[3:] + lines[:2], str(tiny_mlm_dir), cache=cache)
    assert seen == lines[:5] + lines[5:]  # only the three new lines were scored
    for a, b in zip(first[3:5] + first[:2], again[:2] + again[5:]):
        assert numpy.allclose(a, b, equal_nan=True)
    assert all(len(v) == len(t) - 1 for v, t in zip(again, lines[3:] + lines[:2]))
    seen.clear()
    import shutil

    copy = tmp_path / "same_model_elsewhere"
    shutil.copytree(tiny_mlm_dir, copy)
    mlm_scores(lines[:2], str(copy), cache=cache)  # the same weights at another path: reused
    assert seen == []
    (copy / "config.json").write_text((copy / "config.json").read_text().replace("}", ', "x": 1}', 1))
    mlm_scores(lines[:2], str(copy), cache=cache)  # a changed model: scored again
    assert seen == lines[:2]
