"""``kx_spacy.Seq2SeqGenerator.v1``: the thinc model of ``kx_generator``.

A thinc ``Model`` that owns

* ``tok2vec`` (ref and only layer): the encoder states, one vector per token, e.g.
  ``spacy-transformers.TransformerListener.v1`` with mean pooling over the word pieces. In
  training it receives the transformer pipe's outputs and backpropagates into it; at
  inference it reads ``doc._.trf_data`` (the encoder never runs twice);
* the decoder, a pure-torch ``Seq2SeqDecoder`` (``models/seq2seq_decoder.py``) held in a
  thinc ``PyTorchShim``, so thinc's optimizer updates it and ``to_bytes`` saves it. It is
  built by :func:`build_decoder` once the target vocabulary and the encoder width are known
  (``initialize``, or before loading weights).

``model(docs)`` runs ``tok2vec`` only; the pipe drives the decoder (teacher forcing, decoding).
"""
from __future__ import annotations

from typing import List

from spacy.util import registry
from thinc.api import Model

from ..errors import GeneratorConfigError

ATTENTIONS = ("softmax", "linear")


@registry.architectures("kx_spacy.Seq2SeqGenerator.v1")
def build_seq2seq_generator(
    tok2vec: Model,
    output_layer,
    d_model: int = 256,
    n_layers: int = 2,
    n_heads: int = 4,
    mlp_ratio: float = 4.0,
    dropout: float = 0.1,
    attention: str = "softmax",
    feature_map: str = "elu",
) -> Model:
    """A transformer decoder with cross-attention over ``tok2vec``'s token vectors.

    tok2vec (Model[List[Doc], List[Floats2d]]): the encoder states (a transformer listener).
    output_layer (OutputLayerSpec): kx_spacy.SoftmaxOutput.v1, SelfTerminatingOutput.v1 or
        NonMonotonicSelfTerminatingOutput.v1.
    d_model, n_layers, n_heads (int): decoder size (d_model divisible by n_heads).
    mlp_ratio (float): MLP width / d_model.
    dropout (float): dropout in training.
    attention (str): "softmax" (KV-cache decoding) or "linear" (causal linear attention,
        O(1) recurrent state per step).
    feature_map (str): linear attention's feature map ("elu", "relu", ...).
    RETURNS (Model): the model (its decoder is built in the pipe's ``initialize``).
    """
    if attention not in ATTENTIONS:
        raise GeneratorConfigError(f"attention must be one of {ATTENTIONS}, got {attention!r}.")
    for name, value in (("d_model", d_model), ("n_layers", n_layers), ("n_heads", n_heads)):
        if int(value) < 1:
            raise GeneratorConfigError(f"{name} must be ≥ 1, got {value}.")
    if d_model % n_heads:
        raise GeneratorConfigError(f"d_model {d_model} must be divisible by n_heads {n_heads}.")
    if not 0.0 <= float(dropout) < 1.0:
        raise GeneratorConfigError(f"dropout must lie in [0, 1), got {dropout}.")
    if not hasattr(output_layer, "build") or not hasattr(output_layer, "kind"):
        raise GeneratorConfigError("output_layer must be a registered kx_spacy output layer (e.g. kx_spacy.SelfTerminatingOutput.v1).")
    model = Model(
        "kx_seq2seq_generator",
        _forward,
        init=_init,
        layers=[tok2vec],
        refs={"tok2vec": tok2vec},
        attrs={
            "d_model": int(d_model), "n_layers": int(n_layers), "n_heads": int(n_heads),
            "mlp_ratio": float(mlp_ratio), "dropout": float(dropout), "attention": attention,
            "feature_map": feature_map, "output_kind": output_layer.kind,
            "epsilon": output_layer.epsilon,
        },
    )
    model.attrs["output_spec"] = output_layer  # not serialisable: skipped by to_bytes
    return model


def _init(model: Model, X=None, Y=None) -> None:
    model.get_ref("tok2vec").initialize(X=X)


def _forward(model: Model, docs, is_train: bool):
    return model.get_ref("tok2vec")(docs, is_train)


def build_decoder(model: Model, *, vocab_size: int, memory_width: int, pad_id: int, eos_id: int, never_ids) -> None:
    """Create the torch decoder of ``model`` for the target vocabulary (idempotent)."""
    from thinc.api import PyTorchShim

    from ..models.seq2seq_decoder import Seq2SeqDecoder

    a = model.attrs
    key = f"{vocab_size}x{memory_width}"
    if model.shims and a.get("_built_for") == key:
        return
    out = a["output_spec"].build(a["d_model"], vocab_size, eos_id, never_ids)
    attention_kwargs = {"feature_map": a["feature_map"]} if a["attention"] == "linear" else {}
    decoder = Seq2SeqDecoder(
        vocab_size, memory_width, out, d_model=a["d_model"], n_layers=a["n_layers"], n_heads=a["n_heads"],
        mlp_ratio=a["mlp_ratio"], dropout=a["dropout"], attention=a["attention"],
        attention_kwargs=attention_kwargs, pad_id=pad_id,
    )
    shim = PyTorchShim(decoder)
    model.shims.clear()
    model.shims.append(shim)
    a["_built_for"] = key


def get_decoder(model: Model):
    """The torch decoder of ``model`` (None before :func:`build_decoder`)."""
    return model.shims[0]._model if model.shims else None
