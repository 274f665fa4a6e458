"""Decoding strategies: greedy, beam search, ancestral, top-k and nucleus sampling.

Pure torch. A strategy drives any *step model*, an object with

* ``step(tokens, state) -> (log_probs, state)``: ``tokens`` (B,) the previous tokens (BOS at
  the first step), ``log_probs`` (B, V) the next-token log-probabilities;
* ``reorder_state(state, index) -> state``: keep / repeat rows ``index`` (a LongTensor) of
  the state (beam search, dropping finished rows).

``strategy.decode(model, state, batch_size, bos_id=..., eos_id=..., max_length=...)`` decodes
the whole batch at once (``bos_id``: an int, or a (B,) tensor of first input tokens, e.g. the
last token of a forced prefix) and returns one :class:`Hypothesis` per row: the token ids (EOS not
included), the model's log-probability of the sequence (EOS step included, under the
unmodified distribution), the number of steps and ``stopped_by`` ("eos" or "max_length").
``max_length`` (steps, EOS included) is the safety net.

Stopping guarantees with an ST / NMST output layer (p(eos | t) ≥ 1 − (1 − ε)^t):

* greedy: at t* = ⌈ln 2 / −ln(1 − ε)⌉, p(eos) ≥ 1/2 ≥ every other token, so EOS is chosen
  (ties, within 1e-5 in log space, go to EOS).
* beam search stops an item when its best candidate is finished (EOS-ended hypotheses stay
  in the beam with a frozen score). Without a length penalty that is exact search over the
  beam (scores only decrease); at t* every live hypothesis' best extension is EOS, so the
  best candidate is finished and the search stops. The length penalty
  ((5 + n) / 6)^α (Wu et al. 2016) ranks the finished hypotheses to return.
* sampling (ancestral, top-k, nucleus): P(length > L) ≤ ∏_{t ≤ L} (1 − ε)^t. The
  *consistent* variants always keep EOS in the top-k / nucleus set, so renormalising can
  only raise p(eos), and their temperature leaves p(eos) unchanged (it reshapes the other
  tokens only), so the bound holds for them; vanilla variants (``consistent=False``) may
  drop EOS and temper it like any token.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, List, Optional

if TYPE_CHECKING:  # pragma: no cover
    import torch

from spacy.util import registry

from ..errors import GeneratorConfigError

TIE = 1e-5


@dataclass
class Hypothesis:
    """One decoded sequence.

    token_ids (List[int]): generated ids, EOS excluded.
    log_prob (float): the model's log-probability of the steps taken (EOS included).
    n_steps (int): steps taken (EOS included).
    stopped_by (str): "eos" or "max_length".
    """

    token_ids: List[int]
    log_prob: float
    n_steps: int
    stopped_by: str

    def to_dict(self) -> dict:
        return {"token_ids": list(self.token_ids), "log_prob": float(self.log_prob),
                "n_steps": int(self.n_steps), "stopped_by": self.stopped_by}


def check_max_length(max_length: int) -> int:
    if not isinstance(max_length, (int,)) or isinstance(max_length, bool) or max_length <= 0:
        raise GeneratorConfigError(f"max_length must be a positive integer (steps, EOS included), got {max_length!r}.")
    return int(max_length)


def _check_temperature(temperature: float) -> float:
    value = float(temperature)
    if not value > 0 or math.isinf(value):
        raise GeneratorConfigError(f"temperature must be a positive finite number, got {temperature!r}.")
    return value


def _make_generator(seed: Optional[int], device) -> Optional[torch.Generator]:
    import torch

    if seed is None:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen


class DecodingStrategy:
    """Base class; subclasses define ``name`` and ``decode``."""

    name = "base"
    sampling = False

    def decode(self, model, state, batch_size: int, *, bos_id: int, eos_id: int, max_length: int,
               seed: Optional[int] = None) -> List[Hypothesis]:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_dict(self) -> dict:
        return {"name": self.name, **{k: v for k, v in vars(self).items() if not k.startswith("_")}}


class _StepwiseStrategy(DecodingStrategy):
    """One token per row per step (greedy, sampling); finished rows leave the batch."""

    def choose(self, log_probs: torch.Tensor, eos_id: int, generator) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def decode(self, model, state, batch_size, *, bos_id, eos_id, max_length, seed=None):
        import torch

        max_length = check_max_length(max_length)
        device = _device_of(state, torch.zeros(1))
        tokens = _first_tokens(bos_id, batch_size, device)
        generator = _make_generator(seed, device) if self.sampling else None
        rows = list(range(batch_size))
        out_ids: List[List[int]] = [[] for _ in range(batch_size)]
        out_lp = [0.0] * batch_size
        stopped = ["max_length"] * batch_size
        for t in range(1, max_length + 1):
            log_probs, state = model.step(tokens, state)
            choice = self.choose(log_probs, eos_id, generator)
            chosen_lp = log_probs.gather(1, choice.unsqueeze(1)).squeeze(1)
            choice_l = choice.tolist()
            lp_l = chosen_lp.double().tolist()
            keep = []
            for j, (row, tok, lp) in enumerate(zip(rows, choice_l, lp_l)):
                out_lp[row] += lp
                if tok == eos_id:
                    stopped[row] = "eos"
                else:
                    out_ids[row].append(tok)
                    keep.append(j)
            if not keep:
                rows = []
                break
            if len(keep) < len(rows):
                index = torch.tensor(keep, dtype=torch.long, device=log_probs.device)
                state = model.reorder_state(state, index)
                choice = choice[index]
                rows = [rows[j] for j in keep]
            tokens = choice
        return [
            Hypothesis(out_ids[i], out_lp[i], len(out_ids[i]) + (1 if stopped[i] == "eos" else 0), stopped[i])
            for i in range(batch_size)
        ]


def _first_tokens(bos_id, batch_size: int, device) -> "torch.Tensor":
    """The first input tokens: ``bos_id`` for every row, or one id per row (a LongTensor,
    e.g. the last token of a forced prefix whose other tokens are already in the state)."""
    import torch

    if isinstance(bos_id, torch.Tensor):
        if bos_id.shape != (batch_size,):
            raise GeneratorConfigError(f"bos_id must be an int or a ({batch_size},) tensor, got shape {tuple(bos_id.shape)}.")
        return bos_id.to(device=device, dtype=torch.long)
    return torch.full((batch_size,), int(bos_id), dtype=torch.long, device=device)


def _device_of(state, tokens):
    """The device of the first tensor found in ``state`` (else that of ``tokens``)."""
    import torch

    if isinstance(getattr(state, "device", None), torch.device):
        return state.device
    found = _first_tensor(state)
    return found.device if found is not None else tokens.device


def _first_tensor(obj) -> Optional[torch.Tensor]:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        for item in obj:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


class Greedy(_StepwiseStrategy):
    """The most likely token at each step; ties (within 1e-5 in log space) go to EOS."""

    name = "greedy"

    def choose(self, log_probs, eos_id, generator):
        import torch

        best_lp, best = log_probs.max(dim=-1)
        is_eos = log_probs[:, eos_id] >= best_lp - TIE
        return torch.where(is_eos, torch.full_like(best, eos_id), best)


class Sampling(_StepwiseStrategy):
    """Ancestral, top-k or nucleus sampling, consistent (EOS always kept) or vanilla.

    temperature (float): > 0. Consistent variants temper the non-EOS tokens only and keep
        p(eos); vanilla ones temper every logit.
    top_k (int or None): keep the k most likely tokens (≥ 1).
    top_p (float or None): keep the smallest set of most likely tokens with mass ≥ p, p ∈ (0, 1].
    consistent (bool): keep EOS in the kept set whatever its rank (Welleck et al. 2020).
    """

    sampling = True

    def __init__(self, *, temperature: float = 1.0, top_k: Optional[int] = None,
                 top_p: Optional[float] = None, consistent: bool = True):
        self.temperature = _check_temperature(temperature)
        if top_k is not None and (isinstance(top_k, bool) or int(top_k) != top_k or top_k < 1):
            raise GeneratorConfigError(f"top_k must be an integer ≥ 1, got {top_k!r}.")
        if top_p is not None and not (0.0 < float(top_p) <= 1.0):
            raise GeneratorConfigError(f"top_p must lie in (0, 1], got {top_p!r}.")
        if top_k is not None and top_p is not None:
            raise GeneratorConfigError("Give top_k or top_p, not both.")
        self.top_k = int(top_k) if top_k is not None else None
        self.top_p = float(top_p) if top_p is not None else None
        self.consistent = bool(consistent)
        kind = "top_k" if top_k is not None else "nucleus" if top_p is not None else "ancestral"
        self.name = kind if consistent else f"vanilla_{kind}"

    def sampling_log_probs(self, log_probs: torch.Tensor, eos_id: int) -> torch.Tensor:
        """The (tempered, filtered, renormalised) distribution sampled from, in log space."""
        import torch

        lp = log_probs.float()
        T = self.temperature
        if T != 1.0:
            if self.consistent:
                log_eos = lp[:, eos_id]
                others = lp.clone()
                others[:, eos_id] = float("-inf")
                tempered = torch.log_softmax(others / T, dim=-1) + log1mexp_safe(log_eos).unsqueeze(1)
                tempered[:, eos_id] = log_eos
                lp = tempered
            else:
                lp = torch.log_softmax(lp / T, dim=-1)
        keep = None
        if self.top_k is not None and self.top_k < lp.shape[-1]:
            kth = torch.topk(lp, self.top_k, dim=-1).values[:, -1:]
            keep = lp >= kth
        elif self.top_p is not None and self.top_p < 1.0:
            sorted_lp, order = torch.sort(lp, dim=-1, descending=True)
            mass_before = torch.cumsum(sorted_lp.exp(), dim=-1) - sorted_lp.exp()
            keep_sorted = mass_before < self.top_p
            keep_sorted[:, 0] = True
            keep = torch.zeros_like(keep_sorted).scatter(1, order, keep_sorted)
        if keep is not None:
            if self.consistent:
                keep[:, eos_id] = True
            lp = torch.log_softmax(lp.masked_fill(~keep, float("-inf")), dim=-1)
        return lp

    def choose(self, log_probs, eos_id, generator):
        import torch

        probs = self.sampling_log_probs(log_probs, eos_id).exp()
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def log1mexp_safe(a: torch.Tensor) -> torch.Tensor:
    """log(1 − exp(a)) for a ≤ 0 (−inf at a = 0)."""
    import torch

    a = a.clamp(max=0.0)
    return torch.where(a > -math.log(2.0), torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(a)))


class BeamSearch(DecodingStrategy):
    """Beam search over a batch; an item stops when its best candidate has ended with EOS.

    width (int): beam width ≥ 1.
    length_penalty (float): α of the GNMT penalty ((5 + n) / 6)^α used to rank the finished
        hypotheses returned (0: raw log-probability).
    """

    name = "beam"

    def __init__(self, width: int = 4, length_penalty: float = 0.0):
        if isinstance(width, bool) or int(width) != width or width < 1:
            raise GeneratorConfigError(f"beam width must be an integer ≥ 1, got {width!r}.")
        if float(length_penalty) < 0:
            raise GeneratorConfigError(f"length_penalty must be ≥ 0, got {length_penalty!r}.")
        self.width = int(width)
        self.length_penalty = float(length_penalty)

    def _normalised(self, scores: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if self.length_penalty == 0.0:
            return scores
        return scores / ((5.0 + lengths.float()) / 6.0) ** self.length_penalty

    def decode(self, model, state, batch_size, *, bos_id, eos_id, max_length, seed=None):
        import torch

        max_length = check_max_length(max_length)
        B, k = batch_size, self.width
        dev = _device_of(state, torch.zeros(1))
        state = model.reorder_state(state, torch.arange(B, device=dev).repeat_interleave(k))
        scores = torch.full((B, k), float("-inf"), device=dev)
        scores[:, 0] = 0.0
        finished = torch.zeros(B, k, dtype=torch.bool, device=dev)
        lengths = torch.zeros(B, k, dtype=torch.long, device=dev)
        seqs = torch.zeros(B, k, 0, dtype=torch.long, device=dev)
        tokens = _first_tokens(bos_id, B, dev).repeat_interleave(k)
        results: List[Optional[Hypothesis]] = [None] * B
        base = (torch.arange(B, device=dev) * k).unsqueeze(1)
        for t in range(1, max_length + 1):
            log_probs, state = model.step(tokens, state)
            V = log_probs.shape[-1]
            lp = log_probs.float().view(B, k, V)
            stay = torch.full_like(lp, float("-inf"))
            stay[..., eos_id] = 0.0
            lp = torch.where(finished.unsqueeze(-1), stay, lp)
            cand = scores.unsqueeze(-1) + lp
            top_fin = cand[..., eos_id].max(dim=-1).values
            live = cand.clone()
            live[..., eos_id] = float("-inf")
            top_live = live.view(B, -1).max(dim=-1).values
            done_now = top_fin >= top_live - TIE
            vals, idx = torch.topk(cand.view(B, -1), k, dim=-1)
            parent = torch.div(idx, V, rounding_mode="floor")
            tok = idx % V
            was_fin = finished.gather(1, parent)
            new_fin = was_fin | (tok == eos_id)
            lengths = lengths.gather(1, parent) + (~was_fin).long()
            seqs = torch.cat([seqs.gather(1, parent.unsqueeze(-1).expand(-1, -1, seqs.shape[-1])),
                              tok.unsqueeze(-1)], dim=-1)
            scores, finished = vals, new_fin
            state = model.reorder_state(state, (base + parent).view(-1))
            tokens = tok.view(-1)
            last = t == max_length
            pick_items = [i for i in range(B) if results[i] is None and (bool(done_now[i]) or last)]
            for i in pick_items:
                if bool(done_now[i]):
                    ranked = torch.where(finished[i], self._normalised(scores[i], lengths[i]),
                                         torch.full_like(scores[i], float("-inf")))
                else:
                    ranked = self._normalised(scores[i], lengths[i])
                j = int(torch.argmax(ranked))
                fin = bool(finished[i, j])
                n = int(lengths[i, j])
                ids = seqs[i, j, :n - (1 if fin else 0)].tolist() if n else []
                results[i] = Hypothesis(ids, float(scores[i, j]), n, "eos" if fin else "max_length")
            if all(r is not None for r in results):
                break
        return results  # type: ignore[return-value]


# ------------------------------------------------------------------ registered builders
@registry.misc("kx_spacy.GreedyDecoding.v1")
def make_greedy() -> Greedy:
    """kx_spacy.GreedyDecoding.v1: the most likely token at each step.

    RETURNS (Greedy): the strategy.
    """
    return Greedy()


@registry.misc("kx_spacy.BeamSearch.v1")
def make_beam_search(width: int = 4, length_penalty: float = 0.0) -> BeamSearch:
    """kx_spacy.BeamSearch.v1: batched beam search with a GNMT length penalty.

    width (int): beam width ≥ 1.
    length_penalty (float): α ≥ 0 of ((5 + n) / 6)^α.
    RETURNS (BeamSearch): the strategy.
    """
    return BeamSearch(width, length_penalty)


@registry.misc("kx_spacy.AncestralSampling.v1")
def make_ancestral(temperature: float = 1.0, consistent: bool = True) -> Sampling:
    """kx_spacy.AncestralSampling.v1: sampling from the full distribution.

    temperature (float): > 0 (consistent: the non-EOS tokens only).
    consistent (bool): keep p(eos) untouched by the temperature.
    RETURNS (Sampling): the strategy.
    """
    return Sampling(temperature=temperature, consistent=consistent)


@registry.misc("kx_spacy.TopKSampling.v1")
def make_top_k(k: int = 10, temperature: float = 1.0, consistent: bool = True) -> Sampling:
    """kx_spacy.TopKSampling.v1: sampling from the k most likely tokens (+ EOS if consistent).

    k (int): ≥ 1.
    temperature (float): > 0.
    consistent (bool): EOS is never filtered out.
    RETURNS (Sampling): the strategy.
    """
    return Sampling(temperature=temperature, top_k=k, consistent=consistent)


@registry.misc("kx_spacy.NucleusSampling.v1")
def make_nucleus(p: float = 0.9, temperature: float = 1.0, consistent: bool = True) -> Sampling:
    """kx_spacy.NucleusSampling.v1: sampling from the top-p nucleus (+ EOS if consistent).

    p (float): in (0, 1].
    temperature (float): > 0.
    consistent (bool): EOS is never filtered out.
    RETURNS (Sampling): the strategy.
    """
    return Sampling(temperature=temperature, top_p=p, consistent=consistent)


STRATEGY_NAMES = {
    "kx_spacy.GreedyDecoding.v1": make_greedy,
    "kx_spacy.BeamSearch.v1": make_beam_search,
    "kx_spacy.AncestralSampling.v1": make_ancestral,
    "kx_spacy.TopKSampling.v1": make_top_k,
    "kx_spacy.NucleusSampling.v1": make_nucleus,
}
