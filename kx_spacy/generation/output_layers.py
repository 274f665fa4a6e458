"""Output layers of the generator: hidden states -> next-token log-probabilities.

Three layers, all pure torch and all computed in log space:

* ``SoftmaxOutput``: ``log_softmax(W h + b)``; nothing forces it to stop.
* ``SelfTerminatingOutput`` (Welleck et al., EMNLP 2020): with ``z_eos = u_eos·h_t + c``,
  ``β_t = (1 − ε)·σ(z_eos)``, ``α_t = ∏_{s≤t} β_s``, ``p(eos | t) = 1 − α_t`` and every
  other token ``v`` gets ``α_t · softmax(z_V)_v`` (softmax over the non-EOS tokens). Since
  ``α_t ≤ (1 − ε)^t``, ``p(eos | t) ≥ 1 − (1 − ε)^t`` at every step ``t`` (counted from 1).
  ``log α_t = Σ log β_s`` is the running state carried from step to step.
* ``NonMonotonicSelfTerminatingOutput`` (Choi et al., ICLR 2023): ``p(eos | t) =
  (1 − (1 − ε)^t)(1 − σ(z_eos)) + σ(z_eos)``, the other tokens ``(1 − ε)^t (1 − σ(z_eos))
  softmax(z_V)``. Same lower bound, but ``p(eos)`` may go down as well as up, which is why it
  costs (almost) no perplexity. The state is the step index ``t``.

These formulas are those of the reference code (uralik/consistency-lm,
nyu-dl/non-monotonic-self-terminating-lm): the EOS row of the projection gives the
sigmoid's logit, the other rows a softmax over the rest of the vocabulary, the step index
starts at 1 for the first generated token. Here ``log(1 − exp(a))`` is evaluated with the
stable ``log1mexp`` and sums of probabilities with ``logaddexp``, without the clamping to
1e-20 that the reference code uses.

Every layer has the same API:

* ``forward(hidden)``: teacher forcing, ``hidden`` (B, T, H) -> log-probs (B, T, V) for steps
  1..T.
* ``initial_state(batch_size, device)`` and ``step(hidden_t, state)``: incremental decoding,
  ``hidden_t`` (B, H) -> (log-probs (B, V), new state). States are (B,) float tensors, so a
  beam search reorders them with ``state[index]``.
* ``lower_bound(t)``: the guaranteed ``p(eos | t)`` (0 for softmax).

``never_ids`` (the generator's PAD, BOS and UNK) get probability 0 (log-prob −inf) in every
layer. In the ST / NMST layers they are dropped from the softmax over the non-EOS tokens only:
p(eos) is the sigmoid's, untouched, so the bound p(eos | t) ≥ 1 − (1 − ε)^t still holds and
the non-EOS mass 1 − p(eos) is shared among the tokens that can be produced. The softmax
layer renormalises over every producible token, EOS included (it has no bound to keep).

Registered builders (``registry.misc``) return an :class:`OutputLayerSpec`; the generator
builds the torch module once it knows the vocabulary: ``spec.build(hidden, n_vocab, eos_id,
never_ids)``. The torch modules live in ``kx_spacy/models/stop_safe_output.py`` (re-exported
here on first access, so importing this module imports no torch).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

from spacy.util import registry

from ..errors import GeneratorConfigError

KINDS = ("softmax", "st", "nmst")


def check_epsilon(epsilon: float) -> float:
    """Validate ε: a float strictly inside (0, 1) (see kx_spacy.models.stop_safe_output)."""
    from ..models.stop_safe_output import check_epsilon as _check

    return _check(epsilon)



_TORCH_NAMES = ("log1mexp", "SoftmaxOutput", "SelfTerminatingOutput", "NonMonotonicSelfTerminatingOutput", "LAYERS",
                "INIT_EOS_BIAS")


def __getattr__(name):  # PEP 562: the torch modules, imported on first use
    if name in _TORCH_NAMES:
        from ..models import stop_safe_output

        return getattr(stop_safe_output, name)
    raise AttributeError(name)


@dataclass(frozen=True)
class OutputLayerSpec:
    """What a registered output layer stands for, before the vocabulary is known.

    kind (str): "softmax", "st" or "nmst".
    epsilon (float or None): ε of the ST / NMST layers.
    """

    kind: str
    epsilon: Optional[float] = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise GeneratorConfigError(f"Unknown output layer kind {self.kind!r}; expected one of {KINDS}.")
        if self.kind != "softmax":
            check_epsilon(self.epsilon)

    def build(self, hidden_size: int, vocab_size: int, eos_id: int, never_ids: Sequence[int] = ()):
        """The torch module for a vocabulary of ``vocab_size`` with EOS at ``eos_id``."""
        from ..models.stop_safe_output import LAYERS

        cls = LAYERS[self.kind]
        if self.kind == "softmax":
            return cls(hidden_size, vocab_size, eos_id, never_ids)
        return cls(hidden_size, vocab_size, eos_id, never_ids, epsilon=self.epsilon)

    def termination_bound(self, length: Optional[int] = None) -> "TerminationBound":
        """The stopping guarantee this layer gives (see :func:`termination_bound`)."""
        return termination_bound(self.epsilon if self.kind != "softmax" else None, length)


@dataclass(frozen=True)
class TerminationBound:
    """What an ST / NMST layer guarantees about stopping.

    epsilon (float or None): ε (None: a softmax layer, no guarantee).
    t_star (int or None): greedy and beam search emit EOS by step t* = ⌈ln 2 / −ln(1 − ε)⌉
        (p(eos | t*) ≥ 1/2, so EOS is the most likely token).
    length (int or None): the L asked about.
    sampling_tail (float or None): P(length > L) ≤ (1 − ε)^{L(L+1)/2} for ancestral, top-k
        and nucleus sampling with EOS kept (1.0 for softmax).
    """

    epsilon: Optional[float]
    t_star: Optional[int]
    length: Optional[int]
    sampling_tail: Optional[float]

    def to_dict(self) -> dict:
        return {"epsilon": self.epsilon, "t_star": self.t_star, "length": self.length,
                "sampling_tail": self.sampling_tail}


def t_star(epsilon: float) -> int:
    """t*(ε) = ⌈ln 2 / −ln(1 − ε)⌉: greedy / beam search with an ST or NMST layer stop by it."""
    eps = check_epsilon(epsilon)
    value = math.log(2.0) / -math.log1p(-eps)
    t = math.ceil(value)
    # guard the ceiling against rounding: (1 − ε)^t must be ≤ 1/2
    while t * math.log1p(-eps) > -math.log(2.0):
        t += 1
    return max(t, 1)


def termination_bound(epsilon: Optional[float], length: Optional[int] = None) -> TerminationBound:
    """The stopping guarantee of an ST / NMST layer with ``epsilon`` (None: softmax).

    epsilon (float or None): ε in (0, 1); None for a softmax layer (no guarantee).
    length (int or None): L for the sampling tail P(length > L) ≤ (1 − ε)^{L(L+1)/2}.
    RETURNS (TerminationBound): t* and the tail bound.
    """
    if length is not None and int(length) < 0:
        raise GeneratorConfigError(f"length must be ≥ 0, got {length}.")
    if epsilon is None:
        return TerminationBound(None, None, length, 1.0 if length is not None else None)
    eps = check_epsilon(epsilon)
    tail = None
    if length is not None:
        L = int(length)
        tail = math.exp(L * (L + 1) / 2 * math.log1p(-eps))
    return TerminationBound(eps, t_star(eps), length, tail)


# ------------------------------------------------------------------ registered builders
@registry.misc("kx_spacy.SoftmaxOutput.v1")
def make_softmax_output() -> OutputLayerSpec:
    """kx_spacy.SoftmaxOutput.v1: a plain softmax output layer.

    RETURNS (OutputLayerSpec): the layer to build once the vocabulary is known.
    """
    return OutputLayerSpec("softmax")


@registry.misc("kx_spacy.SelfTerminatingOutput.v1")
def make_self_terminating_output(epsilon: float = 1e-3) -> OutputLayerSpec:
    """kx_spacy.SelfTerminatingOutput.v1: Welleck et al. (2020)'s ST layer.

    epsilon (float): ε in (0, 1); greedy decoding stops by ⌈ln 2 / −ln(1 − ε)⌉ steps.
    RETURNS (OutputLayerSpec): the layer to build once the vocabulary is known.
    """
    return OutputLayerSpec("st", check_epsilon(epsilon))


@registry.misc("kx_spacy.NonMonotonicSelfTerminatingOutput.v1")
def make_non_monotonic_output(epsilon: float = 1e-3) -> OutputLayerSpec:
    """kx_spacy.NonMonotonicSelfTerminatingOutput.v1: Choi et al. (2023)'s NMST layer.

    epsilon (float): ε in (0, 1); same stopping bound as the ST layer.
    RETURNS (OutputLayerSpec): the layer to build once the vocabulary is known.
    """
    return OutputLayerSpec("nmst", check_epsilon(epsilon))
