"""Thinc architectures around kx_spacy's pure-torch models (thin wrappers, registered).

* ``kx_spacy.LinearAttentionEncoder.v1``: a tok2vec (Docs → one vector per token): an embedding
  layer (e.g. ``spacy.MultiHashEmbed.v2``) followed by a stack of pre-norm transformer blocks
  with linear (or, with ``attention = "softmax"``, SDPA) attention. Usable wherever spaCy takes a
  tok2vec: tagger, parser, ner, textcat, or a ``tok2vec`` pipe that others listen to.
* ``kx_spacy.LinearAttentionDecoder.v1``: the causal stack as a thinc layer over token vectors
  (List[Floats2d] → List[Floats2d]; position i sees positions ≤ i), e.g. the ``encode`` layer of
  ``spacy.Tok2Vec.v2`` for a left-to-right encoder. Its torch module (``get_torch_module``) has
  ``init_state`` / ``step`` for step-by-step decoding.

Torch is imported when a model is built, not when this module is imported.
"""
from typing import Any, Callable, List, Optional, Tuple

from spacy.util import registry
from thinc.api import Model, chain

__all__ = ["build_linear_attention_encoder", "build_linear_attention_decoder", "get_torch_module"]


@registry.architectures("kx_spacy.LinearAttentionEncoder.v1")
def build_linear_attention_encoder(
    embed: Model,
    width: int,
    depth: int = 2,
    n_heads: int = 4,
    attention: str = "linear",
    feature_map: str = "elu",
    mlp_ratio: float = 2.0,
    dropout: float = 0.1,
    positions: str = "sinusoidal",
    chunk_size: int = 64,
    output_norm: bool = False,
    kernel: str = "torch",
) -> Model:
    """A tok2vec: ``embed`` then a non-causal attention stack over each doc's tokens.

    embed (Model[List[Doc], List[Floats2d]]): the token embedding; its width must be ``width``.
    width (int): model width (= embedding width = output width).
    depth (int): number of transformer blocks.
    n_heads (int): attention heads (width must be divisible by it).
    attention (str): "linear" or "softmax" (the SDPA twin, same parameters).
    feature_map (str): a registered feature map ("elu", "relu", "identity", "separate_softmax").
    mlp_ratio (float): MLP hidden width / width.
    dropout (float): dropout inside the blocks (active in training only).
    positions (str): "sinusoidal" (recommended: non-causal attention alone ignores word order) or
        "none".
    chunk_size (int): unused by the non-causal form; kept so that one config serves both.
    output_norm (bool): RMSNorm on each head's output.
    kernel (str): "torch" (non-causal attention has no fla path).
    RETURNS (Model[List[Doc], List[Floats2d]]): the tok2vec.
    """
    stack = _stack_layer(width, depth, n_heads, attention=attention, causal=False, feature_map=feature_map,
                         mlp_ratio=mlp_ratio, dropout=dropout, positions=positions, chunk_size=chunk_size,
                         output_norm=output_norm, kernel=kernel, name="kx_linear_attention_encoder")
    model = chain(embed, stack)
    model.set_dim("nO", width)
    model.attrs["kx_attention"] = attention
    return model


@registry.architectures("kx_spacy.LinearAttentionDecoder.v1")
def build_linear_attention_decoder(
    width: int,
    depth: int = 2,
    n_heads: int = 4,
    attention: str = "linear",
    feature_map: str = "elu",
    mlp_ratio: float = 2.0,
    dropout: float = 0.1,
    positions: str = "sinusoidal",
    chunk_size: int = 64,
    output_norm: bool = False,
    kernel: str = "torch",
) -> Model:
    """A causal attention stack over token vectors (position i sees positions ≤ i).

    width, depth, n_heads, attention, feature_map, mlp_ratio, dropout, positions, output_norm:
        as in kx_spacy.LinearAttentionEncoder.v1 (the feature map must be causal).
    chunk_size (int): chunk length of the causal parallel form.
    kernel (str): "torch", or "fla" (fla-core on CUDA).
    RETURNS (Model[List[Floats2d], List[Floats2d]]): the layer; ``get_torch_module`` gives its
        AttentionStack (with ``init_state`` / ``step``).
    """
    return _stack_layer(width, depth, n_heads, attention=attention, causal=True, feature_map=feature_map,
                        mlp_ratio=mlp_ratio, dropout=dropout, positions=positions, chunk_size=chunk_size,
                        output_norm=output_norm, kernel=kernel, name="kx_linear_attention_decoder")


def get_torch_module(model: Model):
    """The torch AttentionStack inside an encoder or decoder built here (None if absent)."""
    for node in model.walk():
        module = node.attrs.get("kx_torch_module")
        if module is not None:
            return module
    return None


def _stack_layer(width: int, depth: int, n_heads: int, *, name: str, **kwargs: Any) -> Model:
    from thinc.api import PyTorchWrapper_v2

    from .models.linear_attention import AttentionStack

    attention_kwargs = dict(kwargs)
    if attention_kwargs.get("attention") == "softmax":
        for key in ("feature_map", "chunk_size", "output_norm", "kernel"):
            attention_kwargs.pop(key, None)
    module = AttentionStack(depth, width, n_heads, **attention_kwargs)
    wrapped = PyTorchWrapper_v2(module, convert_inputs=_convert_inputs, convert_outputs=_convert_outputs)
    wrapped.name = name
    wrapped.attrs["kx_torch_module"] = module
    return wrapped


def _convert_inputs(model: Model, Xs: List, is_train: bool) -> Tuple[Any, Callable]:
    """Pad a list of (n_i, width) arrays into (batch, T, width) + a (batch, T) mask."""
    import numpy
    from thinc.api import ArgsKwargs, xp2torch

    ops = model.ops
    lengths = [int(x.shape[0]) for x in Xs]
    width = model.shims[0]._model.d_model
    t = max(lengths, default=0)
    padded = ops.alloc3f(len(Xs), t, width)
    for i, x in enumerate(Xs):
        padded[i, : lengths[i]] = x
    mask = numpy.zeros((len(Xs), t), dtype=bool)
    for i, n in enumerate(lengths):
        mask[i, :n] = True
    mask = ops.asarray(mask, dtype="bool") if not isinstance(padded, numpy.ndarray) else mask
    x_t = xp2torch(padded, requires_grad=is_train)
    m_t = xp2torch(mask)

    def backprop(d_inputs: ArgsKwargs) -> List:
        from thinc.api import torch2xp

        dx = torch2xp(d_inputs.args[0])
        return [dx[i, :n] for i, n in enumerate(lengths)]

    return ArgsKwargs(args=(x_t,), kwargs={"mask": m_t}), backprop


def _convert_outputs(model: Model, inputs_outputs: Tuple, is_train: bool) -> Tuple[List, Callable]:
    """Crop the (batch, T, width) output back to one (n_i, width) array per sequence."""
    from thinc.api import ArgsKwargs, torch2xp, xp2torch

    Xs, y_t = inputs_outputs
    lengths = [int(x.shape[0]) for x in Xs]
    y = torch2xp(y_t)
    Ys = [y[i, :n] for i, n in enumerate(lengths)]

    def backprop(dYs: List) -> ArgsKwargs:
        dy = model.ops.alloc3f(*y.shape)
        for i, d in enumerate(dYs):
            dy[i, : lengths[i]] = d
        return ArgsKwargs(args=(y_t,), kwargs={"grad_tensors": xp2torch(dy)})

    return Ys, backprop
