"""kx_attributor: the standard component battery."""
import numpy
import pytest
import spacy
from spacy.tokens import DocBin

from kx_spacy.errors import MissingClassifierError, UnknownLabelError


def _scores(doc):
    return {label: rec["scores"] for label, rec in doc._.kx_attributions.items()}


def test_add_pipe_and_annotations(textcat_nlp, texts):
    from kx_spacy.attribution.attributor import get_attributions

    textcat_nlp.add_pipe("kx_attributor")
    doc = textcat_nlp(texts[1])
    records = get_attributions(doc)
    (label, rec), = records.items()
    assert label == max(doc.cats, key=doc.cats.get)
    assert rec.f_x == pytest.approx(doc.cats[label], abs=1e-5)
    assert [t._.kx_attribution for t in doc] == pytest.approx(rec.scores)
    assert rec.converged and rec.error <= 0.01
    assert rec.to_dict() == doc._.kx_attributions[label]
    assert type(rec).from_dict(rec.to_dict()) == rec


def test_config_settings(textcat_nlp, texts):
    textcat_nlp.add_pipe(
        "kx_attributor",
        config={
            "labels": ["NEG"],
            "quadrature": {"@misc": "kx_spacy.RiemannTrapezoid.v1", "min_steps": 4},
            "baseline": {"@misc": "kx_spacy.ZeroBaseline.v1"},
            "tolerance": 0.05,
            "max_steps": 33,
        },
    )
    doc = textcat_nlp(texts[0])
    rec = doc._.kx_attributions["NEG"]
    assert set(doc._.kx_attributions) == {"NEG"}
    assert rec["quadrature"] == "riemann_trapezoid" and rec["baseline"] == "zero"
    assert rec["steps"] <= 33 and (rec["error"] <= 0.05 or not rec["converged"])


def test_empty_and_one_token_docs(textcat_nlp):
    textcat_nlp.add_pipe("kx_attributor")
    empty = textcat_nlp("")
    assert empty._.kx_attributions == {}
    one = textcat_nlp("good")
    (rec,) = one._.kx_attributions.values()
    assert len(rec["scores"]) == 1
    assert rec["scores"][0] == pytest.approx(rec["f_x"] - rec["f_baseline"], rel=0.011, abs=1e-7)
    docs = list(textcat_nlp.pipe(["", "good", ""]))
    assert [bool(d._.kx_attributions) for d in docs] == [False, True, False]


def test_missing_classifier(en_nlp):
    en_nlp.add_pipe("kx_attributor")
    with pytest.raises(MissingClassifierError):
        en_nlp("the movie was good")


def test_unknown_label(textcat_nlp):
    textcat_nlp.add_pipe("kx_attributor", config={"labels": ["MAYBE"]})
    with pytest.raises(UnknownLabelError):
        textcat_nlp("the movie was good")


def test_bad_settings(textcat_nlp):
    from kx_spacy.errors import AttributionConfigError

    with pytest.raises(AttributionConfigError):
        textcat_nlp.add_pipe("kx_attributor", config={"tolerance": -1})
    with pytest.raises(AttributionConfigError):
        textcat_nlp.add_pipe("kx_attributor", name="a2", config={"max_steps": 2})


def test_long_doc(textcat_nlp):
    textcat_nlp.add_pipe("kx_attributor", config={"max_steps": 128})
    doc = textcat_nlp(" ".join(["the movie was good but the acting was awful ."] * 15))
    (rec,) = doc._.kx_attributions.values()
    assert len(rec["scores"]) == len(doc)
    assert rec["converged"]


def test_pipe_equals_call(textcat_nlp, texts):
    textcat_nlp.add_pipe("kx_attributor")
    called = [_scores(textcat_nlp(t)) for t in texts]
    piped = [_scores(d) for d in textcat_nlp.pipe(texts, batch_size=3)]
    assert [set(c) for c in called] == [set(p) for p in piped]
    for c, p in zip(called, piped):
        for label in c:
            numpy.testing.assert_allclose(c[label], p[label], rtol=1e-3, atol=1e-6)


def test_serialisation_round_trips(textcat_nlp, texts, tmp_path):
    from kx_spacy.attribution.attributor import get_attributions

    textcat_nlp.add_pipe("kx_attributor", config={"labels": ["POS", "NEG"]})
    docs = list(textcat_nlp.pipe(texts[:3]))
    # doc.to_bytes / DocBin keep the records and token scores
    for doc in docs:
        back = spacy.tokens.Doc(textcat_nlp.vocab).from_bytes(doc.to_bytes())
        assert back._.kx_attributions == doc._.kx_attributions
        assert [t._.kx_attribution for t in back] == [t._.kx_attribution for t in doc]
    db = DocBin(store_user_data=True, docs=docs)
    loaded = list(DocBin().from_bytes(db.to_bytes()).get_docs(textcat_nlp.vocab))
    # DocBin's msgpack gives lists back as tuples; the typed records are equal
    assert [get_attributions(d) for d in loaded] == [get_attributions(d) for d in docs]
    # the pipeline saved and loaded gives the same attributions
    textcat_nlp.to_disk(tmp_path / "nlp")
    nlp2 = spacy.load(tmp_path / "nlp")
    assert nlp2.get_pipe("kx_attributor").labels == ["POS", "NEG"]
    for doc, text in zip(docs, texts[:3]):
        other = nlp2(text)
        for label in doc._.kx_attributions:
            numpy.testing.assert_allclose(
                _scores(other)[label], _scores(doc)[label], rtol=1e-3, atol=1e-6
            )


@pytest.mark.slow
def test_n_process_2(textcat_nlp, texts):
    import torch

    # torch's OpenMP pool does not survive fork(): a forked worker that starts a parallel
    # region hangs. One intra-op thread in the parent is the documented workaround.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _check_n_process(textcat_nlp, texts)
    finally:
        torch.set_num_threads(threads)


def _check_n_process(textcat_nlp, texts):
    textcat_nlp.add_pipe("kx_attributor")
    single = [_scores(d) for d in textcat_nlp.pipe(texts)]
    multi = [_scores(d) for d in textcat_nlp.pipe(texts, n_process=2, batch_size=2)]
    assert [set(s) for s in single] == [set(m) for m in multi]
    for s, m in zip(single, multi):
        for label in s:
            numpy.testing.assert_allclose(s[label], m[label], rtol=1e-3, atol=1e-6)
