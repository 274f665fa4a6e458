"""The impact engine: exactness against the reference loop, batching, odd input, scores."""
import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kx_spacy.errors import KxError, NoMaskTokenError
from kx_spacy.perturbed.impact import (
    _owners,
    _word_windows,
    compute_impacts,
    impact_to_scores,
    predict_root,
    reference_impacts,
)

SENTS = [
    ["The", "quick", "brownish", "fox", "jumped", "over", "élan", "."],
    ["I", "liked", "it", "!"],
    ["Ω", "cat", "😀", "dog"],  # [UNK] pieces
    ["word"],
]


@pytest.fixture(scope="module")
def backbone(tiny_mlm_dir):
    from kx_spacy.backbone import Backbone
    from kx_spacy.testing import make_pipeline

    return Backbone.from_nlp(make_pipeline("en", tiny_mlm_dir))


def test_official_mode_reproduces_reference_loop(backbone):
    mats = compute_impacts(backbone, SENTS, mode="official")
    for words, M in zip(SENTS, mats):
        ref = reference_impacts(backbone, words)
        assert M.shape == (len(words) + 1, len(words) + 1)
        numpy.testing.assert_allclose(M, ref, atol=1e-5, rtol=1e-4)
        assert M[:, 0].max() == 0 and numpy.diag(M).max() == 0
        if len(words) > 1:
            assert M[1:, 1:].max() > 0 and M[0, 1:].max() > 0


def test_kx_and_official_agree_on_one_piece_words_only(backbone):
    kx = compute_impacts(backbone, SENTS, mode="kx")
    off = compute_impacts(backbone, SENTS, mode="official")
    numpy.testing.assert_allclose(kx[1], off[1], atol=1e-6)  # one piece per word
    assert not numpy.allclose(kx[0], off[0], atol=1e-7)  # "brownish", "élan" have several


def test_batching_across_sentences_and_order_do_not_change_results(backbone):
    together = compute_impacts(backbone, SENTS, batch_size=7)
    for words, M in zip(SENTS, together):
        alone = compute_impacts(backbone, [words], batch_size=300)[0]
        numpy.testing.assert_allclose(M, alone, atol=1e-5)
    reversed_ = compute_impacts(backbone, SENTS[::-1], max_variants=5)[::-1]
    for a, b in zip(together, reversed_):
        numpy.testing.assert_allclose(a, b, atol=1e-5)


def test_each_distinct_masked_input_runs_once(backbone):
    calls = []
    real = backbone.hidden_states

    def counting(seqs, **kwargs):
        calls.append(len(seqs))
        return real(seqs, **kwargs)

    backbone.hidden_states = counting
    try:
        compute_impacts(backbone, [SENTS[0], SENTS[1]])
    finally:
        del backbone.hidden_states
    expected = sum(1 + n + n * (n - 1) // 2 for n in (len(SENTS[0]), len(SENTS[1])))
    assert sum(calls) == expected and len(calls) == 1


def test_empty_one_word_and_pieceless_words(backbone):
    empty, one, dropped = compute_impacts(backbone, [[], ["cat"], ["cat", "\x00", "dog"]])
    assert empty.shape == (1, 1) and empty[0, 0] == 0
    assert one.shape == (2, 2) and one[1].max() == 0 and one[0, 1] > 0
    assert dropped.shape == (4, 4)
    assert dropped[2].max() == 0 and dropped[:, 2].max() == 0  # "\x00" has no piece
    assert dropped[1, 3] > 0 and dropped[3, 1] > 0
    assert compute_impacts(backbone, []) == []


def test_long_sentence_uses_word_windows(backbone):
    words = ["snowboarding", "the", "xylophone", "cat", "sat", "."] * 4  # 92 pieces > 62
    lengths = [len(backbone.tokenize_words([w]).ids) for w in words]
    assert sum(lengths) > backbone.max_content_length
    M = compute_impacts(backbone, [words])[0]
    assert M.shape == (len(words) + 1, len(words) + 1)
    windows = _word_windows(lengths, backbone.max_content_length)
    owner = _owners(windows, len(words))
    for i in range(len(words)):
        s, e = windows[owner[i]]
        outside = numpy.ones(len(words), dtype=bool)
        outside[s:e] = False
        assert M[i + 1, 1:][outside].max() == 0
        assert M[i + 1, 1:].max() > 0
    s, e = windows[0]
    first = compute_impacts(backbone, [words[s:e]])[0]
    numpy.testing.assert_allclose(M[1, 1 : e + 1], first[1, 1:], atol=1e-5)


def test_a_long_sentence_is_spread_over_rounds_with_the_same_result(backbone):
    """Memory stays bounded: a sentence of many windows no longer goes through in one round."""
    words = ["snowboarding", "the", "xylophone", "cat", "sat", "."] * 4  # several windows
    whole = compute_impacts(backbone, [words])[0]
    calls = []
    real = backbone.hidden_states

    def counting(seqs, **kwargs):
        calls.append(len(seqs))
        return real(seqs, **kwargs)

    backbone.hidden_states = counting
    try:
        split = compute_impacts(backbone, [words], max_variants=50)[0]
    finally:
        del backbone.hidden_states
    assert len(calls) > 1  # one round per window
    numpy.testing.assert_allclose(split, whole, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=1, max_size=60), st.integers(4, 20))
def test_word_windows_cover_and_fit(lengths, width):
    windows = _word_windows(lengths, width)
    covered = set()
    for s, e in windows:
        assert e > s
        assert sum(lengths[s:e]) <= width or e - s == 1
        covered.update(range(s, e))
    assert covered == set(range(len(lengths)))
    assert all(a[0] < b[0] and a[1] <= b[1] for a, b in zip(windows, windows[1:]))
    owner = _owners(windows, len(lengths))
    assert all(windows[owner[i]][0] <= i < windows[owner[i]][1] for i in range(len(lengths)))


def test_layers_and_distances(backbone):
    from spacy.util import registry

    base = compute_impacts(backbone, [SENTS[1]])[0]
    numpy.testing.assert_allclose(compute_impacts(backbone, [SENTS[1]], layers=[-1])[0], base, atol=1e-6)
    first = compute_impacts(backbone, [SENTS[1]], layers=0)[0]
    avg = compute_impacts(backbone, [SENTS[1]], layers=[0, -1])[0]
    assert not numpy.allclose(first, base) and not numpy.allclose(avg, base)
    cos = compute_impacts(backbone, [SENTS[1]], distance=registry.misc.get("kx_spacy.CosineDistance.v1")())[0]
    assert 0 <= cos.min() and cos.max() <= 2 and not numpy.allclose(cos, base)
    assert registry.misc.get("kx_spacy.Layers.v1")([0, 2]) == (0, 2)
    for bad in ({"mode": "nope"}, {"distance": "nope"}, {"layers": []}):
        with pytest.raises(KxError):
            compute_impacts(backbone, [SENTS[1]], **bad)
    with pytest.raises(KxError):
        compute_impacts(backbone, [[1, 2]])


def test_no_mask_token_is_a_clear_error(tiny_nomask_dir):
    from kx_spacy.backbone import Backbone
    from kx_spacy.testing import make_pipeline

    bb = Backbone.from_nlp(make_pipeline("en", tiny_nomask_dir))
    with pytest.raises(NoMaskTokenError):
        compute_impacts(bb, [["a", "cat"]])


def _random_impacts(n, seed=0):
    rng = numpy.random.default_rng(seed)
    M = rng.random((n + 1, n + 1)) * 3
    M[:, 0] = 0
    numpy.fill_diagonal(M, 0)
    return M


def test_official_scores_follow_the_reference_formula():
    M = _random_impacts(5)
    S = impact_to_scores(M, "official")
    E = numpy.exp(M - M.max())
    for h in range(6):
        for d in range(6):
            assert S[h, d] == pytest.approx(E[d, h] / E[h].sum())  # divided by ROW h's sum
    fixed = impact_to_scores(M, "official", softmax_quirk=False)
    numpy.testing.assert_allclose(fixed.sum(axis=0), 1.0)  # a real softmax per dependent
    gold = impact_to_scores(M, "official", root=2)
    G = M.copy()
    G[2] = 0
    G[2, 0] = 1
    E = numpy.exp(G - G.max())
    assert gold[0, 2] == pytest.approx(E[2, 0] / E[0].sum())
    cle = impact_to_scores(M, "official", decoder="cle", root=3)
    assert cle[0, 3] == pytest.approx(0.0) and cle[1, 3] < -1e8  # log 1, log 0
    assert cle[2, 1] == pytest.approx(numpy.log(M[1, 2]))
    with pytest.raises(KxError):
        impact_to_scores(M, "official", decoder="mst")


def test_kx_scores_are_log_probabilities_over_heads():
    M = _random_impacts(6, seed=1)
    S = impact_to_scores(M, "kx")
    for d in range(1, 7):
        heads = [h for h in range(7) if h != d]
        assert numpy.log(numpy.exp(S[heads, d]).sum()) == pytest.approx(0.0, abs=1e-9)
    numpy.testing.assert_allclose(impact_to_scores(M, "raw"), M.T)
    sym = impact_to_scores(M, "symmetric")
    numpy.testing.assert_allclose(sym[1:, 1:], (M + M.T)[1:, 1:])
    prior = impact_to_scores(M, "symmetric_prior", adjacent=0.0, right=0.0)
    words = prior[1:, 1:][~numpy.eye(6, dtype=bool)]
    assert abs(words.mean()) < 1e-9 and words.std() == pytest.approx(1.0)  # z-scored
    assert numpy.all(prior[0] == 0) and numpy.all(prior[:, 0] == 0)
    bonus = impact_to_scores(M, "symmetric_prior", adjacent=2.0, right=1.0) - prior
    assert bonus[3, 2] == pytest.approx(3.0) and bonus[2, 3] == pytest.approx(2.0) and bonus[4, 2] == 0
    # the root-word bonus: only the arcs headed by the given root, never its diagonal
    hub = impact_to_scores(M, "symmetric_prior", adjacent=0.0, right=0.0, hub=3.0, root=4) - prior
    assert numpy.allclose(hub[4, [1, 2, 3, 5, 6]], 3.0) and hub[4, 4] == 0
    assert numpy.allclose(numpy.delete(hub, 4, axis=0), 0.0)
    assert numpy.allclose(impact_to_scores(M, "symmetric_prior", adjacent=0.0, right=0.0, hub=3.0), prior)
    assert impact_to_scores(numpy.zeros((2, 2)), "symmetric_prior").max() == 0
    for bad in (numpy.zeros((2, 3)), numpy.zeros(3)):
        with pytest.raises(KxError):
            impact_to_scores(bad, "kx")
    with pytest.raises(KxError):
        impact_to_scores(M, "nope")


def test_predict_root_strategies():
    M = numpy.zeros((5, 5))
    M[0, 2] = 5.0  # ROOT row points at word 2
    M[1:, 3] = 1.0  # masking word 3 moves every other word
    M[3, 3] = 0.0
    M[4, 1:] = 0.7  # word 4 is moved most by the others
    M[4, 4] = 0.0
    assert predict_root(M, "root_row") == 2
    assert predict_root(M, "in_degree") == 3
    assert predict_root(M, "out_degree") == 4
    assert 1 <= predict_root(M, "centrality") <= 4
    words = ["a", "b", ".", "d"]
    assert predict_root(M, "in_degree", words=words) != 3  # punctuation is not a candidate
    assert predict_root(M, "in_degree", words=["!", "?", ".", ";"]) == 3  # unless all are
    with pytest.raises(KxError):
        predict_root(M, "in_degree", words=["a"])
    assert predict_root(numpy.zeros((1, 1)), "in_degree") == 0
    assert predict_root(numpy.zeros((2, 2)), "root_row") == 1
    with pytest.raises(KxError):
        predict_root(M, "nope")


def test_benchmark_runs_and_agrees_with_the_loop(backbone):
    from kx_spacy.cli.bench_perturbed import format_table, run_benchmark

    result = run_benchmark(backbone, [SENTS[1], SENTS[3]], batch_size=64, progress=False)
    loop, official, kx = result["rows"]
    assert loop["sentences"] == official["sentences"] == 2
    assert official["max_abs_diff"] < 1e-5 and official["head_agreement"] == 1.0
    assert all(r["sent_per_s"] > 0 for r in result["rows"])
    assert "speed-up" in format_table(result)


def test_several_layer_selections_from_one_pass_equal_separate_runs(backbone):
    from kx_spacy.perturbed.impact import compute_impacts_layers

    sents = [["the", "cat", "sat", "on", "it"], ["x"], [], ["ab", "c"]]
    sets = [1, -1, [1, 2]]
    for mode in ("kx", "official"):
        multi = compute_impacts_layers(backbone, sents, sets, mode=mode)
        assert len(multi) == 3
        for k, sel in enumerate(sets):
            single = compute_impacts(backbone, sents, mode=mode, layers=sel)
            for a, b in zip(multi[k], single):
                assert a.shape == b.shape and numpy.allclose(a, b, atol=1e-6)
        assert not numpy.allclose(multi[0][0], multi[1][0])  # the layers differ
    with pytest.raises(KxError):
        compute_impacts_layers(backbone, sents, [])


def test_masking_effects(backbone):
    from kx_spacy.perturbed.impact import masking_effects

    eff = masking_effects(backbone, [["the", "cat", "sat"], ["x"], [], ["a", " ", "b"]])
    assert [e.shape for e in eff] == [(3,), (1,), (0,), (3,)]
    assert (eff[0] > 0).all() and eff[1][0] == 0.0
    assert eff[3][1] == 0.0 and eff[3][0] > 0  # a word without pieces has no effect
    again = masking_effects(backbone, [["x"], ["the", "cat", "sat"]])
    assert numpy.allclose(again[1], eff[0], atol=1e-6)  # batching does not change results
    with pytest.raises(KxError):
        masking_effects(backbone, [["a", 3]])


def test_scored_root_prefers_early_long_rare_words_and_checks_its_inputs():
    from kx_spacy.perturbed.impact import ScoredRoot, make_scored_root, root_features

    M = numpy.zeros((5, 5))
    words = ["I", "watched", "the", "."]
    ranks = [1045, 3427, 1996, 1012]
    default = make_scored_root()
    assert default.needs == ("piece_ranks", "words")
    assert predict_root(M, default, words, piece_ranks=ranks) == 2
    assert predict_root(M, "scored", words, piece_ranks=ranks) == 2
    # position alone: the first word; punctuation never, unless every word is
    assert predict_root(M, ScoredRoot({"log_position": -1.0}), words) == 1
    assert predict_root(M, ScoredRoot({"log_position": 1.0}), words) == 3
    # an impact feature: masking word 3 moves every other word
    M2 = M.copy()
    M2[1:, 3] = 1.0
    M2[3, 3] = 0.0
    assert predict_root(M2, ScoredRoot({"in_degree": 1.0}), words) == 3
    feats = root_features(M2, words, piece_ranks=ranks, effects=[0.1, 0.2, 0.3, 0.4])
    assert set(feats) == {"centrality", "in_degree", "out_degree", "root_row", "masking_effect",
                          "log_position", "log_length", "log_piece_rank"}
    assert all(v.shape == (4,) for v in feats.values())
    with pytest.raises(KxError, match="piece_ranks"):
        predict_root(M, default, words)
    with pytest.raises(KxError, match="unknown features"):
        ScoredRoot({"verbness": 1.0})
    with pytest.raises(KxError, match="every weight is 0"):
        make_scored_root(log_position=0.0, log_length=0.0, log_piece_rank=0.0)
    with pytest.raises(KxError, match="finite"):
        ScoredRoot({"centrality": float("nan")})
    with pytest.raises(KxError):
        root_features(M, words, piece_ranks=[1, 2])
    assert predict_root(numpy.zeros((1, 1)), default) == 0
    assert predict_root(numpy.zeros((2, 2)), default, ["a"]) == 1
