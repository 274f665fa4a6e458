"""Tree decoders: optimality against brute force, forced roots, baselines, bad input."""
import functools
import itertools

import numpy
import pytest
from spacy.util import registry

from kx_spacy.errors import InvalidScoresError, KxError
from kx_spacy.perturbed.trees import (
    chu_liu_edmonds,
    eisner,
    is_projective,
    is_tree,
    left_chain,
    right_chain,
    star,
    tree_score,
)


@functools.lru_cache(maxsize=None)
def all_trees(n: int, projective: bool, single_root: bool = True) -> numpy.ndarray:
    """Every tree over n words (heads arrays of length n+1), by enumeration."""
    out = []
    for hs in itertools.product(range(n + 1), repeat=n):
        heads = [-1, *hs]
        if is_tree(heads, single_root=single_root) and (not projective or is_projective(heads)):
            out.append(heads)
    return numpy.array(out, dtype="int64")


def best_scores(scores, trees):
    n = scores.shape[0] - 1
    return scores[trees[:, 1:], numpy.arange(1, n + 1)].sum(axis=1)


def test_enumeration_counts():
    # n^(n-1) single-root labelled trees; projective single-root counts 1, 2, 7, 30, 143
    assert [len(all_trees(n, False)) for n in range(1, 6)] == [n ** (n - 1) for n in range(1, 6)]
    assert [len(all_trees(n, True)) for n in range(1, 6)] == [1, 2, 7, 30, 143]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
@pytest.mark.parametrize("decoder,projective", [(eisner, True), (chu_liu_edmonds, False)])
def test_optimal_against_brute_force(n, decoder, projective):
    rng = numpy.random.default_rng(n)
    trees = all_trees(n, projective)
    n_mats = 12 if n == 6 else 25
    for trial in range(n_mats):
        scores = rng.normal(size=(n + 1, n + 1))
        if trial % 3 == 0:
            scores = numpy.round(scores * 2)  # many ties
        values = best_scores(scores, trees)
        heads = decoder(scores)
        assert heads.dtype == numpy.int64 and heads[0] == -1
        assert is_tree(heads, single_root=True)
        if projective:
            assert is_projective(heads)
        assert tree_score(scores, heads) == pytest.approx(values.max(), abs=1e-9)
        for root in range(1, n + 1):
            forced = decoder(scores, root)
            assert forced[root] == 0 and is_tree(forced, single_root=True)
            allowed = trees[:, root] == 0
            assert tree_score(scores, forced) == pytest.approx(values[allowed].max(), abs=1e-9)


def test_cle_beats_eisner_on_non_projective_optimum():
    # Arcs 1->3 and 2->4 cross; make them (and ROOT->1, 1->2) the best arcs.
    s = numpy.full((5, 5), -5.0)
    s[0, 1] = 3
    s[1, 3] = 3
    s[1, 2] = 3
    s[2, 4] = 3
    cle = chu_liu_edmonds(s)
    assert list(cle) == [-1, 0, 1, 1, 2]
    assert not is_projective(cle)
    eis = eisner(s)
    assert is_projective(eis) and tree_score(s, eis) < tree_score(s, cle)


def test_single_root_differs_from_free_decoding():
    # Every word prefers ROOT; the single-root tree must still put only one word there.
    n = 5
    s = numpy.zeros((n + 1, n + 1))
    s[0, 1:] = 10.0
    for dec in (eisner, chu_liu_edmonds):
        heads = dec(s)
        assert int((heads[1:] == 0).sum()) == 1
    multi = eisner(s, single_root=False)
    assert list(multi) == [-1, 0, 0, 0, 0, 0]
    best_multi = best_scores(s, all_trees(n, True, single_root=False)).max()
    assert tree_score(s, multi) == pytest.approx(best_multi)


def test_multi_root_eisner_brute_force():
    rng = numpy.random.default_rng(7)
    for n in range(1, 6):
        trees = all_trees(n, True, single_root=False)
        for _ in range(10):
            s = rng.normal(size=(n + 1, n + 1))
            heads = eisner(s, single_root=False)
            assert is_tree(heads, single_root=False) and is_projective(heads)
            assert tree_score(s, heads) == pytest.approx(best_scores(s, trees).max())


def test_ties_deterministic_and_valid():
    s = numpy.ones((7, 7))
    for dec in (eisner, chu_liu_edmonds):
        a, b = dec(s), dec(s.copy())
        assert list(a) == list(b) and is_tree(a)


def test_small_and_empty():
    for dec in (eisner, chu_liu_edmonds):
        assert list(dec(numpy.zeros((1, 1)))) == [-1]
        assert list(dec(numpy.zeros((2, 2)))) == [-1, 0]
        assert list(dec(numpy.zeros((2, 2)), 1)) == [-1, 0]
    assert list(right_chain(0)) == [-1] and list(left_chain(0)) == [-1]
    assert list(right_chain(1)) == [-1, 0] and list(left_chain(1)) == [-1, 0]
    assert list(star(1, 1)) == [-1, 0]


def test_baselines():
    assert list(right_chain(4)) == [-1, 2, 3, 4, 0]
    assert list(left_chain(4)) == [-1, 0, 1, 2, 3]
    # forced root: same direction, a real tree, the root on ROOT
    assert list(right_chain(5, 3)) == [-1, 2, 3, 0, 5, 3]
    assert list(left_chain(5, 3)) == [-1, 3, 1, 0, 3, 4]
    assert list(star(4, 2)) == [-1, 2, 0, 2, 2]
    for n in range(1, 8):
        for r in [None, *range(1, n + 1)]:
            for h in (right_chain(n, r), left_chain(n, r)):
                assert is_tree(h) and is_projective(h)
                if r is not None:
                    assert h[r] == 0


def test_forbidden_arcs_neg_inf():
    s = numpy.zeros((4, 4))
    s[0, 2] = -numpy.inf  # word 2 may not be the root
    s[0, 1] = s[0, 3] = -numpy.inf
    s[0, 3] = 0.0
    for dec in (eisner, chu_liu_edmonds):
        heads = dec(s)
        assert heads[3] == 0 and is_tree(heads)


@pytest.mark.parametrize(
    "scores",
    [numpy.zeros((3, 4)), numpy.zeros(3), numpy.zeros((0, 0)), numpy.array([[0, 1], [numpy.nan, 0]]).T],
)
def test_bad_scores(scores):
    for dec in (eisner, chu_liu_edmonds):
        with pytest.raises(InvalidScoresError):
            dec(scores)


def test_bad_root():
    s = numpy.zeros((4, 4))
    for dec in (eisner, chu_liu_edmonds):
        for root in (0, 4, -1, 1.5, True):
            with pytest.raises(KxError):
                dec(s, root)
    with pytest.raises(KxError):
        right_chain(-1)
    with pytest.raises(KxError):
        star(3, None)


def test_registered_decoders():
    rng = numpy.random.default_rng(3)
    s = rng.normal(size=(6, 6))
    names = ["Eisner", "ChuLiuEdmonds", "RightChain", "LeftChain", "Star"]
    for name in names:
        decode = registry.misc.get(f"kx_spacy.{name}.v1")()
        heads = decode(s, None)
        assert is_tree(heads) and len(heads) == 6
        assert decode(s, 2)[2] == 0
    star_decode = registry.misc.get("kx_spacy.Star.v1")()
    assert star_decode(s, None)[int(numpy.argmax(s[0, 1:])) + 1] == 0
    assert list(star_decode(numpy.zeros((1, 1)), None)) == [-1]
    official = registry.misc.get("kx_spacy.Eisner.v1")(single_root=False)
    assert is_tree(official(s, None), single_root=False)


def test_long_sentence_fast():
    import time

    rng = numpy.random.default_rng(0)
    s = rng.normal(size=(121, 121))
    start = time.perf_counter()
    for dec in (eisner, chu_liu_edmonds):
        heads = dec(s)
        assert is_tree(heads)
    assert time.perf_counter() - start < 10.0


def test_positional_prior():
    from kx_spacy.perturbed.trees import positional_prior

    p = positional_prior(4, adjacent=1.0, right=0.5, hub=2.0, root=2)
    assert p.shape == (5, 5)
    assert p[3, 2] == 1.5 and p[2, 3] == 1.0 + 2.0  # adjacent + hub from word 2
    assert p[2, 4] == 2.0 and p[2, 2] == 0.0 and p[0].sum() == 0.0 and p[:, 0].sum() == 0.0
    # with only the right bonus, Eisner on zero scores returns the right chain
    s = numpy.zeros((5, 5)) + positional_prior(4, right=1.0)
    assert list(eisner(s, 4)) == list(right_chain(4))
    assert positional_prior(0).shape == (1, 1) and positional_prior(1).sum() == 0.0
    with pytest.raises(KxError):
        positional_prior(3, hub=1.0, root=5)


def test_decoder_kinds():
    kinds = {name: registry.misc.get(f"kx_spacy.{name}.v1")().kind
             for name in ["Eisner", "ChuLiuEdmonds", "RightChain", "LeftChain", "Star"]}
    assert kinds == {"Eisner": "eisner", "ChuLiuEdmonds": "cle", "RightChain": "baseline",
                     "LeftChain": "baseline", "Star": "baseline"}
