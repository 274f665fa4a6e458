"""MLE-guided parameter search (MGS) and the sequence-level baselines, for any torch module.

Welleck & Cho, "MLE-Guided Parameter Search for Task Loss Minimization in Neural Sequence
Modeling" (AAAI 2021; reference code wellecks/mgs). One MGS update:

1. the MLE gradient ``G = ∇ L_mle`` of the batch, clipped (global norm, 1.0), gives the
   direction ``g = −G``;
2. K candidate perturbations ``ε_k``: even k are ``g + n_k`` (around the MLE step), odd k pure
   noise ``n_k``; ``n_k ~ N(0, σ_j²)`` per parameter tensor j with ``σ_j = noise · mean|g_j|``;
3. each candidate is decoded (greedy, budget ``1.3 × (target + 2)``) and scored by a
   sequence-level task loss; ``Δ_k = L(θ + ε_k) − L(θ)``;
4. self-normalised importance weights ``w_k ∝ exp(−β Δ_k) / q(ε_k)`` with ``q`` the mixture
   proposal ``½ N(0, I) + ½ N(g, I)`` (the reference's unit-variance form; ``"scaled"`` uses the
   σ actually sampled from, ``"none"`` drops the ratio);
5. the step direction ``d = Σ_k w_k ε_k`` is handed to the optimizer as the gradient ``−d``,
   clipped again.

What this implementation does differently from the reference (which keeps ~7 model copies: two
deep copies for the MLE gradient and the score model plus one per candidate, then stacks all
K perturbations once more to average them):

- candidates are applied **in place** on a chosen parameter subset (name patterns) and the
  subset is restored from **one saved copy** with ``copy_`` — weights are bit-identical after
  every candidate, accepted or not;
- a candidate's noise is never stored: it is drawn from its own seeded generator and drawn
  again to build the step, and since ``d = (Σ_{k∈MLE} w_k) g + Σ_k w_k n_k`` the step is built
  in the gradient buffer itself. Extra memory: one copy of the subset plus one tensor of noise;
- ``Δ`` enters the weights only through a softmax, so ``L(θ)`` cancels; the current model is
  decoded only for the statistics (``score_current``) or for the optional zero candidate;
- defined edge cases: K < 1 is an error; a candidate whose task loss is NaN/inf is dropped
  (weight 0); when every candidate is worse than the current model the weights still
  normalise over the candidates (the reference's behaviour: the step leans to the least-bad
  one) unless ``zero_candidate`` adds ``ε = 0`` (Δ = 0) to the pool, which then takes the
  weight and the step shrinks towards zero; when no candidate is usable the update is skipped
  (no optimizer step) and reported.

Policy gradient (REINFORCE with a baseline) and minimum-risk training run through the same
``SequenceLevelUpdater.step(module, batch, optimizer)`` at equal decode budget: MGS decodes
the batch K (+1) times greedily, PG / MRT decode K + 1 samples per input once.
"""
from __future__ import annotations

import fnmatch
import math
import re
import time
from dataclasses import asdict, dataclass, field
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    List,
    Optional,
    Protocol,
    Sequence,
    Tuple,
    Union,
)

from ..errors import KxError
from ..training.clipping import clip_gradients

if TYPE_CHECKING:  # pragma: no cover
    import torch

METHODS = ("mgs", "pg", "mrt", "mle")
DENSITIES = ("unit", "scaled", "none")
NOISE_SCALES = ("uniform", "constant")
BASELINES = ("mean", "ema", "none")

TaskLoss = Callable[[Sequence[Any], Sequence[Any]], List[float]]
DecodeCandidates = Callable[[List[Optional[List[Any]]]], List[Sequence[Any]]]


class MGSConfigError(KxError):
    """An MGS / sequence-level training setting is invalid (K < 1, unknown method, ...)."""


class MGSTaskError(KxError):
    """A task object or callback given to the MGS update misbehaves (wrong lengths, no params)."""


@dataclass
class MGSConfig:
    """Settings of one sequence-level update (defaults: the reference protocol).

    method (str): "mgs", "pg" (REINFORCE with a baseline), "mrt" (minimum risk) or "mle".
    num_candidates (int): K, the MGS candidates per update (≥ 1); PG / MRT draw K + 1 samples
        per input so that all three decode the same number of sequences.
    beta (float): β, the inverse temperature on the task-loss improvement.
    noise (float): noise multiplier (1.0: σ_j = mean |g_j| per tensor with "uniform").
    noise_scale (str): "uniform" (σ_j = noise · mean|g_j|) or "constant" (σ_j = noise).
    density (str): proposal density in the weights: "unit" (reference), "scaled", "none".
    mle_share (float): share of candidates centred on the MLE step (0.5: alternate).
    candidate_scale (float): c, the candidates are ``c·(g + n)`` / ``c·n`` (1.0: the reference,
        whose clipped gradient has norm ≤ 1 — a large step for a small model; the weights are
        measured at this step size, the step taken is the optimizer's).
    zero_candidate (bool): add ε = 0 (the current model, Δ = 0) to the candidate pool.
    score_current (bool): decode the current model too (statistics: Δ, all-worse).
    candidate_batch (int): candidates decoded together in one batched decode when the caller
        offers ``decode_candidates`` (the generator task does for an output-layer subset):
        0 = all K (with the current model), 1 = one at a time, in place. A batched group holds
        its perturbed subset values as separate tensors: extra memory = group size × subset
        (the module's own weights are never touched); one at a time: one saved copy.
    clip_mode (str): "global_norm", "smooth" or "none" (kx_spacy.training.clipping).
    clip_threshold (float): threshold for the MLE gradient and for the final step.
    mle_mix (float): α, the probability that an update is a plain MLE step instead.
    length_multiplier (float): decode budget = int(multiplier × (target length + offset)).
    length_offset (int): see length_multiplier.
    max_decode_length (int): hard cap on the decode budget.
    parameters (List[str]): name patterns (fnmatch globs, or "re:<regex>") of the parameters
        that are perturbed and updated; empty: every parameter that requires grad.
    pg_baseline (str): "mean" (leave-one-out mean of the input's other samples), "ema" or "none".
    pg_ema_decay (float): decay of the "ema" baseline.
    normalize_loss (bool): PG / MRT divide the task losses by the batch maximum (reference).
    mrt_sharpness (float): MRT's Q ∝ exp(sharpness · mean token log-prob) over the samples.
    mrt_include_greedy (bool): MRT's first sample of each input is the greedy decode.
    seed (int): seed of the candidates' noise and of the α coin.
    """

    method: str = "mgs"
    num_candidates: int = 4
    beta: float = 1.0
    noise: float = 1.0
    noise_scale: str = "uniform"
    density: str = "unit"
    mle_share: float = 0.5
    candidate_scale: float = 1.0
    zero_candidate: bool = False
    score_current: bool = True
    candidate_batch: int = 0
    clip_mode: str = "global_norm"
    clip_threshold: float = 1.0
    mle_mix: float = 0.0
    length_multiplier: float = 1.3
    length_offset: int = 2
    max_decode_length: int = 1000
    parameters: List[str] = field(default_factory=list)
    pg_baseline: str = "mean"
    pg_ema_decay: float = 0.95
    normalize_loss: bool = False
    mrt_sharpness: float = 1.0
    mrt_include_greedy: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise MGSConfigError on an invalid setting."""
        if self.method not in METHODS:
            raise MGSConfigError(f"method {self.method!r}: use one of {', '.join(METHODS)}")
        if not isinstance(self.num_candidates, int) or isinstance(self.num_candidates, bool) \
                or self.num_candidates < 1:
            raise MGSConfigError(f"num_candidates (K) must be an integer ≥ 1, got {self.num_candidates!r}")
        if self.density not in DENSITIES:
            raise MGSConfigError(f"density {self.density!r}: use one of {', '.join(DENSITIES)}")
        if self.noise_scale not in NOISE_SCALES:
            raise MGSConfigError(f"noise_scale {self.noise_scale!r}: use one of {', '.join(NOISE_SCALES)}")
        if self.pg_baseline not in BASELINES:
            raise MGSConfigError(f"pg_baseline {self.pg_baseline!r}: use one of {', '.join(BASELINES)}")
        for name in ("beta", "noise", "length_multiplier", "mrt_sharpness", "candidate_scale"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise MGSConfigError(f"{name} must be a finite number ≥ 0, got {value!r}")
        for name in ("mle_share", "mle_mix", "pg_ema_decay"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise MGSConfigError(f"{name} must lie in [0, 1], got {value!r}")
        if not isinstance(self.candidate_batch, int) or isinstance(self.candidate_batch, bool) \
                or self.candidate_batch < 0:
            raise MGSConfigError(f"candidate_batch must be an integer ≥ 0, got {self.candidate_batch!r}")
        if self.max_decode_length < 1:
            raise MGSConfigError(f"max_decode_length must be ≥ 1, got {self.max_decode_length!r}")
        if self.clip_mode not in (None, "", "none") and not (
            isinstance(self.clip_threshold, (int, float)) and 0 < self.clip_threshold < math.inf
        ):
            raise MGSConfigError(f"clip_threshold must be a positive finite number, got {self.clip_threshold!r}")

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def decode_budget(target_length: int, config: Optional[MGSConfig] = None) -> int:
    """The training decode length: ``int(multiplier × (target_length + offset))``, capped.

    target_length (int): length of the longest reference in the batch (tokens, EOS included).
    config (MGSConfig): supplies multiplier, offset and cap (defaults 1.3, 2, 1000).
    RETURNS (int): the budget, at least 1.
    """
    config = config or MGSConfig()
    budget = int(config.length_multiplier * (int(target_length) + config.length_offset))
    return max(1, min(config.max_decode_length, budget))


def select_parameters(
    module: "torch.nn.Module", patterns: Optional[Sequence[str]] = None
) -> List[Tuple[str, "torch.nn.Parameter"]]:
    """The trainable parameters whose names match one of ``patterns``.

    module (torch.nn.Module): the model.
    patterns (Sequence[str]): fnmatch globs ("decoder.*", "*out_proj*") or "re:<regex>"
        (searched); empty / None: every parameter that requires grad.
    RETURNS (List[Tuple[str, torch.nn.Parameter]]): (name, parameter) in module order.
    """
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    if patterns:
        compiled = []
        for pat in patterns:
            if pat.startswith("re:"):
                compiled.append(re.compile(pat[3:]).search)
            else:
                compiled.append(lambda name, pat=pat: fnmatch.fnmatchcase(name, pat))
        named = [(n, p) for n, p in named if any(match(n) for match in compiled)]
    if not named:
        raise MGSTaskError(
            f"No trainable parameter matches {list(patterns or [])!r}; names start with "
            f"{[n for n, _ in module.named_parameters()][:5]}"
        )
    return named


@dataclass
class UpdateStats:
    """What one update did and cost (``to_dict`` gives the float logs).

    method (str): "mgs", "pg", "mrt" or "mle".
    mle_loss (float): the batch's MLE loss before the update (NaN when not computed).
    task_loss (float): mean task loss of the current model's decode (NaN when not decoded).
    candidate_losses (List[float]): mean task loss of each candidate (MGS) / of the samples.
    weights (List[float]): the normalised weights (MGS: one per candidate, zero candidate last).
    mle_weight (float): total weight of the MLE-centred candidates.
    all_worse (bool): every usable candidate was worse than the current model.
    dropped (int): candidates dropped for a NaN / infinite task loss.
    skipped (bool): no optimizer step was taken (no usable candidate).
    grad_norm (float): global norm of the MLE gradient before clipping.
    step_norm (float): norm of the step direction handed to the optimizer, before clipping.
    decodes (int): batch decodes run (one decode = the whole batch once).
    passes (int): decoder passes run (a batched decode of several candidates is one pass).
    sequences (int): sequences decoded.
    seconds (float): wall-clock of the update.
    extra_bytes (int): bytes of the saved parameter copy (the update's extra memory).
    subset_bytes (int): bytes of the perturbed parameter subset.
    """

    method: str = "mgs"
    mle_loss: float = math.nan
    task_loss: float = math.nan
    candidate_losses: List[float] = field(default_factory=list)
    weights: List[float] = field(default_factory=list)
    mle_weight: float = math.nan
    all_worse: bool = False
    dropped: int = 0
    skipped: bool = False
    grad_norm: float = math.nan
    step_norm: float = math.nan
    decodes: int = 0
    passes: int = 0
    sequences: int = 0
    seconds: float = 0.0
    extra_bytes: int = 0
    subset_bytes: int = 0

    def to_dict(self) -> Dict[str, float]:
        """Flat float logs (lists summarised), for a metrics JSONL line."""
        finite = [x for x in self.candidate_losses if math.isfinite(x)]
        return {
            "mle_loss": self.mle_loss,
            "task_loss": self.task_loss,
            "best_candidate_loss": min(finite) if finite else math.nan,
            "candidate_spread": max(finite) - min(finite) if finite else math.nan,
            "max_weight": max(self.weights) if self.weights else math.nan,
            "mle_weight": self.mle_weight,
            "all_worse": float(self.all_worse),
            "dropped": float(self.dropped),
            "skipped": float(self.skipped),
            "mle_grad_norm": self.grad_norm,
            "step_norm": self.step_norm,
            "decodes": float(self.decodes),
            "passes": float(self.passes),
            "sequences": float(self.sequences),
            "seconds": self.seconds,
            "extra_bytes": float(self.extra_bytes),
        }


def _mean_loss(values: Sequence[float], expected: int) -> float:
    values = list(values)
    if len(values) != expected:
        raise MGSTaskError(f"The task loss returned {len(values)} values for {expected} sequences")
    if not values:
        return math.nan
    total = 0.0
    for v in values:
        v = float(v)
        if not math.isfinite(v):
            return math.nan
        total += v
    return total / len(values)


def _logsumexp(values: Sequence[float]) -> float:
    finite = [v for v in values if v != -math.inf]
    if not finite:
        return -math.inf
    top = max(finite)
    return top + math.log(sum(math.exp(v - top) for v in finite))


class _Subset:
    """The perturbed parameters, the one saved copy and the per-tensor noise scales."""

    def __init__(self, named: List[Tuple[str, "torch.nn.Parameter"]]):
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.saved: List["torch.Tensor"] = []

    def save(self) -> None:
        self.saved = [p.detach().clone() for p in self.params]

    def restore(self) -> None:
        for p, s in zip(self.params, self.saved):
            p.data.copy_(s)

    def release(self) -> None:
        self.saved = []

    @property
    def nbytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.params)


def _noise(param: "torch.Tensor", scale: float, gen: "torch.Generator") -> "torch.Tensor":
    import torch

    out = torch.randn(param.shape, generator=gen, device=param.device, dtype=torch.float32)
    return out.mul_(scale)


def _generator(device: "torch.device", seed: int) -> "torch.Generator":
    import torch

    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen


class _GradHolder:
    """A stand-in with a ``.grad``, so kx_spacy.training.clipping can clip loose tensors."""

    __slots__ = ("grad",)

    def __init__(self, grad: "torch.Tensor"):
        self.grad = grad


def gradients(
    params: Sequence["torch.nn.Parameter"],
    loss: "torch.Tensor",
    *,
    clip_mode: Optional[str] = "global_norm",
    clip_threshold: float = 1.0,
) -> Tuple[List["torch.Tensor"], float]:
    """``∇ loss`` w.r.t. ``params`` as new tensors (no ``.grad`` is touched), clipped.

    params (Sequence[torch.nn.Parameter]): the parameters to differentiate.
    loss (torch.Tensor): a scalar loss.
    clip_mode (str): kx_spacy.training.clipping mode; clip_threshold (float): its threshold.
    RETURNS (Tuple[List[torch.Tensor], float]): the gradients (zeros for unused parameters)
        and their global norm before clipping.
    """
    import torch

    grads = torch.autograd.grad(loss, list(params), allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, grads)]
    norm = clip_gradients([_GradHolder(g) for g in grads], clip_mode, clip_threshold)
    return grads, norm


def mgs_search(
    module: "torch.nn.Module",
    mle_loss: Callable[[], "torch.Tensor"],
    decode: Callable[[], Sequence[Any]],
    task_loss: Callable[[Sequence[Any]], Sequence[float]],
    config: Optional[MGSConfig] = None,
    *,
    parameters: Optional[List[Tuple[str, "torch.nn.Parameter"]]] = None,
    seed: Optional[int] = None,
    decode_candidates: Optional[DecodeCandidates] = None,
) -> Tuple[Optional[List["torch.Tensor"]], UpdateStats]:
    """The MGS search: RETURNS the step direction ``d`` (one tensor per parameter) and stats.

    The module's weights are perturbed in place and restored bit-identically before this
    returns (or, with ``decode_candidates`` and ``config.candidate_batch != 1``, never
    touched: the candidates' subset values are handed to it in groups); nothing is stepped and
    no ``.grad`` is written. ``d`` is None when the update must be skipped (non-finite MLE
    gradient, or no candidate with a finite task loss).

    module (torch.nn.Module): the model; decoded in eval mode, its mode restored.
    mle_loss (Callable[[], torch.Tensor]): the batch's MLE loss at the current weights.
    decode (Callable[[], Sequence]): decodes the batch with the current (perturbed) weights.
    task_loss (Callable[[Sequence], Sequence[float]]): hypotheses → per-sequence losses.
    config (MGSConfig): the settings. parameters: the subset (default from config.parameters).
    seed (int): seed of this search's noise (default: drawn from torch's global generator).
    decode_candidates (Callable): ``values_list → hypotheses_list``: decodes the batch once per
        entry of ``values_list`` in one batched decode, each entry a list of subset values (in
        ``parameters`` order) or None for the current weights. The same candidates, losses
        and weights as the one-at-a-time path, fewer decoder passes.
    RETURNS (Tuple[Optional[List[torch.Tensor]], UpdateStats]): direction and statistics.
    """
    import torch

    config = config or MGSConfig()
    config.validate()
    start = time.perf_counter()
    named = parameters if parameters is not None else select_parameters(module, config.parameters)
    subset = _Subset(named)
    params = subset.params
    stats = UpdateStats(method="mgs", subset_bytes=subset.nbytes)
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    seeds = [(seed * 1_000_003 + 7919 * (k + 1)) % (2**62) for k in range(config.num_candidates)]
    n_mle = max(0, min(config.num_candidates, int(round(config.mle_share * config.num_candidates))))
    # MLE-centred candidates at the even positions first (the reference alternates)
    order = sorted(range(config.num_candidates), key=lambda k: (k % 2, k))
    is_mle = [False] * config.num_candidates
    for k in order[:n_mle]:
        is_mle[k] = True
    share = n_mle / config.num_candidates

    loss = mle_loss()
    stats.mle_loss = float(loss.detach().float().item())
    grads, stats.grad_norm = gradients(params, loss, clip_mode=config.clip_mode,
                                       clip_threshold=config.clip_threshold)
    del loss
    if not math.isfinite(stats.grad_norm):  # G; the MLE direction is g = −G
        stats.skipped = True
        stats.seconds = time.perf_counter() - start
        return None, stats
    c = float(config.candidate_scale)
    gg_sum = c * c * sum(float(g.float().pow(2).sum().item()) for g in grads)
    if config.noise_scale == "uniform":
        scales = [c * config.noise * float(g.abs().float().mean().item()) if g.numel() else 0.0 for g in grads]
    else:
        scales = [c * float(config.noise)] * len(grads)
    inv_var = [1.0 / (sc * sc) if sc > 0 else 0.0 for sc in scales]
    gg_scaled = c * c * sum(float(g.float().pow(2).sum().item()) * iv for g, iv in zip(grads, inv_var))

    was_training = module.training
    losses: List[float] = []
    log_rhos: List[float] = []
    group = config.num_candidates if config.candidate_batch == 0 else config.candidate_batch
    batched = decode_candidates is not None and group > 1
    want_current = config.score_current or config.zero_candidate

    def score(hyps) -> float:
        stats.decodes += 1
        stats.sequences += len(hyps)
        return _mean_loss(task_loss(hyps), len(hyps))

    def candidate(k: int, apply: bool):
        """ε_k, drawn from its own seed; applied in place (apply) or returned as θ + ε_k."""
        gen = _generator(params[0].device, seeds[k])
        # the four sums stay on the device: one synchronisation per candidate
        sums = torch.zeros(4, dtype=torch.float64, device=params[0].device)
        values = []
        for p, g, scale, iv, j in zip(params, grads, scales, inv_var, range(len(params))):
            eps = _noise(p, scale, gen)
            flat_g = g.reshape(-1).float()
            if is_mle[k]:
                eps.view(-1).sub_(flat_g, alpha=c)  # the MLE step is c·g = −c·G
            flat = eps.view(-1)
            ee_t = torch.dot(flat, flat).double()
            eg_t = torch.dot(flat, flat_g).double() * -c
            sums += torch.stack([ee_t, eg_t, ee_t * iv, eg_t * iv])
            if apply:
                p.data.copy_(subset.saved[j])
                p.data.add_(eps.to(p.dtype))
            else:
                values.append(p.detach() + eps.to(p.dtype))
            del eps, flat_g, flat
        ee, eg, ee_s, eg_s = (float(x) for x in sums.tolist())
        log_rhos.append(_log_proposal(config.density, share, ee, eg, gg_sum, ee_s, eg_s, gg_scaled))
        return values

    try:
        module.eval()
        with torch.no_grad():
            if batched:
                held = 0
                for first in range(0, config.num_candidates, group):
                    ks = list(range(first, min(config.num_candidates, first + group)))
                    entries = [candidate(k, apply=False) for k in ks]
                    held = max(held, sum(t.numel() * t.element_size() for e in entries for t in e))
                    if first == 0 and want_current:
                        entries = [None] + entries
                    outs = list(decode_candidates(entries))
                    stats.passes += 1
                    if len(outs) != len(entries):
                        raise MGSTaskError(f"decode_candidates returned {len(outs)} results for {len(entries)} entries")
                    if first == 0 and want_current:
                        stats.task_loss = score(outs.pop(0))
                    losses.extend(score(hyps) for hyps in outs)
                    del entries, outs
                stats.extra_bytes = held
            else:
                subset.save()
                stats.extra_bytes = sum(t.numel() * t.element_size() for t in subset.saved)
                if want_current:
                    stats.task_loss = score(decode())
                    stats.passes += 1
                for k in range(config.num_candidates):
                    candidate(k, apply=True)
                    losses.append(score(decode()))
                    stats.passes += 1
    finally:
        if subset.saved:
            subset.restore()
        module.train(was_training)

    # --- weights: w_k ∝ exp(β (L(θ) − L_k)) / q(ε_k); L(θ) cancels in the softmax
    offset = stats.task_loss if math.isfinite(stats.task_loss) else 0.0
    logits = []
    for loss_k, log_rho in zip(losses, log_rhos):
        if math.isfinite(loss_k):
            logits.append(min(config.beta * (offset - loss_k), 1e16) - log_rho)
        else:
            logits.append(-math.inf)
            stats.dropped += 1
    if config.zero_candidate and math.isfinite(stats.task_loss):
        logits.append(0.0 - _log_proposal(config.density, share, 0.0, 0.0, gg_sum, 0.0, 0.0, gg_scaled))
    stats.candidate_losses = losses
    finite = [x for x in losses if math.isfinite(x)]
    stats.all_worse = bool(finite) and math.isfinite(stats.task_loss) and all(x > stats.task_loss for x in finite)
    norm = _logsumexp(logits)
    if norm == -math.inf:
        subset.release()
        stats.weights = [0.0] * len(logits)
        stats.skipped = True
        stats.seconds = time.perf_counter() - start
        return None, stats
    weights = [math.exp(x - norm) if x != -math.inf else 0.0 for x in logits]
    stats.weights = weights
    w_mle = sum(w for w, m in zip(weights, is_mle) if m)
    stats.mle_weight = w_mle

    # --- d = c·W_mle·g + Σ_k w_k n_k, built in the saved copy's buffers (no longer needed)
    direction = subset.saved or [torch.empty_like(p) for p in params]
    subset.release()
    with torch.no_grad():
        for d, g in zip(direction, grads):
            d.copy_(g).mul_(-c * w_mle)
        del grads
        for k in range(config.num_candidates):
            if weights[k] == 0.0:
                continue
            gen = _generator(params[0].device, seeds[k])
            for d, p, scale in zip(direction, params, scales):
                eps = _noise(p, scale * weights[k], gen)
                d.add_(eps.to(d.dtype))
                del eps
    stats.step_norm = math.sqrt(sum(float(d.float().pow(2).sum().item()) for d in direction))
    stats.seconds = time.perf_counter() - start
    return direction, stats


def mgs_update(
    module: "torch.nn.Module",
    mle_loss: Callable[[], "torch.Tensor"],
    decode: Callable[[], Sequence[Any]],
    task_loss: Callable[[Sequence[Any]], Sequence[float]],
    optimizer: Any,
    config: Optional[MGSConfig] = None,
    *,
    parameters: Optional[List[Tuple[str, "torch.nn.Parameter"]]] = None,
    seed: Optional[int] = None,
) -> UpdateStats:
    """One MGS update of ``module`` in place: ``mgs_search``, then ``−d`` as the gradient of
    the subset, clipped (``config.clip_mode`` / ``clip_threshold``), and ``optimizer.step()``.

    Arguments as for :func:`mgs_search`; optimizer (torch.optim.Optimizer) steps the subset
    from its ``.grad`` (every other parameter's ``.grad`` is set to None first, so the
    optimizer leaves them alone). A skipped search takes no step.
    RETURNS (UpdateStats): losses, weights, decodes, wall-clock, extra memory.
    """
    start = time.perf_counter()
    config = config or MGSConfig()
    named = parameters if parameters is not None else select_parameters(module, config.parameters)
    for p in module.parameters():
        p.grad = None
    direction, stats = mgs_search(module, mle_loss, decode, task_loss, config, parameters=named, seed=seed)
    if direction is not None:
        params = [p for _, p in named]
        for p, d in zip(params, direction):
            p.grad = d.neg_()
        clip_gradients(params, config.clip_mode, config.clip_threshold)
        optimizer.step()
        for p in params:
            p.grad = None
    stats.seconds = time.perf_counter() - start
    return stats


def _log_proposal(
    density: str, share: float, ee: float, eg: float, gg: float, ee_s: float, eg_s: float, gg_s: float
) -> float:
    """log q(ε) of the mixture share·N(g, ·) + (1 − share)·N(0, ·), up to a constant.

    "unit": unit variance (the reference code), "scaled": variance σ_j² per tensor (the
    distribution actually sampled from), "none": 0.
    """
    if density == "none":
        return 0.0
    if density == "unit":
        a, b, c = ee, eg, gg
    else:
        a, b, c = ee_s, eg_s, gg_s
    terms = []
    if share < 1.0:
        terms.append(math.log(1.0 - share) - 0.5 * a)
    if share > 0.0:
        terms.append(math.log(share) - 0.5 * (a - 2.0 * b + c))
    return _logsumexp(terms)


# --------------------------------------------------------------------------------------------
# The task protocol and the updater that runs MGS, PG, MRT or MLE on it
# --------------------------------------------------------------------------------------------
class SequenceTask(Protocol):
    """What the sequence-level updates need from a model and a batch (duck-typed).

    ``decode``/``sample`` return hypotheses in the form the task loss takes (token ids or text);
    ``sample`` returns ``num_samples`` hypotheses per input, grouped by input.
    ``sequence_log_probs`` is differentiable: (B, num_samples) mean token log-probabilities of
    the hypotheses (used by PG / MRT only).

    Optional, for MGS's batched candidates (``MGSConfig.candidate_batch``):
    ``decode_candidates(module, batch, max_length, names, values_list)`` decodes the batch
    once per entry of ``values_list`` (subset values in ``names`` order, or None for the
    current weights) in one pass and returns one hypothesis list per entry;
    ``supports_candidates(module, names)`` says whether it can for that parameter subset.
    """

    def mle_loss(self, module: Any, batch: Any) -> "torch.Tensor": ...

    def decode(self, module: Any, batch: Any, max_length: int) -> List[Any]: ...

    def sample(self, module: Any, batch: Any, max_length: int, num_samples: int) -> List[Any]: ...

    def sequence_log_probs(
        self, module: Any, batch: Any, hypotheses: Sequence[Any], num_samples: int
    ) -> "torch.Tensor": ...

    def references(self, batch: Any) -> List[Any]: ...

    def target_length(self, batch: Any) -> int: ...


class SequenceLevelUpdater:
    """MGS, policy gradient, minimum risk or MLE updates behind one interface.

    task (SequenceTask): the model's MLE loss, decoders and references (see SequenceTask).
    task_loss (Callable): (hypotheses, references) → per-sequence losses (e.g. a registered
        ``kx_spacy.EditDistanceLoss.v1``).
    config (MGSConfig): the method and its settings.

    Two ways to drive it, same update:

    - ``step(module, batch, optimizer)`` for a plain loop: computes the update, writes it into
      the subset's ``.grad``, clips, steps; RETURNS the float logs.
    - ``engine_step(module, batch, ctx)`` for the training engine's ``task.step`` hook
      (``kx_spacy.training.Trainer``): writes the update into the subset's ``.grad`` with
      ``ctx.set_gradients``; the engine clips and steps. RETURNS ``(value, logs)``: the MLE loss
      (MGS, MLE) or the PG / MRT loss; a skipped update returns NaN, which the engine's guard
      turns into a skipped step. Single process only (the candidates are searched per process).
    """

    def __init__(self, task: SequenceTask, task_loss: TaskLoss, config: Optional[MGSConfig] = None):
        import torch

        self.task = task
        self.task_loss = task_loss
        self.config = config or MGSConfig()
        self.config.validate()
        self._coin = torch.Generator()
        self._coin.manual_seed(int(self.config.seed))
        self._ema: Optional[float] = None
        self._updates = 0
        self.last_stats: Optional[UpdateStats] = None

    # -- checkpoint state (the coin's RNG, the EMA baseline, the update count)
    def state_dict(self) -> Dict[str, Any]:
        return {"coin": self._coin.get_state(), "ema": self._ema, "updates": self._updates}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self._coin.set_state(state["coin"])
        self._ema = state.get("ema")
        self._updates = int(state.get("updates", 0))

    def _draw(self) -> Tuple[float, int]:
        import torch

        u = torch.rand((1,), generator=self._coin).item()
        seed = int(torch.randint(0, 2**62, (1,), generator=self._coin).item())
        return u, seed

    def compute(self, module: Any, batch: Any) -> Tuple[List["torch.nn.Parameter"], Optional[List["torch.Tensor"]], UpdateStats]:
        """The update as gradients of the subset: RETURNS (params, grads or None, stats).

        ``grads`` is what ``.grad`` should hold (MGS: ``−d``; PG / MRT / MLE: the gradient of
        their loss), not clipped yet; None when the update is skipped.
        """
        config = self.config
        u, seed = self._draw()
        self._updates += 1
        named = select_parameters(module, config.parameters)
        params = [p for _, p in named]
        method = config.method
        if method == "mle" or (config.mle_mix > 0 and u < config.mle_mix):
            start = time.perf_counter()
            loss = self.task.mle_loss(module, batch)
            stats = UpdateStats(method="mle", mle_loss=float(loss.detach().float().item()))
            grads, stats.grad_norm = gradients(params, loss, clip_mode=None)
            stats.seconds = time.perf_counter() - start
        elif method == "mgs":
            refs = self.task.references(batch)
            budget = decode_budget(self.task.target_length(batch), config)
            many = None
            names = [n for n, _ in named]
            if config.candidate_batch != 1 and callable(getattr(self.task, "decode_candidates", None)) \
                    and getattr(self.task, "supports_candidates", lambda m, n: True)(module, names):
                def many(values_list):
                    return self.task.decode_candidates(module, batch, budget, names, values_list)
            grads, stats = mgs_search(
                module,
                lambda: self.task.mle_loss(module, batch),
                lambda: self.task.decode(module, batch, budget),
                lambda hyps: self.task_loss(hyps, refs),
                config,
                parameters=named,
                seed=seed,
                decode_candidates=many,
            )
            if grads is not None:
                grads = [d.neg_() for d in grads]
        else:
            start = time.perf_counter()
            loss, stats = self._sampled_loss(module, batch, method)
            if loss is None:
                grads = None
            else:
                grads, stats.grad_norm = gradients(params, loss, clip_mode=None)
            stats.seconds = time.perf_counter() - start
        if grads is not None and not all(bool(g.isfinite().all()) for g in grads):
            grads, stats.skipped = None, True
        stats.subset_bytes = sum(p.numel() * p.element_size() for p in params)
        self.last_stats = stats
        return params, grads, stats

    def logs(self, stats: UpdateStats) -> Dict[str, float]:
        """The float logs of an update (``UpdateStats.to_dict`` plus ``mle_step``)."""
        logs = stats.to_dict()
        logs["mle_step"] = float(stats.method == "mle")
        return logs

    def step(self, module: Any, batch: Any, optimizer: Any) -> Dict[str, float]:
        """One update of ``module`` on ``batch`` with ``optimizer``; RETURNS the float logs."""
        start = time.perf_counter()
        for p in module.parameters():
            p.grad = None
        params, grads, stats = self.compute(module, batch)
        if grads is not None:
            for p, g in zip(params, grads):
                p.grad = g
            norm = clip_gradients(params, self.config.clip_mode, self.config.clip_threshold)
            if stats.method != "mgs":
                stats.grad_norm = norm
            optimizer.step()
            for p in params:
                p.grad = None
        stats.seconds = time.perf_counter() - start
        return self.logs(stats)

    def engine_step(self, module: Any, batch: Any, ctx: Any) -> Tuple[float, Dict[str, float]]:
        """The engine's ``task.step`` hook: RETURNS (value, logs); see the class docstring."""
        params, grads, stats = self.compute(module, batch)
        logs = {k: v for k, v in self.logs(stats).items() if math.isfinite(v)}
        if grads is None:
            return math.nan, logs
        ctx.set_gradients(params, grads)
        value = stats.mle_loss if stats.method in ("mgs", "mle") else stats.task_loss
        return (value if math.isfinite(value) else 0.0), logs

    def _sampled_loss(self, module, batch, method: str) -> Tuple[Optional["torch.Tensor"], UpdateStats]:
        """PG (REINFORCE with a baseline) or MRT loss on K + 1 samples per input."""
        import torch

        config = self.config
        stats = UpdateStats(method=method)
        refs = list(self.task.references(batch))
        n_inputs = len(refs)
        n = config.num_candidates + 1
        budget = decode_budget(self.task.target_length(batch), config)
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                greedy = method == "mrt" and config.mrt_include_greedy
                per_input = n - 1 if greedy else n
                samples = list(self.task.sample(module, batch, budget, per_input))
                if len(samples) != n_inputs * per_input:
                    raise MGSTaskError(
                        f"sample() returned {len(samples)} hypotheses for {n_inputs} inputs × {per_input}"
                    )
                if greedy:
                    first = list(self.task.decode(module, batch, budget))
                    stats.decodes += 1
                    stats.passes += 1
                    grouped = []
                    for i in range(n_inputs):
                        grouped.append(first[i])
                        grouped.extend(samples[i * per_input:(i + 1) * per_input])
                    samples = grouped
                stats.decodes += per_input
                stats.passes += 1
                stats.sequences += len(samples)
        finally:
            module.train(was_training)
        rep_refs = [r for r in refs for _ in range(n)]
        values = [float(v) for v in self.task_loss(samples, rep_refs)]
        if len(values) != len(samples):
            raise MGSTaskError(f"The task loss returned {len(values)} values for {len(samples)} sequences")
        cost = torch.tensor(values, dtype=torch.float32).view(n_inputs, n)
        valid = torch.isfinite(cost)
        stats.dropped = int((~valid).sum().item())
        stats.candidate_losses = values
        stats.task_loss = float(cost[valid].mean().item()) if valid.any() else math.nan
        if not valid.any():
            stats.skipped = True
            return None, stats
        cost = torch.where(valid, cost, torch.zeros_like(cost))
        if config.normalize_loss:
            top = cost.abs().max()
            if top > 0:
                cost = cost / top
        logp = self.task.sequence_log_probs(module, batch, samples, n)
        if tuple(logp.shape) != (n_inputs, n):
            raise MGSTaskError(f"sequence_log_probs returned shape {tuple(logp.shape)}, expected {(n_inputs, n)}")
        cost = cost.to(logp.device)
        mask = valid.to(logp.device).float()
        if method == "pg":
            reward = -cost
            if config.pg_baseline == "mean":  # leave-one-out mean of the input's other samples
                counts = mask.sum(1, keepdim=True)
                total = (reward * mask).sum(1, keepdim=True)
                loo = (total - reward) / (counts - 1).clamp(min=1)
                base = torch.where(counts > 1, loo, torch.zeros_like(loo))
            elif config.pg_baseline == "ema":
                mean_r = float((reward * mask).sum().item() / mask.sum().item())
                self._ema = mean_r if self._ema is None else (
                    config.pg_ema_decay * self._ema + (1 - config.pg_ema_decay) * mean_r)
                base = torch.full_like(reward, self._ema)
            else:
                base = torch.zeros_like(reward)
            adv = (reward - base) * mask
            loss = -(adv.detach() * logp).sum() / mask.sum()
        else:  # minimum risk: Q ∝ exp(sharpness · log p) over the input's samples
            scores = (config.mrt_sharpness * logp).masked_fill(mask == 0, -1e9)
            q = torch.softmax(scores, dim=1)
            loss = (q * cost).sum(1).mean()
        return loss, stats
