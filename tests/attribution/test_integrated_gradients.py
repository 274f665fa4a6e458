"""The IG core: quadrature rules, baselines, adaptive refinement, completeness."""
import numpy
import pytest

from kx_spacy.errors import AttributionConfigError, UnknownLabelError


def _run(nlp, docs, classifier="textcat", **kwargs):
    from kx_spacy.attribution.classifier_bridge import ClassifierBridge
    from kx_spacy.attribution.integrated_gradients import integrated_gradients
    from kx_spacy.backbone import Backbone

    return integrated_gradients(Backbone.from_nlp(nlp), ClassifierBridge(nlp, classifier), docs, **kwargs)


QUADS = [
    "kx_spacy.GaussLegendre.v1",
    "kx_spacy.RiemannTrapezoid.v1",
    "kx_spacy.AdaptiveTrapezoid.v1",
    "kx_spacy.AdaptiveSimpson.v1",
]


@pytest.mark.parametrize("name", QUADS)
def test_quadrature_rules_integrate_polynomials(name):
    from spacy.util import registry

    rule = registry.misc.get(name)(min_steps=4)
    levels = rule.levels(64)
    assert len(levels) >= 3
    for alphas, weights in levels:
        assert numpy.all((alphas >= 0) & (alphas <= 1))
        assert weights.sum() == pytest.approx(1.0)
        assert (alphas * weights).sum() == pytest.approx(0.5)  # exact for degree 1
    # finer rules are more exact on a smooth function
    errs = [abs((numpy.exp(a) * w).sum() - (numpy.e - 1)) for a, w in levels]
    assert errs[-1] < errs[0]
    if rule.nested:
        for (a0, _), (a1, _) in zip(levels, levels[1:]):
            assert set(numpy.round(a0, 12)) <= set(numpy.round(a1, 12))


def test_quadrature_config_errors():
    from kx_spacy.attribution.integrated_gradients import GaussLegendre, RiemannTrapezoid

    with pytest.raises(AttributionConfigError):
        GaussLegendre(min_steps=0)
    with pytest.raises(AttributionConfigError):
        RiemannTrapezoid(min_steps=8).levels(4)


@pytest.mark.parametrize(
    "quad,base",
    [(q, "kx_spacy.PadBaseline.v1") for q in QUADS]
    + [("kx_spacy.AdaptiveSimpson.v1", b) for b in ("kx_spacy.MaskBaseline.v1", "kx_spacy.ZeroBaseline.v1")],
)
def test_completeness_reached(shared_textcat_nlp, texts, quad, base):
    from spacy.util import registry

    nlp = shared_textcat_nlp
    docs = list(nlp.pipe(texts))
    results = _run(
        nlp, docs, baseline=registry.misc.get(base)(), quadrature=registry.misc.get(quad)(),
        tolerance=0.01, max_steps=128, keep_pieces=True,
    )
    expected = nlp.get_pipe("textcat").predict(docs)
    labels = nlp.get_pipe("textcat").labels
    for doc, res, exp in zip(docs, results, expected):
        (label, rec), = res.items()
        assert label == labels[int(numpy.argmax(exp))]  # default: the top label
        assert rec.f_x == pytest.approx(float(exp.max()), abs=1e-5)
        assert len(rec.scores) == len(doc)
        assert rec.converged and rec.error <= 0.01
        total = sum(rec.scores)
        assert abs(total - rec.delta) <= 0.01 * abs(rec.delta) + 1e-9
        assert sum(rec.pieces) == pytest.approx(total, rel=1e-9, abs=1e-12)
        assert 1 <= rec.steps <= 128


def test_refinement_needs_more_steps_at_tighter_tolerance(shared_textcat_nlp, texts):
    nlp = shared_textcat_nlp
    docs = list(nlp.pipe(texts))
    loose = _run(nlp, docs, tolerance=0.5)
    tight = _run(nlp, docs, tolerance=1e-5, max_steps=128)
    assert sum(r["POS" if "POS" in r else "NEG"].steps for r in tight) > sum(
        r["POS" if "POS" in r else "NEG"].steps for r in loose
    )
    for r in tight:
        rec = next(iter(r.values()))
        assert rec.error <= 1e-5 or (not rec.converged and rec.steps > 4)


def test_step_cap_reports_unconverged(shared_textcat_nlp):
    from kx_spacy.attribution.integrated_gradients import GaussLegendre

    doc = shared_textcat_nlp("the film was terrible and boring")
    (res,) = _run(shared_textcat_nlp, [doc], tolerance=0.0, max_steps=8, quadrature=GaussLegendre(2))
    rec = next(iter(res.values()))
    assert not rec.converged
    assert rec.steps == 2 + 4 + 8  # every level tried, none reused (Gauss-Legendre)
    assert rec.error > 0


@pytest.mark.parametrize("name", ["kx_spacy.AdaptiveTrapezoid.v1", "kx_spacy.AdaptiveSimpson.v1"])
def test_local_refinement(name):
    """The adaptive rules refine where the integrand is hard and keep every node."""
    from spacy.util import registry

    from kx_spacy.attribution.integrated_gradients import _alpha_key

    rule = registry.misc.get(name)(min_steps=2)
    sharp = lambda a: 1.0 / (1.0 + numpy.exp(-60.0 * (a - 0.8)))  # noqa: E731 - F along the path
    dsharp = lambda a: 60.0 * sharp(a) * (1.0 - sharp(a))  # noqa: E731
    state = rule.start(64)
    seen = []
    while True:
        alphas, weights = rule.current(state)
        assert set(numpy.round(seen, 12)) <= set(numpy.round(alphas, 12))  # nested
        seen = list(alphas)
        err = abs((weights * dsharp(alphas)).sum() - (sharp(1.0) - sharp(0.0)))
        if err < 2e-3:
            break
        phi = {_alpha_key(a): dsharp(a) for a in alphas}
        f = {_alpha_key(a): sharp(a) for a in alphas}
        assert rule.refine(state, phi, f), err
    assert len(alphas) <= 64
    # nodes cluster where F changes: more of them in [0.6, 1] than in [0, 0.4]
    assert ((alphas >= 0.6).sum()) > ((alphas <= 0.4).sum())


def test_trapezoid_reuses_gradients(shared_textcat_nlp):
    from kx_spacy.attribution.integrated_gradients import RiemannTrapezoid

    doc = shared_textcat_nlp("the film was terrible and boring")
    (res,) = _run(shared_textcat_nlp, [doc], tolerance=0.0, max_steps=17, quadrature=RiemannTrapezoid(2))
    assert next(iter(res.values())).steps == 17  # 3 + 2 + 4 + 8 new points


def test_explicit_labels_and_unknown_label(shared_textcat_nlp):
    doc = shared_textcat_nlp("i liked this story very much")
    (res,) = _run(shared_textcat_nlp, [doc], labels=["POS", "NEG"])
    assert set(res) == {"POS", "NEG"}
    # exclusive classes: the two score changes cancel, so do the attributions
    assert res["POS"].delta == pytest.approx(-res["NEG"].delta, abs=1e-5)
    numpy.testing.assert_allclose(res["POS"].scores, -numpy.asarray(res["NEG"].scores), atol=0.02 * abs(res["POS"].delta) + 1e-6)
    with pytest.raises(UnknownLabelError):
        _run(shared_textcat_nlp, [doc], labels=["NOPE"])


def test_f_x_equal_f_baseline_is_defined(make_textcat_nlp):
    # A head with all-zero weights scores every input the same: F(x) == F(x').
    nlp = make_textcat_nlp(scale=0.0)
    doc = nlp("the movie was good")
    (res,) = _run(nlp, [doc])
    rec = next(iter(res.values()))
    assert rec.delta == 0.0
    assert rec.error_kind == "absolute" and rec.error == 0.0 and rec.converged
    assert all(numpy.isfinite(rec.scores))


def test_multilabel(multilabel_nlp, texts):
    docs = list(multilabel_nlp.pipe(texts))
    results = _run(multilabel_nlp, docs, classifier="textcat_multilabel", labels=["POS", "NEG"], max_steps=128)
    for res in results:
        for rec in res.values():
            assert rec.converged and rec.error <= 0.01


def test_user_baseline_function(shared_textcat_nlp):
    import torch

    calls = []

    def half_input(backbone, input_ids, moved):
        calls.append(tuple(input_ids.shape))
        return 0.5 * backbone.input_embeddings(input_ids)

    doc = shared_textcat_nlp("awful acting")
    (res,) = _run(shared_textcat_nlp, [doc], baseline=half_input)
    assert calls and next(iter(res.values())).converged

    def wrong_shape(backbone, input_ids, moved):
        return torch.zeros(3)

    with pytest.raises(AttributionConfigError):
        _run(shared_textcat_nlp, [doc], baseline=wrong_shape)


def test_long_doc_beyond_window(shared_textcat_nlp):
    from kx_spacy.backbone import Backbone

    text = " ".join(["the cat sat on the mat and the dog ran in the park ."] * 12)
    doc = shared_textcat_nlp(text)
    wp = Backbone.from_nlp(shared_textcat_nlp).doc_wordpieces(doc)
    assert wp.input_ids.shape[0] > 1  # several spans
    assert int(wp.attention_mask.sum()) > Backbone.from_nlp(shared_textcat_nlp).max_positions
    (res,) = _run(shared_textcat_nlp, [doc], max_steps=128)
    rec = next(iter(res.values()))
    assert len(rec.scores) == len(doc) and rec.converged


def test_batching_does_not_change_results(shared_textcat_nlp, texts):
    docs = list(shared_textcat_nlp.pipe(texts))
    together = _run(shared_textcat_nlp, docs, batch_size=64)
    apart = _run(shared_textcat_nlp, docs, batch_size=1)
    for a, b in zip(together, apart):
        (ra,), (rb,) = a.values(), b.values()
        numpy.testing.assert_allclose(ra.scores, rb.scores, rtol=1e-3, atol=1e-6)
        assert ra.steps == rb.steps
