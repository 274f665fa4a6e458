"""kx_spacy.LinearAttentionEncoder.v1 / LinearAttentionDecoder.v1 as spaCy architectures."""
import numpy
import pytest
import spacy
from spacy.training import Example
from thinc.api import Adam, Config

SENTS = [
    ("I like green apples", ["PRON", "VERB", "ADJ", "NOUN"]),
    ("They eat red fish", ["PRON", "VERB", "ADJ", "NOUN"]),
    ("We saw big dogs today", ["PRON", "VERB", "ADJ", "NOUN", "ADV"]),
]

TAGGER_CFG = """
[model]
@architectures = "spacy.Tagger.v2"
nO = null

[model.tok2vec]
@architectures = "kx_spacy.LinearAttentionEncoder.v1"
width = 32
depth = 1
n_heads = 2
attention = "{attention}"
mlp_ratio = 2.0
dropout = 0.0

[model.tok2vec.embed]
@architectures = "spacy.MultiHashEmbed.v2"
width = 32
attrs = ["NORM", "PREFIX", "SUFFIX", "SHAPE"]
rows = [500, 250, 250, 250]
include_static_vectors = false
"""


def _tagger_nlp(attention):
    nlp = spacy.blank("en")
    cfg = Config().from_str(TAGGER_CFG.replace("{attention}", attention))
    nlp.add_pipe("tagger", config=cfg)
    examples = [Example.from_dict(nlp.make_doc(t), {"tags": tags}) for t, tags in SENTS]
    return nlp, examples


def _scores(nlp, texts):
    tagger = nlp.get_pipe("tagger")
    return [numpy.asarray(s) for s in tagger.model.predict([nlp.make_doc(t) for t in texts])]


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["linear", "softmax"])
def test_encoder_as_tagger_tok2vec_trains_and_round_trips(attention):
    nlp, examples = _tagger_nlp(attention)
    nlp.initialize(lambda: examples)
    optimizer = Adam(0.01)
    losses = []
    for _ in range(12):
        step = {}
        nlp.update(examples, sgd=optimizer, losses=step)
        losses.append(step["tagger"])
    assert losses[-1] < 0.6 * losses[0], losses
    texts = [t for t, _ in SENTS] + ["", "apples"]
    docs = list(nlp.pipe(texts))
    assert len(docs[3]) == 0 and docs[4][0].tag_
    before = _scores(nlp, texts)
    nlp2, _ = _tagger_nlp(attention)
    nlp2.get_pipe("tagger").add_label("PRON")  # labels come from the bytes
    nlp2.from_bytes(nlp.to_bytes())
    after = _scores(nlp2, texts)
    for a, b in zip(before, after):
        numpy.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_decoder_is_causal_and_exposes_the_torch_stack():
    import torch

    from kx_spacy.architectures import get_torch_module

    model = spacy.registry.resolve(
        {"m": {"@architectures": "kx_spacy.LinearAttentionDecoder.v1", "width": 16, "depth": 1, "n_heads": 2,
               "dropout": 0.0}}
    )["m"]
    rng = numpy.random.default_rng(0)
    x = rng.standard_normal((7, 16)).astype("float32")
    y_full = model.predict([x])[0]
    y_prefix = model.predict([x[:4]])[0]
    numpy.testing.assert_allclose(y_full[:4], y_prefix, atol=1e-5)   # the future does not leak
    assert model.predict([]) == []
    stack = get_torch_module(model)
    assert stack.causal
    state = stack.init_state(1)
    with torch.no_grad():
        y0, state = stack.step(torch.from_numpy(x[0:1]), state)
    numpy.testing.assert_allclose(y0.numpy()[0], y_full[0], atol=1e-5)


def test_encoder_rejects_a_causal_only_kernel_and_bad_attention():
    from kx_spacy.errors import KxError

    with pytest.raises(KxError):
        spacy.registry.resolve({"m": {"@architectures": "kx_spacy.LinearAttentionDecoder.v1", "width": 16,
                                      "n_heads": 2, "feature_map": "separate_softmax"}})
    with pytest.raises(KxError):
        spacy.registry.resolve({"m": {"@architectures": "kx_spacy.LinearAttentionDecoder.v1", "width": 16,
                                      "n_heads": 2, "attention": "cosine"}})
