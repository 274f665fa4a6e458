"""Differentiate a spaCy text classifier's own scores with respect to the transformer output.

A ``textcat`` / ``textcat_multilabel`` pipe listening to the shared transformer is a thinc
model over numpy (or cupy) arrays; the encoder is a torch module. ``ClassifierBridge``
joins them so that ``torch.autograd`` sees one differentiable function:

    hidden states (torch) --[ThincHead autograd Function]--> label scores (torch)

Forward: the hidden states of each doc are wrapped as that doc's ``TransformerData`` and
handed to the classifier the way the transformer pipe does during training
(``listener.receive(batch_id, outputs, callback)``), then ``model.begin_update(docs)`` runs
the classifier's own head. Backward: the classifier's thinc backprop delivers d(hidden) to
the callback, which is returned to torch. No head is re-implemented.

Everything that the call touches is restored afterwards (see ``ClassifierBridge.session``):
dropout rates set inside the model (``TextCategorizer.update`` leaves one behind), the
listeners' ``grad_factor`` (set to 1 for the call, since 0 would make the gradient vanish),
the listeners' ``_batch_id`` / ``_outputs`` / ``_backprop`` and the thinc parameter
gradients that backprop accumulates (the next ``update`` would otherwise apply them).

Trap handled: thinc's ``Softmax`` layer (used by exclusive textcat heads) returns
probabilities but its backprop expects a gradient on the logits, so d(prob) is converted
with ``dlogit_j = p_j (dp_j - sum_k p_k dp_k)`` before it is passed in.
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Sequence, Tuple

import numpy

from ..errors import ClassifierNotListeningError, MissingClassifierError, UnsupportedClassifierError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from spacy.language import Language
    from spacy.tokens import Doc


def _final_layer(model):
    """The node that produces ``model``'s output, looking through chains and resizables."""
    node = model
    while node.layers:
        if ">>" in node.name:
            node = node.layers[-1]
        elif node.name.startswith("resizable"):
            node = node.layers[0]
        else:
            break
    return node


def resolve_classifier(nlp: "Language", name: str):
    """The text classifier pipe ``name`` of ``nlp``, or a clear error."""
    from spacy.pipeline import TextCategorizer

    if name not in nlp.component_names:
        cats = [n for n, p in nlp.components if isinstance(p, TextCategorizer)]
        hint = f" Text classifiers in this pipeline: {', '.join(cats)}." if cats else ""
        raise MissingClassifierError(
            f"kx_attributor explains a text classifier named '{name}', but the pipeline "
            f"has no such pipe (pipes: {', '.join(nlp.component_names) or 'none'}).{hint} "
            f"Add a 'textcat' or 'textcat_multilabel' pipe, or set the attributor's "
            f"'classifier' setting."
        )
    pipe = nlp.get_pipe(name)
    if not isinstance(pipe, TextCategorizer):
        raise UnsupportedClassifierError(
            f"The pipe '{name}' is a {type(pipe).__name__}; kx_attributor explains spaCy's "
            f"'textcat' and 'textcat_multilabel' pipes."
        )
    return pipe


class ClassifierBridge:
    """Run a textcat pipe's thinc model on torch hidden states, differentiably.

    nlp (Language): the pipeline.
    classifier (str): name of the textcat / textcat_multilabel pipe.
    transformer (str): name of the transformer pipe the classifier listens to.
    """

    def __init__(self, nlp: "Language", classifier: str = "textcat", transformer: str = "transformer"):
        from spacy.pipeline.textcat_multilabel import MultiLabel_TextCategorizer
        from spacy_transformers.layers.listener import TransformerListener

        self.pipe = resolve_classifier(nlp, classifier)
        self.name = classifier
        self.model = self.pipe.model
        self.exclusive = not isinstance(self.pipe, MultiLabel_TextCategorizer)
        self.listeners = [
            node
            for node in self.model.walk()
            if isinstance(node, TransformerListener) and node.upstream_name in (transformer, "*")
        ]
        if not self.listeners:
            raise ClassifierNotListeningError(
                f"The classifier '{classifier}' does not listen to the transformer pipe "
                f"'{transformer}' (no TransformerListener in its model), so there is no "
                f"gradient from its scores to the encoder's inputs. Use a textcat whose "
                f"tok2vec is 'spacy-transformers.TransformerListener.v1'."
            )
        self.grad_nodes = [n for n in self.model.walk() if "grad_factor" in n.attrs]
        final = _final_layer(self.model)
        self.logit_backprop = final.name == "softmax"

    @property
    def labels(self) -> Tuple[str, ...]:
        return tuple(self.pipe.labels)

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Zero dropout, grad_factor 1, and restore every touched field on exit."""
        nodes = list(self.model.walk())
        dropout = [(n, n.attrs["dropout_rate"]) for n in nodes if "dropout_rate" in n.attrs]
        factors = [(n, n.attrs["grad_factor"]) for n in self.grad_nodes]
        listener_state = [(l, l._batch_id, l._outputs, l._backprop) for l in self.listeners]
        # thinc has no public call to drop a gradient, so the param server's dict is saved
        # and put back whole (values copied: backprop adds to them in place).
        servers = {id(n._params): n._params for n in nodes}
        grads = {key: {k: v.copy() for k, v in server._grads.items()} for key, server in servers.items()}
        try:
            for n, _ in dropout:
                n.attrs["dropout_rate"] = 0.0
            for n, _ in factors:
                n.attrs["grad_factor"] = 1.0
            yield
        finally:
            for n, rate in dropout:
                n.attrs["dropout_rate"] = rate
            for n, factor in factors:
                n.attrs["grad_factor"] = factor
            for l, batch_id, outputs, backprop in listener_state:
                l._batch_id, l._outputs, l._backprop = batch_id, outputs, backprop
            for key, server in servers.items():
                server._grads = grads[key]

    def scores(self, docs: Sequence["Doc"], hiddens: Sequence["torch.Tensor"]) -> "torch.Tensor":
        """Classifier scores for ``docs`` given each doc's hidden states, differentiable.

        docs (Sequence[Doc]): non-empty docs carrying ``doc._.trf_data`` (for the
            alignment and word pieces); the same doc may appear several times.
        hiddens (Sequence[Tensor[n_spans, L, H]]): per doc, its last hidden states.
        RETURNS (Tensor[B, n_labels]): the scores the classifier's ``predict`` gives.
        """
        return _ThincHead.apply(self, list(docs), *hiddens)


def _make_head_function():
    import torch

    class ThincHead(torch.autograd.Function):
        @staticmethod
        def forward(ctx, bridge: ClassifierBridge, docs: List["Doc"], *hiddens):  # type: ignore[override]
            from spacy_transformers.data_classes import TransformerData
            from spacy_transformers.layers.listener import TransformerListener
            from thinc.api import torch2xp, xp2torch
            from transformers.modeling_outputs import BaseModelOutput

            outputs = []
            for doc, hidden in zip(docs, hiddens):
                trf = doc._.trf_data
                arr = torch2xp(hidden.detach().float().contiguous())
                outputs.append(
                    TransformerData(
                        wordpieces=trf.wordpieces,
                        model_output=BaseModelOutput(last_hidden_state=arr),
                        align=trf.align,
                    )
                )
            received: Dict[int, List[Any]] = {}

            def make_callback(index: int):
                def callback(d_outputs):
                    received[index] = d_outputs
                    return []

                return callback

            batch_id = TransformerListener.get_batch_id(docs)
            with bridge.session():
                for i, listener in enumerate(bridge.listeners):
                    listener.receive(batch_id, outputs, make_callback(i))
                Y, backprop = bridge.model.begin_update(docs)
                Y = bridge.model.ops.asarray2f(Y)
            ctx.bridge = bridge
            ctx.docs = docs
            ctx.outputs = outputs
            ctx.shapes = [h.shape for h in hiddens]
            ctx.meta = (hiddens[0].device, hiddens[0].dtype)
            ctx.Y = Y
            ctx.backprop = backprop
            ctx.received = received
            ctx.make_callback = make_callback
            return xp2torch(Y).to(hiddens[0].device).float()

        @staticmethod
        def backward(ctx, d_scores):  # type: ignore[override]
            from thinc.api import torch2xp, xp2torch

            bridge: ClassifierBridge = ctx.bridge
            dY = torch2xp(d_scores.detach().float().contiguous())
            Y = ctx.Y
            if bridge.logit_backprop:
                dY = Y * (dY - (Y * dY).sum(axis=1, keepdims=True))
            dY = bridge.model.ops.asarray2f(dY)
            with bridge.session():
                from spacy_transformers.layers.listener import TransformerListener

                # begin_update cleared nothing yet: the listeners still hold our callbacks.
                for i, listener in enumerate(bridge.listeners):
                    listener.receive(TransformerListener.get_batch_id(ctx.docs), ctx.outputs, ctx.make_callback(i))
                ctx.backprop(dY)
            device, dtype = ctx.meta
            grads = []
            for j, shape in enumerate(ctx.shapes):
                total = None
                for d_outputs in ctx.received.values():
                    d = xp2torch(d_outputs[j].model_output.last_hidden_state).reshape(shape)
                    total = d if total is None else total + d
                if total is None:
                    import torch

                    total = torch.zeros(shape)
                grads.append(total.to(device=device, dtype=dtype))
            ctx.received.clear()
            return (None, None, *grads)

    return ThincHead


class _LazyHead:
    """Builds the torch autograd Function on first use (no torch import at module import)."""

    _cls = None

    def apply(self, *args):
        if _LazyHead._cls is None:
            _LazyHead._cls = _make_head_function()
        return _LazyHead._cls.apply(*args)


_ThincHead = _LazyHead()
