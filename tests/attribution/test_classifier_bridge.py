"""The thinc-head bridge: scores equal predict, gradients equal finite differences, state kept."""
import numpy
import pytest

from kx_spacy.errors import ClassifierNotListeningError, MissingClassifierError, UnsupportedClassifierError



def _hidden(nlp, docs, grad_input=False):
    """Per doc: (embeds leaf, hidden) from the stored word pieces."""
    import torch

    from kx_spacy.backbone import Backbone

    bb = Backbone.from_nlp(nlp)
    out = []
    for doc in docs:
        wp = bb.doc_wordpieces(doc)
        ids = torch.as_tensor(wp.input_ids)
        mask = torch.as_tensor(wp.attention_mask)
        emb = bb.input_embeddings(ids).clone().requires_grad_(grad_input)
        with torch.enable_grad():
            hidden = bb.encode(inputs_embeds=emb, attention_mask=mask, grad=grad_input)
        out.append((emb, mask, hidden))
    return bb, out


@pytest.mark.parametrize(
    "exclusive,config",
    [
        (True, {"reductions": ("mean",)}),
        (False, {"reductions": ("mean", "first")}),
        (True, {"architecture": "ensemble"}),
        (False, {"architecture": "cnn"}),
    ],
)
def test_scores_equal_predict(make_textcat_nlp, texts, exclusive, config):
    from kx_spacy.attribution.classifier_bridge import ClassifierBridge

    nlp = make_textcat_nlp(exclusive=exclusive, **config)
    name = "textcat" if exclusive else "textcat_multilabel"
    docs = list(nlp.pipe(texts))
    bridge = ClassifierBridge(nlp, name)
    _, per_doc = _hidden(nlp, docs)
    scores = bridge.scores(docs, [h for _, _, h in per_doc]).numpy()
    expected = nlp.get_pipe(name).predict(docs)
    numpy.testing.assert_allclose(scores, expected, atol=2e-5)
    assert scores.std() > 1e-3  # the random head really discriminates


@pytest.mark.parametrize("exclusive", [True, False])
def test_gradient_matches_finite_differences(make_textcat_nlp, exclusive):
    import torch

    from kx_spacy.attribution.classifier_bridge import ClassifierBridge

    nlp = make_textcat_nlp(exclusive=exclusive, reductions=("mean", "last"), scale=0.3)
    name = "textcat" if exclusive else "textcat_multilabel"
    doc = nlp("the film was terrible and boring")
    bridge = ClassifierBridge(nlp, name)
    bb, [(emb, mask, hidden)] = _hidden(nlp, [doc], grad_input=True)
    label = 1
    with torch.enable_grad():
        score = bridge.scores([doc], [hidden])[0, label]
        (grad,) = torch.autograd.grad(score, emb)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        direction = torch.randn(emb.shape, generator=gen)
        analytic = float((grad * direction).sum())
        h = 1e-4  # embeddings are ~0.02 in size: a small step (float32 still resolves it)
        values = []
        for sign in (1.0, -1.0):
            e = (emb.detach() + sign * h * direction).requires_grad_(False)
            hid = bb.encode(inputs_embeds=e, attention_mask=mask)
            values.append(float(bridge.scores([doc], [hid.clone()])[0, label]))
        numeric = (values[0] - values[1]) / (2 * h)
        assert abs(numeric) > 1e-3  # a real slope, not float32 noise
        assert abs(analytic - numeric) <= 0.02 * abs(numeric) + 1e-4, (analytic, numeric)


def test_state_restored(make_textcat_nlp, texts):
    import torch

    from kx_spacy.attribution.classifier_bridge import ClassifierBridge
    from kx_spacy.backbone import Backbone

    nlp = make_textcat_nlp(architecture="ensemble")  # has a Dropout layer
    pipe = nlp.get_pipe("textcat")
    # What TextCategorizer.update and a frozen-transformer config leave behind.
    from thinc.api import set_dropout_rate

    set_dropout_rate(pipe.model, 0.3)
    bridge = ClassifierBridge(nlp, "textcat")
    for node in bridge.grad_nodes:
        node.attrs["grad_factor"] = 0.0
    node_with_grad = next(n for n in pipe.model.walk() if "W" in n.param_names and n.has_param("W"))
    marker = numpy.full(node_with_grad.get_param("W").shape, 7.0, dtype="f")
    node_with_grad.set_grad("W", marker.copy())
    listener = bridge.listeners[0]
    listener._batch_id, listener._outputs, listener._backprop = 123, ["x"], None
    module = Backbone.from_nlp(nlp).module
    module.train()

    docs = list(nlp.pipe(texts[:2]))
    _, per_doc = _hidden(nlp, docs, grad_input=True)
    with torch.enable_grad():
        s = bridge.scores(docs, [h for _, _, h in per_doc])[:, 0].sum()
        g = torch.autograd.grad(s, [e for e, _, _ in per_doc])
    assert all(float(x.abs().sum()) > 0 for x in g)  # grad_factor 0 did not zero it

    dropouts = {n.attrs["dropout_rate"] for n in pipe.model.walk() if "dropout_rate" in n.attrs}
    assert dropouts == {0.3}
    assert all(n.attrs["grad_factor"] == 0.0 for n in bridge.grad_nodes)
    assert (listener._batch_id, listener._outputs, listener._backprop) == (123, ["x"], None)
    numpy.testing.assert_array_equal(node_with_grad.get_grad("W"), marker)
    assert not any(n.has_grad(p) for n in pipe.model.walk() for p in n.param_names if n is not node_with_grad)
    assert module.training
    assert all(p.grad is None for p in module.parameters())


def test_bad_classifier(en_nlp):
    from kx_spacy.attribution.classifier_bridge import ClassifierBridge

    with pytest.raises(MissingClassifierError):
        ClassifierBridge(en_nlp, "textcat")
    en_nlp.add_pipe("sentencizer")
    with pytest.raises(UnsupportedClassifierError):
        ClassifierBridge(en_nlp, "sentencizer")
    en_nlp.add_pipe("textcat")  # default config: its own tok2vec, no listener
    with pytest.raises(ClassifierNotListeningError):
        ClassifierBridge(en_nlp, "textcat")
