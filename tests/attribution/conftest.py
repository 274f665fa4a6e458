"""Fixtures for the attribution tests: tiny transformer pipelines with a listening textcat
whose head has random weights (so scores vary across inputs)."""
import pytest

TEXTS = [
    "the movie was good",
    "the film was terrible and boring",
    "i liked this story very much",
    "awful acting",
    "a quick brown fox jumps over the lazy dog",
]


def cats_for(i, labels=("POS", "NEG")):
    return {labels[0]: float(i % 2 == 0), labels[1]: float(i % 2 == 1)}


def build(tiny_mlm_dir, *, exclusive=True, seed=0, scale=1.0, **config):
    from kx_spacy.attribution.textcat import add_textcat
    from kx_spacy.testing import make_pipeline

    nlp = make_pipeline("en", tiny_mlm_dir)
    add_textcat(
        nlp,
        [(t, cats_for(i)) for i, t in enumerate(TEXTS)],
        exclusive=exclusive,
        random_seed=seed,
        random_scale=scale,
        **config,
    )
    return nlp


@pytest.fixture
def textcat_nlp(tiny_mlm_dir):
    """Transformer + exclusive textcat (mean pooling, random head)."""
    return build(tiny_mlm_dir)


@pytest.fixture
def multilabel_nlp(tiny_mlm_dir):
    """Transformer + textcat_multilabel (mean + first pooling, random head)."""
    return build(tiny_mlm_dir, exclusive=False, reductions=("mean", "first"))


@pytest.fixture
def make_textcat_nlp(tiny_mlm_dir):
    """Factory: make_textcat_nlp(exclusive=True, **textcat_config) -> pipeline."""
    return lambda **kwargs: build(tiny_mlm_dir, **kwargs)


@pytest.fixture
def texts():
    return list(TEXTS)


@pytest.fixture(scope="module")
def shared_textcat_nlp(tiny_mlm_dir):
    """Like textcat_nlp, built once per test module: do not modify it."""
    return build(tiny_mlm_dir)
