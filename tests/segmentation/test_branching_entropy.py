import itertools
import math

import numpy
import pytest

from kx_spacy.errors import KxError
from kx_spacy.segmentation.branching_entropy import (
    BranchingEntropy, BranchingEntropyError, _entropy, chunks, pair_margins, segment,
)
from kx_spacy.scoring import segmentation_scores


def _lexicon(n_words, seed):
    """Words of 2-3 distinct CJK characters, no character shared between words."""
    rng = numpy.random.default_rng(seed)
    chars = [chr(c) for c in rng.permutation(numpy.arange(0x4E00, 0x4E00 + 3 * n_words))]
    words, pos = [], 0
    for size in rng.integers(2, 4, size=n_words):
        words.append("".join(chars[pos:pos + size]))
        pos += size
    return words


def _lines(words, n, seed, per_line=8):
    rng = numpy.random.default_rng(seed)
    gold = [[words[i] for i in rng.integers(0, len(words), size=per_line)] for _ in range(n)]
    return ["".join(g) for g in gold], gold


def test_chunks_cut_at_punctuation_and_space():
    assert chunks("我们，很好 ok。") == [(0, "我们"), (3, "很好"), (6, "ok")]
    assert chunks("，。 ") == [] and chunks("") == []


def test_entropy_counts_each_boundary_as_a_new_neighbour():
    from collections import Counter

    h = _entropy(Counter({"a": 2}), 2)
    assert h == pytest.approx(-(0.5 * math.log(0.5)) - 2 * 0.25 * math.log(0.25))
    assert _entropy(Counter(), 0) == 0.0
    assert _entropy(Counter({"a": 5}), 0) == pytest.approx(0.0)


def test_margins_are_exact_max_marginals():
    """Against brute force over every segmentation of short strings with random autonomies."""
    rng = numpy.random.default_rng(0)
    for trial in range(20):
        m = int(rng.integers(2, 8))
        run = "".join(chr(0x4E00 + int(i)) for i in rng.integers(0, 5, size=m))
        model = BranchingEntropy(max_len=3)
        model._autonomy = {run[i:j]: float(rng.normal()) for i in range(m) for j in range(i + 1, min(m, i + 3) + 1)
                           if rng.random() < 0.8 or j == i + 1}

        def score(cuts):
            bounds = [0] + [p for p, c in enumerate(cuts, start=1) if c] + [m]
            total = 0.0
            for a, b in zip(bounds, bounds[1:]):
                w = run[a:b]
                if len(w) > model.max_len or w not in model._autonomy:
                    return -math.inf
                total += model._autonomy[w] * len(w)
            return total

        options = [(cuts, score(cuts)) for cuts in itertools.product([False, True], repeat=m - 1)]
        margins = model.run_margins(run)
        for p in range(m - 1):
            joined = max(s for c, s in options if not c[p])
            split = max(s for c, s in options if c[p])
            if math.isinf(joined):
                assert margins[p] < -1e5
            else:
                assert margins[p] == pytest.approx(joined - split), (trial, run, p)


def test_recovers_the_words_of_a_synthetic_language():
    words = _lexicon(40, 1)
    corpus, _ = _lines(words, 1500, 2)
    test, gold = _lines(words, 60, 3)
    model = BranchingEntropy(max_len=4, min_count=2).fit(corpus + test, test)
    pred = [segment(model, t) for t in test]
    assert all("".join(p) == t for p, t in zip(pred, test))
    assert segmentation_scores(pred, gold)["f"] > 0.9
    # splitting every character would score far lower: the statistics do the work
    assert segmentation_scores([list(t) for t in test], gold)["f"] < 0.2


def test_punctuation_decides_by_rule():
    words = _lexicon(10, 4)
    corpus, _ = _lines(words, 300, 5)
    text = words[0] + "，" + words[1] + "。"
    model = BranchingEntropy().fit(corpus + [text], corpus[:50] + [text])
    margins = pair_margins(model, text)
    k = len(words[0])
    assert numpy.isnan(margins[k - 1]) and numpy.isnan(margins[k]) and numpy.isnan(margins[-1])
    assert not numpy.isnan(margins[0])
    assert segment(model, text) == [words[0], "，", words[1], "。"]


def test_unseen_characters_and_empty_lines_are_defined():
    words = _lexicon(10, 6)
    corpus, _ = _lines(words, 200, 7)
    model = BranchingEntropy().fit(corpus, corpus[:5])
    assert segment(model, "") == []
    assert pair_margins(model, "") .size == 0
    odd = "𠀀\u200b" + words[0]  # a character the corpus never saw, then a zero-width space
    assert "".join(segment(model, odd)) == odd


def test_bad_settings_and_input():
    with pytest.raises(BranchingEntropyError):
        BranchingEntropy(max_len=0)
    with pytest.raises(BranchingEntropyError):
        BranchingEntropy(min_count=0)
    with pytest.raises(KxError, match="no character"):
        BranchingEntropy().fit(["我们"], ["，。", "  ", ""])
    with pytest.raises(KxError, match="none of the target"):
        BranchingEntropy().fit(["他们"], ["我"])


def test_cli_nvbe_teacher(tmp_path):
    import json

    from typer.testing import CliRunner

    from kx_spacy.cli import app

    words = _lexicon(30, 8)
    lines, gold = _lines(words, 200, 9)
    inp, gp = tmp_path / "in.txt", tmp_path / "gold.txt"
    inp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    gp.write_text("\n".join("  ".join(g) for g in gold) + "\n", encoding="utf-8")
    out = tmp_path / "m.json"
    res = CliRunner().invoke(app, ["self-train-segmenter", str(inp), "--gold", str(gp), "--teacher", "nvbe",
                                   "--teach-limit", "0", "--high", "0.8", "--low", "0.3", "-o", str(out)])
    assert res.exit_code == 0, res.output
    result = json.loads(out.read_text())
    assert result["teacher"] == "nvbe" and result["lines"] == 200
    assert result["teacher_f_on_teach_lines"] > 0.9 and result["f"] > 0.9
    # more raw lines to teach from: scored by the teacher, learnt by the student, never segmented
    more, _ = _lines(words, 100, 10)
    extra = tmp_path / "more.txt"
    extra.write_text("\n".join(more) + "\n\n", encoding="utf-8")
    res = CliRunner().invoke(app, ["self-train-segmenter", str(inp), "--gold", str(gp), "--teacher", "nvbe",
                                   "--teach-limit", "50", "--teach-extra", str(extra), "--high", "0.8", "--low", "0.3", "-o", str(out),
                                   "--segmented", str(tmp_path / "seg.txt")])
    assert res.exit_code == 0, res.output
    result = json.loads(out.read_text())
    assert result["teach_lines"] == 50 and result["teach_extra_lines"] == 100 and result["lines"] == 200
    assert len((tmp_path / "seg.txt").read_text(encoding="utf-8").splitlines()) == 200
    assert result["f"] > 0.9
    empty = tmp_path / "empty.txt"
    empty.write_text("，。\n\n", encoding="utf-8")
    res = CliRunner().invoke(app, ["self-train-segmenter", str(empty), "--teacher", "nvbe", "-o", str(tmp_path / "e.json")])
    assert res.exit_code == 1 and "no character" in res.output
