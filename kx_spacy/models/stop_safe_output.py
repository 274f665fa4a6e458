"""Output layers for stop-safe decoding: hidden states -> next-token log-probabilities.

Pure torch (no spaCy). See ``kx_spacy/generation/output_layers.py`` for the formulas, the
registered builders and the stopping bound; this module holds the torch modules:
``SoftmaxOutput``, ``SelfTerminatingOutput`` (Welleck et al. 2020) and
``NonMonotonicSelfTerminatingOutput`` (Choi et al. 2023), all computed in log space.

API of every layer: ``forward(hidden)`` (B, T, H) -> (B, T, V) log-probs for steps 1..T;
``initial_state(batch_size, device)`` and ``step(hidden_t, state)`` -> (log-probs (B, V), new
state), states being (B,) float tensors; ``lower_bound(t)``, the guaranteed p(eos | t).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import GeneratorConfigError

INIT_EOS_BIAS = 3.0  # initial EOS-row bias of the ST (+) / NMST (−) layers


def check_epsilon(epsilon: float) -> float:
    """Validate ε: a float strictly inside (0, 1)."""
    try:
        value = float(epsilon)
    except (TypeError, ValueError):
        raise GeneratorConfigError(f"epsilon must be a number in (0, 1), got {epsilon!r}.") from None
    if not 0.0 < value < 1.0 or math.isnan(value):
        raise GeneratorConfigError(
            f"epsilon must lie strictly between 0 and 1 (the papers use 1e-5 ... 1e-2), got {epsilon!r}."
        )
    return value


def log1mexp(a: torch.Tensor) -> torch.Tensor:
    """``log(1 − exp(a))`` for ``a ≤ 0``, accurate over the whole range (Mächler 2012)."""
    return torch.where(a > -math.log(2.0), torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(a)))


class _OutputBase(nn.Module):
    kind = "softmax"

    def __init__(self, hidden_size: int, vocab_size: int, eos_id: int, never_ids: Sequence[int] = ()):
        super().__init__()
        if not 0 <= eos_id < vocab_size:
            raise GeneratorConfigError(f"eos_id {eos_id} is outside the vocabulary of size {vocab_size}.")
        self.hidden_size = int(hidden_size)
        self.vocab_size = int(vocab_size)
        self.eos_id = int(eos_id)
        self.proj = nn.Linear(hidden_size, vocab_size)
        never = torch.zeros(vocab_size, dtype=torch.bool)
        for i in never_ids:
            if int(i) == eos_id:
                raise GeneratorConfigError("EOS cannot be one of the never-generated ids.")
            never[int(i)] = True
        self.register_buffer("never", never, persistent=False)
        other = never.clone()
        other[eos_id] = True  # the non-EOS softmax excludes EOS and the never ids
        if bool(other.all()):
            raise GeneratorConfigError(
                "The output layer has no token besides EOS that it may produce (every other id is a "
                "never-generated one): the target vocabulary needs ordinary tokens.")
        self.register_buffer("not_other", other, persistent=False)

    # -- API
    def initial_state(self, batch_size: int, device=None) -> torch.Tensor:
        """The state before step 1: a (batch_size,) float tensor."""
        return torch.zeros(batch_size, device=device)

    def lower_bound(self, t: int) -> float:
        """The guaranteed p(eos | t) at step ``t`` (1-based)."""
        return 0.0

    def _other_log_softmax(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(logits.masked_fill(self.not_other, float("-inf")), dim=-1)

    def _assemble(self, log_other: torch.Tensor, log_eos: torch.Tensor) -> torch.Tensor:
        """Put log p(eos) (…,) into the EOS column of ``log_other`` (…, V)."""
        out = log_other.clone()
        out[..., self.eos_id] = log_eos
        return out


class SoftmaxOutput(_OutputBase):
    """Plain softmax over the vocabulary (minus the never ids)."""

    kind = "softmax"

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.proj(hidden).float()
        return torch.log_softmax(logits.masked_fill(self.never, float("-inf")), dim=-1)

    def step(self, hidden_t: torch.Tensor, state: torch.Tensor):
        return self.forward(hidden_t), state + 1.0


class SelfTerminatingOutput(_OutputBase):
    """Welleck et al. (2020)'s self-terminating layer; the state is ``log α_{t−1}``."""

    kind = "st"

    def __init__(self, hidden_size, vocab_size, eos_id, never_ids=(), *, epsilon: float = 1e-3):
        super().__init__(hidden_size, vocab_size, eos_id, never_ids)
        self.epsilon = check_epsilon(epsilon)
        self.log_keep = math.log1p(-self.epsilon)  # log(1 − ε) < 0
        with torch.no_grad():  # start near "keep going" (σ ≈ 0.95), not p(eos) ≈ 1/2 at step 1
            self.proj.bias[eos_id] = INIT_EOS_BIAS

    def lower_bound(self, t: int) -> float:
        return -math.expm1(t * self.log_keep)

    def _from_log_alpha(self, logits: torch.Tensor, log_alpha: torch.Tensor) -> torch.Tensor:
        log_other = log_alpha.unsqueeze(-1) + self._other_log_softmax(logits)
        return self._assemble(log_other, log1mexp(log_alpha))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.proj(hidden).float()
        log_beta = self.log_keep + F.logsigmoid(logits[..., self.eos_id])
        return self._from_log_alpha(logits, torch.cumsum(log_beta, dim=-1))

    def step(self, hidden_t: torch.Tensor, state: torch.Tensor):
        logits = self.proj(hidden_t).float()
        log_alpha = state + self.log_keep + F.logsigmoid(logits[..., self.eos_id])
        return self._from_log_alpha(logits, log_alpha), log_alpha


class NonMonotonicSelfTerminatingOutput(_OutputBase):
    """Choi et al. (2023)'s non-monotonic self-terminating layer; the state is ``t − 1``."""

    kind = "nmst"

    def __init__(self, hidden_size, vocab_size, eos_id, never_ids=(), *, epsilon: float = 1e-3):
        super().__init__(hidden_size, vocab_size, eos_id, never_ids)
        self.epsilon = check_epsilon(epsilon)
        self.log_keep = math.log1p(-self.epsilon)
        with torch.no_grad():  # start near "keep going" (σ ≈ 0.05)
            self.proj.bias[eos_id] = -INIT_EOS_BIAS

    def lower_bound(self, t: int) -> float:
        return -math.expm1(t * self.log_keep)

    def _at_steps(self, logits: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        z = logits[..., self.eos_id]
        log_lb_keep = t * self.log_keep  # log (1 − ε)^t
        log_not_eos = log_lb_keep + F.logsigmoid(-z)  # log(1 − p_eos) = t log(1−ε) + log(1 − σ)
        log_eos = torch.logaddexp(log1mexp(log_lb_keep) + F.logsigmoid(-z), F.logsigmoid(z))
        log_other = log_not_eos.unsqueeze(-1) + self._other_log_softmax(logits)
        return self._assemble(log_other, log_eos)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.proj(hidden).float()
        steps = torch.arange(1, logits.shape[-2] + 1, device=logits.device, dtype=logits.dtype)
        return self._at_steps(logits, steps.expand(logits.shape[:-1]))

    def step(self, hidden_t: torch.Tensor, state: torch.Tensor):
        logits = self.proj(hidden_t).float()
        t = state + 1.0
        return self._at_steps(logits, t), t


LAYERS = {"softmax": SoftmaxOutput, "st": SelfTerminatingOutput, "nmst": NonMonotonicSelfTerminatingOutput}
