"""Multi-head linear attention ("Transformers are RNNs", Katharopoulos et al. 2020).

Softmax attention weighs value ``v_j`` for query ``i`` by ``exp(q_i·k_j)``; linear attention
replaces the exponential by a kernel ``φ(q_i)·φ(k_j)``, so that

    y_i = φ(q_i)ᵀ Σ_j φ(k_j) v_jᵀ  /  φ(q_i)ᵀ Σ_j φ(k_j)

costs O(T) instead of O(T²): the sums ``S = Σ φ(k) vᵀ`` (a D×E state) and ``z = Σ φ(k)``
(the normaliser) are shared by every query. In the causal case the sums run over ``j ≤ i`` and
the model is an RNN whose state is ``(S, z)``.

Three forms compute the same function (tests check them against a quadratic reference):

* ``linear_attention(..., causal=False)``: the O(T) form, with a padding mask.
* ``linear_attention(..., causal=True)``: the chunked parallel form for training. The sequence
  is cut into chunks of ``chunk_size``; inside a chunk attention is computed quadratically
  (masked lower triangle), across chunks through the running state. ``algorithm="fused"`` is
  one autograd Function with a hand-written backward (φ(q), φ(k), the intra-chunk scores and
  the chunk states kept from the forward in pooled buffers, the state gradients scanned in
  reverse), worked through block by block over the (batch, head) rows in buffers reused across
  blocks, with blocked scans over chunks, its outputs in the memory of earlier outputs that
  nothing refers to any more (CPU);
  ``algorithm="cumsum"`` computes every chunk's state at once with a cumulative sum over chunks
  (plain autograd, all rows at once); ``algorithm="loop"`` carries the state through a Python
  loop over chunks. None loops over time steps. ``"auto"`` is "fused" on the CPU (the fastest
  there in bench-attention) and "cumsum" elsewhere.
* ``linear_attention_step``: the recurrent form, one position at a time with an O(1) state.

Feature maps live in a registry (``register_feature_map``): ``elu`` (elu + 1, the paper's),
``relu``, ``identity`` and ``separate_softmax`` (Shen et al.: softmax of Q over channels and of
K over positions). The separate softmax normalises K over the *whole* sequence, so a position's
keys depend on future positions: it is not causal, and the causal and recurrent forms refuse it
with a ``FeatureMapError`` (a causal variant would normalise K over the prefix ``j ≤ i``, which
is a different model; it is not provided).

Numerics. The state and normaliser are accumulated in fp32 whatever the input dtype (under
bf16 / fp16 autocast the intra-chunk products stay in half precision on CUDA); on the CPU,
half-precision inputs are computed in fp32 and the output is cast back (CPU half matmuls are
slow and fp16 sums overflow). The denominator is made safe: where ``|d| < eps`` it is replaced
by ``±eps`` (the sign of ``d``, ``+`` for 0), so a feature map that produces negative values
(``identity``) never divides by zero: the result is finite and defined. Padding positions
(``mask`` False) contribute nothing and their outputs are 0; a row that is all padding gives 0.

The modules take ``(batch, length, d_model)`` inputs and a ``(batch, length)`` bool mask (True =
a real token). ``LinearAttention`` and its twin ``SoftmaxAttention`` (torch SDPA, with a KV cache
for step decoding) have identical parameters, so a state dict moves between them.
``TransformerBlock`` is a pre-norm block around either; ``AttentionStack`` a stack of blocks.
Every causal module offers ``forward(x, mask=None, state=None, return_state=False)``,
``init_state(batch)`` and ``step(x_t, state, mask_t=None) -> (y_t, state)``.
"""
from __future__ import annotations

import math
import threading
import weakref
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import AttentionKernelError, AttentionShapeError, FeatureMapError

__all__ = [
    "FeatureMap",
    "register_feature_map",
    "get_feature_map",
    "feature_map_names",
    "linear_attention",
    "linear_attention_step",
    "LinearAttentionState",
    "KVCache",
    "LinearAttention",
    "SoftmaxAttention",
    "make_attention",
    "TransformerBlock",
    "AttentionStack",
    "StackState",
    "fla_available",
    "release_cpu_buffers",
    "set_cpu_buffer_limits",
]

DEFAULT_EPS = 1e-6
DEFAULT_CHUNK = 64
ALGORITHMS = ("auto", "fused", "cumsum", "loop")


# ----------------------------------------------------------------------------- feature maps
class FeatureMap:
    """A kernel feature map φ, applied to queries and keys of shape (B, H, T, D).

    Subclasses set ``name`` and ``causal`` (False when φ(k_j) depends on other positions, so
    that the causal and recurrent forms must refuse it) and override ``query`` and ``key``.
    ``key`` receives the padding mask (B, 1, T, 1) as floats (or None) and must return zeros
    at masked positions.
    """

    name: str = "feature_map"
    causal: bool = True

    def query(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def key(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        out = self.query(x)
        return out if mask is None else out * mask

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class PointwiseFeatureMap(FeatureMap):
    """φ applied elementwise, the same to queries and keys.

    name (str): the registered name.
    fn (Callable[[Tensor], Tensor]): φ.
    fn_ (Optional[Callable[[Tensor], Tensor]]): φ in place (returns its argument), so that the
        fused causal form computes φ in reusable buffers.
    derivative_ (Optional[Callable[[Tensor], Optional[Tensor]]]): turns a tensor holding φ(x)
        into φ'(x) in place (None: φ' = 1 everywhere). Only maps whose derivative is a function
        of their output can give it; without ``fn_`` and ``derivative_`` the fused form
        differentiates φ with autograd instead (slower, same result).
    fn_into (Optional[Callable[[Tensor, Tensor, Tensor], Tensor]]): ``fn_into(x, out, scratch)``
        writes φ(x) into ``out`` (``scratch``: a buffer of x's shape it may overwrite), so that
        the fused form reads x once instead of copying it first (None: copy, then ``fn_``).
    """

    def __init__(self, name: str, fn: Callable[[Tensor], Tensor],
                 fn_: Optional[Callable[[Tensor], Tensor]] = None,
                 derivative_: Optional[Callable[[Tensor], Optional[Tensor]]] = None,
                 fn_into: Optional[Callable[[Tensor, Tensor, Tensor], Tensor]] = None):
        self.name = name
        self.fn = fn
        self.fn_ = fn_
        self.derivative_ = derivative_
        self.fn_into = fn_into

    def query(self, x: Tensor) -> Tensor:
        return self.fn(x)


class SeparateSoftmaxFeatureMap(FeatureMap):
    """Shen et al. (2021): softmax of Q over its channels, softmax of K over positions.

    Each query's weights sum to 1 over channels and each key channel's weights sum to 1 over
    the (unmasked) positions, so every row of the implied attention matrix sums to 1 and the
    normaliser is 1 up to rounding. Not causal (K is normalised over the whole sequence).
    A row whose positions are all masked gives keys of 0 (and an output of 0).
    """

    name = "separate_softmax"
    causal = False

    def query(self, x: Tensor) -> Tensor:
        return torch.softmax(x, dim=-1)

    def key(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        if mask is None:
            return torch.softmax(x, dim=-2)
        valid = mask > 0
        logits = x.masked_fill(~valid, float("-inf"))
        # rows with no valid position: make the softmax finite, then zero it
        any_valid = valid.any(dim=-2, keepdim=True)
        logits = torch.where(any_valid, logits, torch.zeros_like(logits))
        return torch.softmax(logits, dim=-2) * mask


_FEATURE_MAPS: Dict[str, Callable[[], FeatureMap]] = {}


def register_feature_map(name: str) -> Callable:
    """Register a feature-map factory (a callable with no arguments) under ``name``.

    name (str): the name configs use (``feature_map = "name"``).
    RETURNS (Callable): the decorator.
    """

    def decorator(factory: Callable[[], FeatureMap]) -> Callable[[], FeatureMap]:
        _FEATURE_MAPS[name] = factory
        return factory

    return decorator


@register_feature_map("elu")
def _elu_plus_one() -> FeatureMap:
    # φ = elu(x) + 1: φ' = 1 for x > 0 (where φ > 1), exp(x) = φ for x <= 0: φ' = min(φ, 1)
    return PointwiseFeatureMap("elu", lambda x: F.elu(x) + 1.0, _elu_plus_one_, lambda f: f.clamp_(max=1.0),
                               _elu_plus_one_into)


def _elu_plus_one_(x: Tensor) -> Tensor:
    # elu(x) + 1 = exp(min(x, 0)) + max(x, 0): on the CPU a third faster than F.elu_ then + 1
    pos = x.clamp_min(0.0)
    return x.clamp_max_(0.0).exp_().add_(pos)


def _elu_plus_one_into(x: Tensor, out: Tensor, scratch: Tensor) -> Tensor:
    # the same sums as _elu_plus_one_, without a copy of x and without allocating
    torch.clamp_min(x, 0.0, out=scratch)
    return torch.clamp_max(x, 0.0, out=out).exp_().add_(scratch)


@register_feature_map("relu")
def _relu() -> FeatureMap:
    # φ' = 1 where φ > 0, else 0 (torch's convention at 0): sign(φ)
    return PointwiseFeatureMap("relu", F.relu, F.relu_, lambda f: f.sign_(),
                               lambda x, out, scratch: torch.clamp_min(x, 0.0, out=out))


@register_feature_map("identity")
def _identity() -> FeatureMap:
    return PointwiseFeatureMap("identity", lambda x: x, lambda x: x, lambda f: None,
                               lambda x, out, scratch: out.copy_(x))


@register_feature_map("separate_softmax")
def _separate_softmax() -> FeatureMap:
    return SeparateSoftmaxFeatureMap()


def feature_map_names() -> List[str]:
    """The registered feature-map names, sorted."""
    return sorted(_FEATURE_MAPS)


def get_feature_map(feature_map: Union[str, FeatureMap]) -> FeatureMap:
    """Resolve a registered name (or pass a FeatureMap through).

    feature_map (Union[str, FeatureMap]): a registered name or an instance.
    RETURNS (FeatureMap): the feature map.
    """
    if isinstance(feature_map, FeatureMap):
        return feature_map
    if feature_map not in _FEATURE_MAPS:
        raise FeatureMapError(
            f"Unknown feature map {feature_map!r}; registered: {', '.join(feature_map_names())}. "
            "Add one with kx_spacy.models.linear_attention.register_feature_map."
        )
    return _FEATURE_MAPS[feature_map]()


def _require_causal(fmap: FeatureMap) -> None:
    if not fmap.causal:
        raise FeatureMapError(
            f"Feature map {fmap.name!r} is not causal: it normalises keys over the whole "
            "sequence, so a position would see the future. Use it with causal=False, or pick "
            f"a pointwise map ({', '.join(n for n in feature_map_names() if _FEATURE_MAPS[n]().causal)})."
        )


# ----------------------------------------------------------------------------- core
def _safe_denominator(d: Tensor, eps: float) -> Tensor:
    """d where |d| >= eps, else ±eps with d's sign (+ for 0): never 0, never flips sign."""
    sign = torch.where(d < 0, -torch.ones_like(d), torch.ones_like(d))
    return torch.where(d.abs() < eps, sign * eps, d)


def _clamped(d: Tensor, eps: float) -> Optional[Tensor]:
    """The fused form's test for ``_safe_denominator``: the positions where |d| < eps, or None
    when there are none (the usual case; on the CPU the check costs no device sync)."""
    small = d.abs() < eps
    if d.device.type == "cpu" and not bool(small.any()):
        return None
    return small


def _acc(x: Tensor) -> Tensor:
    """x in an accumulation dtype: fp32, or fp64 when x is fp64."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _compute_dtype(x: Tensor) -> torch.dtype:
    if x.device.type != "cuda" and x.dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    if not x.is_floating_point():
        raise AttentionShapeError(f"attention inputs must be floating point, got {x.dtype}")
    return x.dtype


def _check_qkv(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor]) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise AttentionShapeError(
            f"q, k, v must be (batch, heads, length, dim); got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.shape[-1] != k.shape[-1]:
        raise AttentionShapeError(
            f"queries and keys need the same head dim: {q.shape[-1]} != {k.shape[-1]}"
        )
    if q.shape[:3] != k.shape[:3] or k.shape[:3] != v.shape[:3]:
        raise AttentionShapeError(
            f"q, k, v disagree on (batch, heads, length): {tuple(q.shape[:3])}, "
            f"{tuple(k.shape[:3])}, {tuple(v.shape[:3])}"
        )
    if mask is not None and tuple(mask.shape) != (q.shape[0], q.shape[2]):
        raise AttentionShapeError(
            f"mask must be (batch, length) = {(q.shape[0], q.shape[2])}; got {tuple(mask.shape)}"
        )


def _finish(num: Tensor, den: Tensor, normalize: bool, eps: float) -> Tensor:
    if not normalize:
        return num
    return num / _safe_denominator(den, eps).unsqueeze(-1)


def _noncausal(fq: Tensor, fk: Tensor, v: Tensor, normalize: bool, eps: float) -> Tensor:
    fk32 = _acc(fk)
    kv = fk32.transpose(-1, -2) @ _acc(v)                     # (B, H, D, E), fp32
    z = fk32.sum(dim=-2)                                        # (B, H, D)
    fq32 = _acc(fq)
    num = fq32 @ kv
    den = (fq32 * z.unsqueeze(-2)).sum(-1)
    return _finish(num, den, normalize, eps)


def _chunks(x: Tensor, c: int) -> Tensor:
    b, h, t, d = x.shape
    n = -(-t // c)
    if n * c != t:
        x = F.pad(x, (0, 0, 0, n * c - t))
    return x.reshape(b, h, n, c, d)


def _causal_cumsum(fq, fk, v, c, s0, z0, normalize, eps):
    """Chunked causal form; every chunk's incoming state from one cumsum over chunks."""
    if fq.dtype in (torch.float32, torch.float64):
        return _causal_cumsum_fused(fq, fk, v, c, s0, z0, normalize, eps)
    b, h, t, _ = fq.shape
    q, k, vv = _chunks(fq, c), _chunks(fk, c), _chunks(v, c)
    tril = torch.ones(c, c, dtype=torch.bool, device=fq.device).tril()
    a = (q @ k.transpose(-1, -2)).masked_fill(~tril, 0.0)      # (B, H, N, C, C)
    num = _acc(a @ vv)
    den = _acc(a).sum(-1)
    kv = _acc(k.transpose(-1, -2) @ vv)                         # (B, H, N, D, E)
    ks = _acc(k).sum(-2)                                      # (B, H, N, D)
    s_incl = kv.cumsum(dim=2)
    z_incl = ks.cumsum(dim=2)
    s_prev = F.pad(s_incl[:, :, :-1], (0, 0, 0, 0, 1, 0))
    z_prev = F.pad(z_incl[:, :, :-1], (0, 0, 1, 0))
    s_final, z_final = s_incl[:, :, -1], z_incl[:, :, -1]
    if s0 is not None:
        s_prev = s_prev + s0.unsqueeze(2)
        z_prev = z_prev + z0.unsqueeze(2)
        s_final, z_final = s_final + s0, z_final + z0
    q32 = _acc(q)
    num = num + q32 @ s_prev
    den = den + (q32 @ z_prev.unsqueeze(-1)).squeeze(-1)
    out = _finish(num, den, normalize, eps)
    out = out.reshape(b, h, -1, out.shape[-1])[:, :, :t]
    return out, s_final, z_final


def _causal_cumsum_fused(fq, fk, v, c, s0, z0, normalize, eps):
    """The cumsum form for fp32 / fp64 inputs with the normaliser fused into the values.

    A column of ones appended to v makes every product carry its own denominator: a @ [v, 1]
    gives the intra-chunk numerator and normaliser at once, kᵀ[v, 1] the state and z, and
    q @ [S, z] both inter-chunk terms (fewer, larger matmuls; same arithmetic).
    """
    b, h, t, _ = fq.shape
    e = v.shape[-1]
    v1 = torch.cat([v, v.new_ones(b, h, t, 1)], dim=-1)
    q, k, vv = _chunks(fq, c), _chunks(fk, c), _chunks(v1, c)
    tril = torch.ones(c, c, dtype=torch.bool, device=fq.device).tril()
    a = (q @ k.transpose(-1, -2)).masked_fill(~tril, 0.0)      # (B, H, N, C, C)
    s_incl = (k.transpose(-1, -2) @ vv).cumsum(dim=2)          # (B, H, N, D, E + 1)
    s_prev = F.pad(s_incl[:, :, :-1], (0, 0, 0, 0, 1, 0))
    final = s_incl[:, :, -1]
    if s0 is not None:
        init = torch.cat([s0, z0.unsqueeze(-1)], dim=-1)
        s_prev = s_prev + init.unsqueeze(2)
        final = final + init
    o = a @ vv + q @ s_prev
    out = _finish(o[..., :e], o[..., e], normalize, eps)
    out = out.reshape(b, h, -1, e)[:, :, :t]
    return out, final[..., :e], final[..., e]


def _causal_loop(fq, fk, v, c, s0, z0, normalize, eps):
    """Chunked causal form; the state carried through a Python loop over chunks."""
    b, h, t, d = fq.shape
    e = v.shape[-1]
    acc = torch.promote_types(fq.dtype, torch.float32)
    s = s0 if s0 is not None else fq.new_zeros(b, h, d, e, dtype=acc)
    z = z0 if z0 is not None else fq.new_zeros(b, h, d, dtype=acc)
    tril = torch.ones(c, c, dtype=torch.bool, device=fq.device).tril()
    outs = []
    for start in range(0, t, c):
        q = fq[:, :, start:start + c]
        k = fk[:, :, start:start + c]
        vv = v[:, :, start:start + c]
        n = q.shape[2]
        a = (q @ k.transpose(-1, -2)).masked_fill(~tril[:n, :n], 0.0)
        q32 = _acc(q)
        num = _acc(a @ vv) + q32 @ s
        den = _acc(a).sum(-1) + (q32 @ z.unsqueeze(-1)).squeeze(-1)
        outs.append(_finish(num, den, normalize, eps))
        s = s + _acc(k.transpose(-1, -2) @ vv)
        z = z + _acc(k).sum(-2)
    return torch.cat(outs, dim=2), s, z


# ----------------------------------------------------------------------------- fused causal form
# The chunked causal form as one autograd Function with a hand-written backward, computed block by
# block over the (batch × head) rows so that every intermediate of a block stays in the CPU's
# cache, in buffers allocated once per call (fresh large allocations page-fault on every call,
# which costs more than the arithmetic here). When a backward follows, the forward writes φ(q),
# φ(k), the intra-chunk scores and the chunk states into buffers lent from a per-thread pool
# (they go back when the autograd node is freed), so the backward recomputes none of them
# (bench: ~0.77x the fwd+bwd time of recomputing, T = 8192); it scans the state gradients in
# reverse. The normaliser is kept out of the value matmuls (an extra column of ones makes them
# 65 wide, which halves MKL's speed) and computed as (1, D) x (D, C) products (MKL is ~4x slower
# on (C, D) x (D, 1)). The prefix sums over chunks are blocked scans (groups of ~√n chunks),
# log-step for small states: torch.cumsum over a non-innermost dimension is an order of
# magnitude slower than the adds. The outputs (y, and dq, dk, dv in the backward) take the memory
# of earlier outputs that nothing refers to any more (``_output``): a fresh 64 MiB output
# page-faults for ~35 ms on its first write: four of them were ~0.14 s of a ~1 s forward+backward
# at T = 8192. φ is written straight from q and k (``fn_into``). Inside a block, the per-chunk
# products can run over groups of chunks (``_FUSED_GROUP_FLOATS``) to keep them in L2; measured
# here (2 cores, loaded) that was no faster than whole blocks (the 64×64 products are
# compute-bound at ~50 GF/s), so by default a group is the block. Chunk 64 beat 32 and 128 at
# T = 8192, D = 64 (0.69 s vs 0.76 s / 0.80 s forward+backward, one process, CPU time).

_FUSED_BLOCK_FLOATS = 1 << 19     # a block's (rows, length, width) tensors hold about this many floats
_FUSED_GROUP_FLOATS = 1 << 19     # a group's (chunks, chunk, width) tensors: about this many (see above)


def _rows_per_block(rows: int, tp: int, width: int, device: torch.device) -> int:
    if device.type != "cpu":
        return rows
    return max(1, min(rows, _FUSED_BLOCK_FLOATS // max(1, tp * width)))


def _groups(chunks: int, c: int, width: int, device: torch.device):
    """Slices of a block's flattened (rows × chunks) axis: groups of chunks whose per-chunk
    products stay in the CPU's L2 cache from one matmul to the next (the whole block elsewhere)."""
    g = chunks if device.type != "cpu" else max(1, min(chunks, _FUSED_GROUP_FLOATS // max(1, c * width)))
    for j0 in range(0, chunks, g):
        yield slice(j0, min(chunks, j0 + g))


def _blocks(b: int, h: int, rb: int):
    """(b0, b1, h0, h1) rectangles of the (batch, head) grid, rb rows at most (at least 1 row)."""
    if rb >= h:
        nb = max(1, rb // h)
        for b0 in range(0, b, nb):
            yield b0, min(b, b0 + nb), 0, h
    else:
        for bi in range(b):
            for h0 in range(0, h, rb):
                yield bi, bi + 1, h0, min(h, h0 + rb)


_BLOCKED_SCAN_MIN = 1024          # per-chunk elements from which the blocked scan is used


def _scan_(x: Tensor, tmp: Tensor, reverse: bool = False) -> Tensor:
    """Inclusive prefix (or suffix) sums of x along dim 1; x and tmp are overwritten; returns
    whichever of the two holds the result. Large per-chunk slices (the D×E states) use a blocked
    scan in place (about 3 passes over memory instead of log2(n)), small ones log-step passes
    (fewer, larger calls)."""
    n = x.shape[1]
    if n >= 16 and x[0, 0].numel() >= _BLOCKED_SCAN_MIN and _blocked_scan_(x, reverse):
        return x
    src, dst, s = x, tmp, 1
    while s < n:
        if reverse:
            dst[:, n - s:].copy_(src[:, n - s:])
            torch.add(src[:, :n - s], src[:, s:], out=dst[:, :n - s])
        else:
            dst[:, :s].copy_(src[:, :s])
            torch.add(src[:, s:], src[:, :n - s], out=dst[:, s:])
        src, dst, s = dst, src, 2 * s
    return src


def _blocked_scan_(x: Tensor, reverse: bool) -> bool:
    """In-place scan of x along dim 1 in groups of g (a divisor of n near √n): scans inside the
    groups, then along the groups' last (reverse: first) elements, then one broadcast add of the
    preceding group's total. False (x untouched) when n has no divisor in 4 … √n."""
    n = x.shape[1]
    g = max((k for k in range(4, math.isqrt(n) + 1) if n % k == 0), default=0)
    if not g:
        return False
    nb = n // g
    xv = x.view(x.shape[0], nb, g, *x.shape[2:])
    cols = xv.unbind(2)                       # all the views in one call (indexing costs ~10 µs each)
    if reverse:
        for j in range(g - 2, -1, -1):
            cols[j].add_(cols[j + 1])
        ends = cols[0].unbind(1)
        for i in range(nb - 2, -1, -1):
            ends[i].add_(ends[i + 1])
        xv[:, :-1, 1:].add_(xv[:, 1:, :1])
    else:
        for j in range(1, g):
            cols[j].add_(cols[j - 1])
        ends = cols[g - 1].unbind(1)
        for i in range(1, nb):
            ends[i].add_(ends[i - 1])
        xv[:, 1:, :g - 1].add_(xv[:, :-1, g - 1:])
    return True


def _shift_(dst: Tensor, x: Tensor, first: Optional[Tensor], reverse: bool = False) -> Tensor:
    """dst[:, n] = x[:, n - 1] (reverse: x[:, n + 1]); the free end gets ``first`` (or 0)."""
    end = dst[:, -1] if reverse else dst[:, 0]
    if first is None:
        end.zero_()
    else:
        end.copy_(first)
    if x.shape[1] > 1:
        if reverse:
            dst[:, :-1].copy_(x[:, 1:])
        else:
            dst[:, 1:].copy_(x[:, :-1])
    return dst


_WORKSPACE_KEEP_BYTES = 4 << 20   # CPU buffers up to this size are kept between calls
_KEPT = threading.local()


class _Workspace:
    """Named buffers, allocated on first use and reused by every block of a call. On the CPU,
    buffers of at most ``_WORKSPACE_KEEP_BYTES`` are also kept for the next call (per thread,
    per dtype, apart inside inference_mode): a fresh allocation of a few MiB page-faults again on
    every call. A workspace is used only inside one forward or backward, never returned."""

    def __init__(self, like: Tensor):
        self.like = like
        self.bufs: Dict[str, Tensor] = {}
        self.kept: Optional[Dict[str, Tensor]] = None
        if like.device.type == "cpu":
            pool = getattr(_KEPT, "pool", None)
            if pool is None:
                pool = _KEPT.pool = {}
            # buffers made under inference_mode are inference tensors: never reused outside it
            self.kept = pool.setdefault((like.dtype, torch.is_inference_mode_enabled()), {})

    def get(self, name: str, *shape: int, zero: bool = False) -> Tensor:
        numel = math.prod(shape)
        buf = self.bufs.get(name)
        if (buf is None or buf.numel() < numel) and self.kept is not None:
            buf = self.kept.get(name)
        if buf is None or buf.numel() < numel:
            buf = self.like.new_empty(numel)
            if self.kept is not None and numel * buf.element_size() <= _WORKSPACE_KEEP_BYTES:
                self.kept[name] = buf
        self.bufs[name] = buf
        out = buf[:numel].view(*shape)
        return out.zero_() if zero else out


#: the CPU pool of buffers lent to saved intermediates keeps at most this much (per thread, dtype)
_SAVED_POOL_BYTES = 1 << 30
_SAVED = threading.local()


def _saved_pool(dtype: torch.dtype) -> Dict[int, List[Tensor]]:
    pools = getattr(_SAVED, "pools", None)
    if pools is None:
        pools = _SAVED.pools = {}
    return pools.setdefault(dtype, {})


def _lend(like: Tensor, lent: List[Tensor], *shape: int) -> Tensor:
    """A (shape) buffer for an intermediate the backward reads: on the CPU from a pool that gets
    it back when the autograd node that saved it is freed (``_give_back``), because a fresh
    buffer of tens of MiB page-faults on every call (~35 ms per 64 MiB here)."""
    numel = math.prod(shape)
    if like.device.type != "cpu":
        return like.new_empty(shape)
    free = _saved_pool(like.dtype).get(numel)
    buf = free.pop() if free else like.new_empty(numel)
    lent.append(buf)
    return buf.view(*shape)


def _give_back(pool: Dict[int, List[Tensor]], bufs: List[Tensor]) -> None:
    kept = sum(b.numel() * b.element_size() for free in pool.values() for b in free)
    for buf in bufs:
        size = buf.numel() * buf.element_size()
        if kept + size <= _SAVED_POOL_BYTES:
            pool.setdefault(buf.numel(), []).append(buf)
            kept += size


#: the CPU pool of output buffers keeps at most this much (per thread, dtype)
_OUTPUT_POOL_BYTES = 1 << 29
_OUTPUTS = threading.local()
_storage_use_count = getattr(torch._C, "_storage_Use_Count", None)


def _use_count(buf: Tensor) -> int:
    return _storage_use_count(buf.untyped_storage()._cdata)


def _output(like: Tensor, *shape: int) -> Tensor:
    """A new (shape) output tensor: on the CPU, memory of an earlier output that nothing refers to
    any more (the caller dropped it, autograd freed the graph that saved it, ``.grad`` was
    cleared), because fresh memory page-faults on its first write (~35 ms per 64 MiB here; y, dq,
    dk, dv were ~0.14 s of a ~1 s forward+backward at T = 8192). A pooled buffer is handed out only when the
    use count of its storage is what it was when only the pool held it: no tensor, view or
    ``.grad`` still shares it."""
    numel = math.prod(shape)
    if like.device.type != "cpu" or _storage_use_count is None or numel == 0:
        return like.new_empty(shape)
    pools = getattr(_OUTPUTS, "pools", None)
    if pools is None:
        pools = _OUTPUTS.pools = {}
    pool = pools.setdefault((like.dtype, torch.is_inference_mode_enabled()), {})   # see _Workspace
    for buf, alone in pool.get(numel, ()):
        if _use_count(buf) == alone:
            return _on(buf, shape)
    buf = like.new_empty(numel)
    kept = sum(b.numel() for bufs in pool.values() for b, _ in bufs) * buf.element_size()
    if kept + numel * buf.element_size() <= _OUTPUT_POOL_BYTES:
        pool.setdefault(numel, []).append((buf, _use_count(buf)))
    return _on(buf, shape)


def release_cpu_buffers() -> int:
    """Free this thread's CPU buffers kept by the fused causal form between calls (workspace,
    saved intermediates, pooled outputs; up to ~1.5 GiB at long T) and return how many bytes the
    pools held. Call it after a long-sequence job in a process that goes on to other work;
    ``set_cpu_buffer_limits`` caps the pools instead. Buffers still in use are not affected."""
    held = 0
    for local, attr in ((_KEPT, "pool"), (_SAVED, "pools"), (_OUTPUTS, "pools")):
        held += sum(b.numel() * b.element_size() for b in _tensors(getattr(local, attr, None)))
        setattr(local, attr, {})
    return held


def _tensors(pools):
    """Every tensor in a pool structure (nested dicts, lists and (buffer, count) pairs)."""
    if isinstance(pools, Tensor):
        yield pools
    elif isinstance(pools, dict):
        for item in pools.values():
            yield from _tensors(item)
    elif isinstance(pools, (list, tuple)):
        for item in pools:
            yield from _tensors(item)


def set_cpu_buffer_limits(saved_bytes: Optional[int] = None, output_bytes: Optional[int] = None,
                          workspace_bytes: Optional[int] = None) -> None:
    """Cap what the fused causal form keeps between calls, per thread and dtype (0: keep
    nothing, every call allocates afresh: slower at long T, by the page faults of new memory)."""
    global _SAVED_POOL_BYTES, _OUTPUT_POOL_BYTES, _WORKSPACE_KEEP_BYTES
    for name, value in (("saved_bytes", saved_bytes), ("output_bytes", output_bytes),
                        ("workspace_bytes", workspace_bytes)):
        if value is not None and (not isinstance(value, int) or value < 0):
            raise AttentionKernelError(f"{name} must be a non-negative int, not {value!r}")
    if saved_bytes is not None:
        _SAVED_POOL_BYTES = saved_bytes
    if output_bytes is not None:
        _OUTPUT_POOL_BYTES = output_bytes
    if workspace_bytes is not None:
        _WORKSPACE_KEEP_BYTES = workspace_bytes


def _on(buf: Tensor, shape) -> Tensor:
    # a tensor on buf's storage that is not a view of buf (autograd would refuse in-place
    # changes of a view created inside a custom Function)
    return buf.new_empty(0).set_(buf.untyped_storage(), 0, shape)


def _load_features(ws: _Workspace, name: str, x: Tensor, fmap: "PointwiseFeatureMap", tp: int,
                   mask: Optional[Tensor], out: Optional[Tensor] = None) -> Tensor:
    """φ(x) (times the mask) for a (Bb, Hh, T, D) block, into a (Bb·Hh, tp, D) buffer (``out``, a
    contiguous (Bb, Hh, tp, D) tensor, or the workspace's) whose tail beyond T is 0."""
    bb, hh, t, d = x.shape
    buf = ws.get(name, bb * hh, tp, d) if out is None else out.view(bb * hh, tp, d)
    view = buf.view(bb, hh, tp, d)
    if getattr(fmap, "fn_into", None) is not None:
        fmap.fn_into(x, view[:, :, :t], ws.get("scratch", bb, hh, t, d))
    else:
        view[:, :, :t].copy_(x)
        fmap.fn_(buf)
    if tp != t:
        view[:, :, t:].zero_()
    if mask is not None:
        view[:, :, :t].mul_(mask)
    return buf


def _load_values(ws: _Workspace, v: Tensor, tp: int) -> Tensor:
    bb, hh, t, e = v.shape
    if tp == t and v.is_contiguous():
        return v.view(bb * hh, t, e)
    buf = ws.get("v", bb * hh, tp, e)
    view = buf.view(bb, hh, tp, e)
    view[:, :, :t].copy_(v)
    if tp != t:
        view[:, :, t:].zero_()
    return buf


def _fused_states(ws: _Workspace, fk: Tensor, vc: Tensor, r: int, n: int, s0: Optional[Tensor],
                  z0: Optional[Tensor], prev_out: Optional[Tensor] = None,
                  zprev_out: Optional[Tensor] = None):
    """Per-chunk kv (r, n, D, E), key sums (r, n, D), and the states before each chunk (into
    ``prev_out`` / ``zprev_out`` when given)."""
    c, d = fk.shape[1], fk.shape[2]
    e = vc.shape[2]
    kv = torch.bmm(fk.transpose(1, 2), vc, out=ws.get("kv", r * n, d, e)).view(r, n, d, e)
    ks = torch.sum(fk.view(r, n, c, d), 2, out=ws.get("ks", r, n, d))
    pbuf = ws.get("prev", r, n, d, e) if prev_out is None else prev_out.view(r, n, d, e)
    prev = _scan_(_shift_(pbuf, kv, s0), ws.get("scan", r, n, d, e))
    zbuf = ws.get("zprev", r, n, d) if zprev_out is None else zprev_out.view(r, n, d)
    zprev = _scan_(_shift_(zbuf, ks, z0), ws.get("zscan", r, n, d))
    if prev.data_ptr() != pbuf.data_ptr():
        prev = pbuf.copy_(prev)
    if zprev.data_ptr() != zbuf.data_ptr():
        zprev = zbuf.copy_(zprev)
    return kv, ks, prev, zprev


def _flat_mask(ws: _Workspace, mb: Optional[Tensor], bb: int, hh: int, t: int, tp: int, c: int) -> Optional[Tensor]:
    """The (Bb, 1, T, 1) padding mask of a block as (Bb·Hh·n, C, 1), one row per flattened chunk
    row, 0 beyond T (None without a mask)."""
    if mb is None:
        return None
    buf = ws.get("mask", bb, hh, tp, 1)
    buf[:, :, :t].copy_(mb.expand(bb, hh, t, 1))
    if tp != t:
        buf[:, :, t:].zero_()
    return buf.view(-1, c, 1)


def _feature_grad_(fmap: "PointwiseFeatureMap", ws: _Workspace, feats: Tensor, dfeat: Tensor,
                   mask: Optional[Tensor]) -> None:
    """dfeat *= φ'(x) (· mask) in place, φ' from a copy of the saved φ ``feats`` (the saved
    tensors stay intact for a second backward)."""
    deriv = fmap.derivative_(ws.get("phi", *feats.shape).copy_(feats))
    if deriv is not None:
        dfeat.mul_(deriv)
    if mask is not None:
        dfeat.mul_(mask)


class _FusedCausal(torch.autograd.Function):
    """Chunked causal linear attention on (B, H, T, D) inputs before the feature map. With
    ``save`` (a backward will follow) the forward keeps φ(q), φ(k), the intra-chunk scores and
    the chunk states (pooled buffers) for the backward instead of recomputing them there."""

    @staticmethod
    def forward(ctx, q, k, v, m, s0, z0, fmap, c, normalize, eps, save):
        b, h, t, d = q.shape
        e = v.shape[-1]
        n = -(-t // c)
        tp = n * c
        y = _output(v, b, h, t, e)
        s_fin = v.new_empty(b, h, d, e)
        z_fin = v.new_empty(b, h, d)
        ws = _Workspace(v)
        lent: List[Tensor] = []
        if save:
            sfq, sfk = _lend(v, lent, b, h, tp, d), _lend(v, lent, b, h, tp, d)
            sa, sprev, szprev = (_lend(v, lent, b, h, n, c, c), _lend(v, lent, b, h, n, d, e),
                                 _lend(v, lent, b, h, n, d))
        den_all = _lend(v, lent, b, h, tp) if save else None
        for b0, b1, h0, h1 in _blocks(b, h, _rows_per_block(b * h, tp, max(d, e), q.device)):
            bb, hh = b1 - b0, h1 - h0
            r = bb * hh
            mb = None if m is None else m[b0:b1]
            blk = (slice(b0, b1), slice(h0, h1))
            fq = _load_features(ws, "fq", q[blk], fmap, tp, None, sfq[blk] if save else None).view(r * n, c, d)
            fk = _load_features(ws, "fk", k[blk], fmap, tp, mb, sfk[blk] if save else None).view(r * n, c, d)
            vc = _load_values(ws, v[blk], tp).view(r * n, c, e)
            kv, ks, prev, zprev = _fused_states(ws, fk, vc, r, n, _rows(s0, b0, b1, h0, h1),
                                                _rows(z0, b0, b1, h0, h1), sprev[blk] if save else None,
                                                szprev[blk] if save else None)
            torch.add(prev[:, -1], kv[:, -1], out=s_fin[blk].view(r, d, e))
            torch.add(zprev[:, -1], ks[:, -1], out=z_fin[blk].view(r, d))
            prev, zprev = prev.view(r * n, d, e), zprev.view(r * n, 1, d)
            sab = sa[blk].view(r * n, c, c) if save else None
            yb = y[blk]
            ob = yb.view(r * n, c, e) if tp == t else ws.get("o", r * n, c, e)
            denb = den_all[blk].view(r * n, c) if save else ws.get("den", r * n, c)
            mk = _flat_mask(ws, mb, bb, hh, t, tp, c)
            # chunk by chunk group: the scores, the output and the normaliser while φ(q) is in cache
            for sl in _groups(r * n, c, max(c, d, e), q.device):
                nc = sl.stop - sl.start
                fq_g = fq[sl]
                a = torch.bmm(fq_g, fk[sl].transpose(1, 2),
                              out=sab[sl] if save else ws.get("a", nc, c, c)).tril_()
                o = torch.bmm(fq_g, prev[sl], out=ob[sl]).baddbmm_(a, vc[sl])
                # φ(q)·z as a (1, D) x (D, C) product per chunk: MKL is ~4x slower on (C, D) x (D, 1)
                den = torch.bmm(zprev[sl], fq_g.transpose(1, 2), out=denb[sl].view(nc, 1, c)).view(nc, c)
                den.add_(torch.sum(a, -1, out=ws.get("asum", nc, c)))
                if normalize:
                    o.div_((den if _clamped(den, eps) is None else _safe_denominator(den, eps)).unsqueeze(-1))
                if mk is not None:
                    o.mul_(mk[sl])
            if tp != t:
                yb.copy_(ob.view(bb, hh, tp, e)[:, :, :t])
        if save:
            # q and k only for maps without a derivative (φ' by autograd from x)
            qk = (q, k) if fmap.derivative_ is None else (None, None)
            ctx.save_for_backward(*qk, v, m, s0, z0, y, den_all, sfq, sfk, sa, sprev, szprev)
            if lent:
                weakref.finalize(ctx, _give_back, _saved_pool(v.dtype), lent)
        ctx.cfg = (fmap, c, normalize, eps, t)
        return y, s_fin, z_fin

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy, gs_fin, gz_fin):
        q, k, v, m, s0, z0, y, den_all, sfq, sfk, sa, sprev, szprev = ctx.saved_tensors
        fmap, c, normalize, eps, t = ctx.cfg
        b, h, tp, d = sfq.shape
        e = v.shape[-1]
        n = tp // c
        need_q, need_k, need_v, _, need_s0, need_z0 = ctx.needs_input_grad[:6]
        dq = _output(v, b, h, t, d) if need_q else None
        dk = _output(v, b, h, t, d) if need_k else None
        dv = _output(v, *v.shape) if need_v else None
        ds0 = s0.new_empty(s0.shape) if need_s0 else None
        dz0 = z0.new_empty(z0.shape) if need_z0 else None
        if gy is None:
            gy = y.new_zeros(()).expand(y.shape)
        chain = fmap.derivative_ is not None          # φ' inside the group loop, else by autograd
        ws = _Workspace(v)
        for b0, b1, h0, h1 in _blocks(b, h, _rows_per_block(b * h, tp, max(d, e), v.device)):
            r = (b1 - b0) * (h1 - h0)
            bb, hh = b1 - b0, h1 - h0
            blk = (slice(b0, b1), slice(h0, h1))
            mb = None if m is None else m[b0:b1]
            fq, fk = sfq[blk].view(r * n, c, d), sfk[blk].view(r * n, c, d)
            vc = _load_values(ws, v[blk], tp).view(r * n, c, e)
            a = sa[blk].view(r * n, c, c)
            prev, zprev = sprev[blk].view(r * n, d, e), szprev[blk].view(r * n, 1, d)
            # the gradients of the numerator (go) and of the denominator (gden), 0 beyond T
            g = gy[blk]
            if mb is not None:
                g = torch.mul(g, mb, out=ws.get("g", bb, hh, t, e))
            go = ws.get("go", bb, hh, tp, e)
            gden = None
            if normalize:
                raw = den_all[blk][:, :, :t].unsqueeze(-1)
                small = _clamped(raw, eps)
                den = raw if small is None else _safe_denominator(raw, eps)
                torch.div(g, den, out=go[:, :, :t])
                gden = ws.get("gden", bb, hh, tp, 1)
                gy_ = torch.mul(g, y[blk], out=ws.get("gy", bb, hh, t, e))
                torch.sum(gy_, -1, keepdim=True, out=gden[:, :, :t])
                gden[:, :, :t].div_(den).neg_()
                if small is not None:
                    gden[:, :, :t].masked_fill_(small, 0.0)                   # clamped: a constant
                if tp != t:
                    gden[:, :, t:].zero_()
                gden = gden.view(r * n, c, 1)
            else:
                go[:, :, :t].copy_(g)
            if tp != t:
                go[:, :, t:].zero_()
            go = go.view(r * n, c, e)
            # state gradients: gs[n] = dS_final + Σ_{m>n} q_mᵀ go_m (the same for z)
            ds = torch.bmm(fq.transpose(1, 2), go, out=ws.get("ds", r * n, d, e)).view(r, n, d, e)
            gs = _scan_(_shift_(ws.get("gs", r, n, d, e), ds, None, reverse=True),
                        ws.get("gscan", r, n, d, e), reverse=True)
            if gs_fin is not None:
                gs += gs_fin[blk].reshape(r, 1, d, e)
            if ds0 is not None:
                torch.add(gs[:, 0], ds[:, 0], out=ds0[blk].view(r, d, e))
            gz = None
            if gden is not None or gz_fin is not None:
                dz = ws.get("dz", r, n, d, zero=gden is None)
                if gden is not None:                    # (1, C) x (C, D): see the forward's den
                    torch.bmm(gden.transpose(1, 2), fq, out=dz.view(r * n, 1, d))
                gz = _scan_(_shift_(ws.get("gz", r, n, d), dz, None, reverse=True),
                            ws.get("gzscan", r, n, d), reverse=True)
                if gz_fin is not None:
                    gz += gz_fin[blk].reshape(r, 1, d)
                if dz0 is not None:
                    torch.add(gz[:, 0], dz[:, 0], out=dz0[blk].view(r, d))
                gz = gz.view(r * n, 1, d)
            elif dz0 is not None:
                dz0[blk] = 0.0
            gs = gs.view(r * n, d, e)
            dvb = None if dv is None else dv[blk].view(r * n, c, e) if tp == t else ws.get("dv", r * n, c, e)
            dkb = None if dk is None else dk[blk].view(r * n, c, d) if tp == t else ws.get("dk", r * n, c, d)
            dqb = None if dq is None else dq[blk].view(r * n, c, d) if tp == t else ws.get("dq", r * n, c, d)
            mk = _flat_mask(ws, mb, bb, hh, t, tp, c) if chain and dk is not None else None
            # chunk by chunk group: every product of a group's go, v, φ(q), φ(k) while they are in cache
            for sl in _groups(r * n, c, max(c, d, e), v.device):
                nc = sl.stop - sl.start
                go_g, v_g, fq_g, fk_g = go[sl], vc[sl], fq[sl], fk[sl]
                dp = torch.bmm(go_g, v_g.transpose(1, 2), out=ws.get("dp", nc, c, c))
                if gden is not None:
                    dp += gden[sl]
                dp.tril_()
                if dvb is not None:
                    torch.bmm(a[sl].transpose(1, 2), go_g, out=dvb[sl]).baddbmm_(fk_g, gs[sl])
                if dkb is not None:
                    dfk = torch.bmm(dp.transpose(1, 2), fq_g, out=dkb[sl]).baddbmm_(v_g, gs[sl].transpose(1, 2))
                    if gz is not None:
                        dfk += gz[sl]
                    if chain:
                        _feature_grad_(fmap, ws, fk_g, dfk, None if mk is None else mk[sl])
                if dqb is not None:
                    dfq = torch.bmm(dp, fk_g, out=dqb[sl]).baddbmm_(go_g, prev[sl].transpose(1, 2))
                    if gden is not None:
                        dfq.baddbmm_(gden[sl], zprev[sl])
                    if chain:
                        _feature_grad_(fmap, ws, fq_g, dfq, None)
            for grad, buf, x, mask in ((dv, dvb, None, None), (dk, dkb, k, mb), (dq, dqb, q, None)):
                if buf is None:
                    continue
                full = buf.view(bb, hh, tp, buf.shape[-1])
                if x is not None and not chain:
                    _chain_feature_grad(fmap, full, x[blk], mask, t, grad[blk])
                elif tp != t:
                    grad[blk] = full[:, :, :t]
        return dq, dk, dv, None, ds0, dz0, None, None, None, None, None


def _rows(x: Optional[Tensor], b0: int, b1: int, h0: int, h1: int) -> Optional[Tensor]:
    """A (Bb, Hh, ...) block of a state tensor as (Bb·Hh, ...)."""
    if x is None:
        return None
    blk = x[b0:b1, h0:h1]
    return blk.reshape(-1, *blk.shape[2:])


def _chain_feature_grad(fmap, dfeat: Tensor, x: Tensor, mask: Optional[Tensor], t: int, out: Tensor) -> None:
    """out = dfeat · φ'(x) (· mask), (Bb, Hh, T, D), for maps without ``derivative_``: autograd
    through φ."""
    dfeat = dfeat[:, :, :t]
    with torch.enable_grad():
        xb = x.detach().requires_grad_()
        f = fmap.query(xb)
        if mask is not None:
            f = f * mask
        (grad,) = torch.autograd.grad(f, xb, dfeat)
    out.copy_(grad)


def _fused_supported(fmap: FeatureMap) -> bool:
    return isinstance(fmap, PointwiseFeatureMap) and fmap.fn_ is not None


def _causal_fused(q, k, v, fmap, c, m, s0, z0, normalize, eps):
    """The fused form on (B, H, T, D) inputs before the feature map; returns (out, S, z)."""
    save = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (q, k, v, s0, z0))
    return _FusedCausal.apply(q, k, v, m, s0, z0, fmap, c, normalize, eps, save)


def _auto_algorithm(device: torch.device) -> str:
    # CPU: the fused form (bench-attention: ~2x the cumsum form forward and forward+backward at
    # T = 8192, which beats the loop over chunks); elsewhere the batched cumsum form (on a GPU the
    # per-block work is too small to fill the device; no GPU measured yet).
    return "fused" if device.type == "cpu" else "cumsum"


@dataclass
class LinearAttentionState:
    """The recurrent state of causal linear attention: S = Σ φ(k) vᵀ and z = Σ φ(k), fp32.

    kv (Tensor): (batch, heads, key dim, value dim).
    z (Tensor): (batch, heads, key dim).
    """

    kv: Tensor
    z: Tensor

    def index_select(self, index: Tensor) -> "LinearAttentionState":
        """Rows of the batch in a new order (beam search)."""
        return LinearAttentionState(self.kv.index_select(0, index), self.z.index_select(0, index))


def linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    feature_map: Union[str, FeatureMap] = "elu",
    causal: bool = False,
    mask: Optional[Tensor] = None,
    chunk_size: int = DEFAULT_CHUNK,
    eps: float = DEFAULT_EPS,
    normalize: bool = True,
    state: Optional[LinearAttentionState] = None,
    return_state: bool = False,
    algorithm: str = "auto",
):
    """Multi-head linear attention over (batch, heads, length, dim) tensors.

    q (Tensor): queries (B, H, T, D), before the feature map.
    k (Tensor): keys (B, H, T, D), before the feature map.
    v (Tensor): values (B, H, T, E).
    feature_map (Union[str, FeatureMap]): a registered name or a FeatureMap.
    causal (bool): position i attends to j ≤ i only (chunked parallel form).
    mask (Optional[Tensor]): (B, T) bool, True for real tokens; padding contributes nothing
        and its outputs are 0.
    chunk_size (int): chunk length of the causal form (any T works; the last chunk is padded).
    eps (float): the smallest |denominator| (see the module docstring).
    normalize (bool): divide by φ(q)·Σφ(k); False gives the unnormalised sum (as fla's
        normalize=False), usually combined with an output norm.
    state (Optional[LinearAttentionState]): causal only: the state after a prefix, so that this
        call continues it (prefill, then ``linear_attention_step``).
    return_state (bool): causal only: also return the state after the last position.
    algorithm (str): causal only: "fused" (one autograd Function with a hand-written backward,
        blocked over heads; fp32 / fp64, else "cumsum"), "cumsum" (batched over chunks), "loop"
        (loop over chunks) or "auto" ("fused" on the CPU, "cumsum" elsewhere).
    RETURNS (Tensor or Tuple[Tensor, LinearAttentionState]): (B, H, T, E) in v's dtype.
    """
    _check_qkv(q, k, v, mask)
    fmap = get_feature_map(feature_map)
    if causal:
        _require_causal(fmap)
    elif state is not None or return_state:
        raise AttentionShapeError("state / return_state exist only in the causal form")
    if chunk_size < 1:
        raise AttentionShapeError(f"chunk_size must be >= 1, got {chunk_size}")
    if algorithm not in ALGORITHMS:
        raise AttentionKernelError(f"algorithm must be one of {', '.join(ALGORITHMS)}, not {algorithm!r}")
    b, h, t, d = q.shape
    e = v.shape[-1]
    out_dtype = v.dtype
    cd = _compute_dtype(q)
    if state is not None:
        if tuple(state.kv.shape) != (b, h, d, e) or tuple(state.z.shape) != (b, h, d):
            raise AttentionShapeError(
                f"state of shape {tuple(state.kv.shape)} does not fit (B, H, D, E) = {(b, h, d, e)}"
            )
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, k, v = q.to(cd), k.to(cd), v.to(cd)
        m = None if mask is None else mask.to(device=q.device, dtype=cd)[:, None, :, None]
        if t == 0:
            out = v.new_zeros(b, h, 0, e)
            if not return_state:
                return out.to(out_dtype)
            st = state or LinearAttentionState(
                q.new_zeros(b, h, d, e, dtype=torch.float32), q.new_zeros(b, h, d, dtype=torch.float32)
            )
            return out.to(out_dtype), st
        algo = _auto_algorithm(q.device) if algorithm == "auto" else algorithm
        if causal and algo == "fused" and cd in (torch.float32, torch.float64):
            # φ inside the fused form when it has an in-place form; else φ first, then identity
            if not _fused_supported(fmap):
                q, k, fmap = fmap.query(q), fmap.key(k, m), get_feature_map("identity")
            s0 = None if state is None else state.kv.to(cd)
            z0 = None if state is None else state.z.to(cd)
            out, s_final, z_final = _causal_fused(q, k, v, fmap, min(chunk_size, t), m, s0, z0,
                                                  normalize, eps)
            final = LinearAttentionState(s_final, z_final)
        else:
            algo = "cumsum" if algo == "fused" else algo       # half precision on CUDA
            fq = fmap.query(q)
            fk = fmap.key(k, m)
            if not causal:
                out = _noncausal(fq, fk, v, normalize, eps)
                final = None
            else:
                c = min(chunk_size, t)
                fn = _causal_cumsum if algo == "cumsum" else _causal_loop
                s0 = None if state is None else _acc(state.kv)
                z0 = None if state is None else _acc(state.z)
                out, s_final, z_final = fn(fq, fk, v, c, s0, z0, normalize, eps)
                final = LinearAttentionState(s_final, z_final)
            if m is not None:
                out = out * m
    out = out.to(out_dtype)
    return (out, final) if return_state else out


def linear_attention_step(
    q_t: Tensor,
    k_t: Tensor,
    v_t: Tensor,
    state: LinearAttentionState,
    *,
    feature_map: Union[str, FeatureMap] = "elu",
    mask_t: Optional[Tensor] = None,
    eps: float = DEFAULT_EPS,
    normalize: bool = True,
) -> Tuple[Tensor, LinearAttentionState]:
    """One step of causal linear attention: the recurrent form, O(1) in the position.

    q_t (Tensor): the query at this position, (B, H, D), before the feature map.
    k_t (Tensor): the key (B, H, D).
    v_t (Tensor): the value (B, H, E).
    state (LinearAttentionState): the state after the previous positions.
    feature_map (Union[str, FeatureMap]): must be causal.
    mask_t (Optional[Tensor]): (B,) bool; False: a padding position (state unchanged, output 0).
    eps (float): the smallest |denominator|.
    normalize (bool): as in ``linear_attention``.
    RETURNS (Tuple[Tensor, LinearAttentionState]): y_t (B, H, E) in v_t's dtype, the new state.
    """
    fmap = get_feature_map(feature_map)
    _require_causal(fmap)
    if q_t.dim() != 3 or k_t.shape != q_t.shape or v_t.shape[:2] != q_t.shape[:2]:
        raise AttentionShapeError(
            f"step inputs must be (B, H, D), (B, H, D), (B, H, E); got {tuple(q_t.shape)}, "
            f"{tuple(k_t.shape)}, {tuple(v_t.shape)}"
        )
    b, h, d = q_t.shape
    e = v_t.shape[-1]
    if tuple(state.kv.shape) != (b, h, d, e):
        raise AttentionShapeError(f"state {tuple(state.kv.shape)} does not fit {(b, h, d, e)}")
    out_dtype = v_t.dtype
    with torch.autocast(device_type=q_t.device.type, enabled=False):
        fq = _acc(fmap.query(q_t.unsqueeze(2)).squeeze(2))
        fk = _acc(fmap.query(k_t.unsqueeze(2)).squeeze(2))
        v32 = _acc(v_t)
        if mask_t is not None:
            m = mask_t.to(device=q_t.device, dtype=torch.float32)[:, None, None]
            fk = fk * m
        kv = state.kv + fk.unsqueeze(-1) * v32.unsqueeze(-2)
        z = state.z + fk
        num = (fq.unsqueeze(-2) @ kv).squeeze(-2)
        den = (fq * z).sum(-1)
        y = _finish(num, den, normalize, eps)
        if mask_t is not None:
            y = y * m
    return y.to(out_dtype), LinearAttentionState(kv, z)


# ----------------------------------------------------------------------------- fla (optional)
def fla_available() -> bool:
    """True when fla-core (flash-linear-attention) imports and a CUDA device is present."""
    if not torch.cuda.is_available():
        return False
    try:
        from fla.ops.linear_attn import chunk_linear_attn  # noqa: F401
    except Exception:  # ImportError, or a Triton / CUDA mismatch at import
        return False
    return True


def _fla_causal(fq: Tensor, fk: Tensor, v: Tensor, normalize: bool) -> Tensor:
    """fla's chunk_linear_attn on feature-mapped q, k (B, H, T, D); returns (B, H, T, E)."""
    from fla.ops.linear_attn import chunk_linear_attn

    dtype = torch.bfloat16 if fq.dtype == torch.float32 else fq.dtype
    q, k, vv = (x.transpose(1, 2).to(dtype).contiguous() for x in (fq, fk, v))
    # scale cancels when normalize=True; fla adds 1e-10 to the denominator (we use max(d, eps))
    o, _ = chunk_linear_attn(q, k, vv, scale=1.0, normalize=normalize)
    return o.transpose(1, 2)


# ----------------------------------------------------------------------------- modules
class _Projections(nn.Module):
    """q, k, v, out projections shared (by name and shape) by both attention kinds."""

    def __init__(self, d_model: int, n_heads: int, head_dim: Optional[int], value_dim: Optional[int], bias: bool):
        super().__init__()
        if d_model < 1 or n_heads < 1:
            raise AttentionShapeError(f"d_model and n_heads must be >= 1, got {d_model}, {n_heads}")
        if head_dim is None or value_dim is None:
            if d_model % n_heads:
                raise AttentionShapeError(
                    f"d_model {d_model} is not divisible by n_heads {n_heads}; give head_dim"
                )
        self.d_model = d_model
        self.n_heads = n_heads
        self.head_dim = head_dim or d_model // n_heads
        self.value_dim = value_dim or d_model // n_heads
        self.q_proj = nn.Linear(d_model, n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(d_model, n_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(d_model, n_heads * self.value_dim, bias=bias)
        self.out_proj = nn.Linear(n_heads * self.value_dim, d_model, bias=bias)

    def _check_input(self, x: Tensor, mask: Optional[Tensor]) -> None:
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise AttentionShapeError(
                f"expected (batch, length, {self.d_model}); got {tuple(x.shape)}"
            )
        if mask is not None and tuple(mask.shape) != tuple(x.shape[:2]):
            raise AttentionShapeError(
                f"mask must be (batch, length) = {tuple(x.shape[:2])}; got {tuple(mask.shape)}"
            )

    def _qkv(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_heads, self.value_dim).transpose(1, 2)
        return q, k, v

    def _qkv_step(self, x_t: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        if x_t.dim() != 2 or x_t.shape[-1] != self.d_model:
            raise AttentionShapeError(f"step input must be (batch, {self.d_model}); got {tuple(x_t.shape)}")
        b = x_t.shape[0]
        q = self.q_proj(x_t).view(b, self.n_heads, self.head_dim)
        k = self.k_proj(x_t).view(b, self.n_heads, self.head_dim)
        v = self.v_proj(x_t).view(b, self.n_heads, self.value_dim)
        return q, k, v


class LinearAttention(_Projections):
    """Multi-head linear attention, causal or not.

    d_model (int): input and output width.
    n_heads (int): number of heads.
    head_dim (Optional[int]): query/key width per head (default d_model // n_heads).
    value_dim (Optional[int]): value width per head (default d_model // n_heads).
    feature_map (Union[str, FeatureMap]): registered name ("elu", "relu", "identity",
        "separate_softmax" (non-causal only)) or a FeatureMap.
    causal (bool): attend to the past only; enables ``step`` / ``init_state``.
    chunk_size (int): chunk length of the causal parallel form.
    eps (float): the smallest |denominator|.
    normalize (bool): divide by φ(q)·Σφ(k).
    output_norm (bool): an RMSNorm over each head's output before the out projection (fla).
    bias (bool): biases in the projections.
    kernel (str): "torch" (pure torch, any device) or "fla" (fla-core's chunk_linear_attn; needs
        fla-core and CUDA, causal only, no padding mask inside a row beyond zeroing keys).
    algorithm (str): "auto", "fused", "cumsum" or "loop" (the causal torch form).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        head_dim: Optional[int] = None,
        value_dim: Optional[int] = None,
        feature_map: Union[str, FeatureMap] = "elu",
        causal: bool = False,
        chunk_size: int = DEFAULT_CHUNK,
        eps: float = DEFAULT_EPS,
        normalize: bool = True,
        output_norm: bool = False,
        bias: bool = False,
        kernel: str = "torch",
        algorithm: str = "auto",
    ):
        super().__init__(d_model, n_heads, head_dim, value_dim, bias)
        self.feature_map = get_feature_map(feature_map)
        if causal:
            _require_causal(self.feature_map)
        if kernel not in ("torch", "fla"):
            raise AttentionKernelError(f"kernel must be 'torch' or 'fla', not {kernel!r}")
        if kernel == "fla" and not causal:
            raise AttentionKernelError("kernel='fla' supports the causal form only")
        if chunk_size < 1:
            raise AttentionShapeError(f"chunk_size must be >= 1, got {chunk_size}")
        self.causal = causal
        self.chunk_size = chunk_size
        self.eps = eps
        self.normalize = normalize
        self.kernel = kernel
        self.algorithm = algorithm
        self.norm = nn.RMSNorm(self.value_dim, eps=1e-5) if output_norm else None

    def _head_norm(self, o: Tensor) -> Tensor:
        return o if self.norm is None else self.norm(o)

    def forward(
        self,
        x: Tensor,
        mask: Optional[Tensor] = None,
        state: Optional[LinearAttentionState] = None,
        return_state: bool = False,
    ):
        """x (Tensor): (B, T, d_model). mask (Optional[Tensor]): (B, T) bool.
        state / return_state: causal only, as in ``linear_attention``.
        RETURNS (Tensor or Tuple[Tensor, LinearAttentionState]): (B, T, d_model).
        """
        self._check_input(x, mask)
        q, k, v = self._qkv(x)
        # fla refuses sequences shorter than the number of heads (it takes them for a wrong
        # layout): those, prefill with a state, and T = 0 take the torch path
        if self.kernel == "fla" and state is None and not return_state and x.shape[1] >= self.n_heads:
            if not (x.is_cuda and fla_available()):
                raise AttentionKernelError(
                    "kernel='fla' needs fla-core installed and a CUDA tensor; use kernel='torch'"
                )
            m = None if mask is None else mask.to(q.dtype)[:, None, :, None]
            fq = self.feature_map.query(q)
            fk = self.feature_map.key(k, m)
            o = _fla_causal(fq, fk, v, self.normalize).to(v.dtype)
            if m is not None:
                o = o * m
            final = None
        else:
            res = linear_attention(
                q, k, v, feature_map=self.feature_map, causal=self.causal, mask=mask,
                chunk_size=self.chunk_size, eps=self.eps, normalize=self.normalize,
                state=state, return_state=return_state, algorithm=self.algorithm,
            )
            o, final = res if return_state else (res, None)
        y = self.out_proj(self._head_norm(o).transpose(1, 2).reshape(x.shape[0], x.shape[1], self.n_heads * self.value_dim))
        return (y, final) if return_state else y

    def init_state(self, batch: int, device=None) -> LinearAttentionState:
        """The empty recurrent state (fp32 zeros) for ``batch`` rows."""
        self._need_causal()
        device = device if device is not None else self.q_proj.weight.device
        h, d, e = self.n_heads, self.head_dim, self.value_dim
        return LinearAttentionState(
            torch.zeros(batch, h, d, e, device=device, dtype=torch.float32),
            torch.zeros(batch, h, d, device=device, dtype=torch.float32),
        )

    def step(
        self, x_t: Tensor, state: LinearAttentionState, mask_t: Optional[Tensor] = None
    ) -> Tuple[Tensor, LinearAttentionState]:
        """One decoding step. x_t (Tensor): (B, d_model). RETURNS: (y_t (B, d_model), state)."""
        self._need_causal()
        q, k, v = self._qkv_step(x_t)
        o, state = linear_attention_step(
            q, k, v, state, feature_map=self.feature_map, mask_t=mask_t, eps=self.eps,
            normalize=self.normalize,
        )
        return self.out_proj(self._head_norm(o).reshape(x_t.shape[0], -1)), state

    def _need_causal(self) -> None:
        if not self.causal:
            raise AttentionShapeError("step / init_state need a causal attention (causal=True)")


@dataclass
class KVCache:
    """Keys and values seen so far by a softmax attention decoder (preallocated, grows ×2).

    k (Tensor): (batch, heads, capacity, head dim). v (Tensor): (batch, heads, capacity, value dim).
    valid (Tensor): (batch, capacity) bool, False for padding steps. length (int): positions used.
    all_valid (bool): no padding step so far (decoding then needs no mask).
    """

    k: Tensor
    v: Tensor
    valid: Tensor
    length: int = 0
    all_valid: bool = True

    def index_select(self, index: Tensor) -> "KVCache":
        return KVCache(self.k.index_select(0, index), self.v.index_select(0, index),
                       self.valid.index_select(0, index), self.length, self.all_valid)


class SoftmaxAttention(_Projections):
    """The softmax twin of LinearAttention: same parameters, torch SDPA, KV cache decoding.

    d_model, n_heads, head_dim, value_dim, causal, bias: as in LinearAttention. Other
    LinearAttention settings are accepted and ignored, so one config switches the two.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        head_dim: Optional[int] = None,
        value_dim: Optional[int] = None,
        causal: bool = False,
        bias: bool = False,
        **_ignored,
    ):
        super().__init__(d_model, n_heads, head_dim, value_dim, bias)
        self.causal = causal

    def forward(self, x: Tensor, mask: Optional[Tensor] = None, state: Optional[KVCache] = None,
                return_state: bool = False):
        """x (Tensor): (B, T, d_model). mask (Optional[Tensor]): (B, T) bool.
        state / return_state: causal only: a KV cache to continue / to return.
        RETURNS (Tensor or Tuple[Tensor, KVCache]): (B, T, d_model).
        """
        self._check_input(x, mask)
        b, t, _ = x.shape
        if (state is not None or return_state) and not self.causal:
            raise AttentionShapeError("state / return_state exist only in the causal form")
        if state is not None:
            # continue a cache: run step by step (prefill after a prefix is rare)
            ys = []
            for i in range(t):
                y, state = self.step(x[:, i], state, None if mask is None else mask[:, i])
                ys.append(y)
            y = torch.stack(ys, 1) if ys else x.new_zeros(b, 0, self.d_model)
            return (y, state) if return_state else y
        q, k, v = self._qkv(x)
        if t == 0:
            o = v
        else:
            o = self._sdpa(q, k, v, mask)
        y = self.out_proj(o.transpose(1, 2).reshape(b, t, self.n_heads * self.value_dim))
        if return_state:
            cache = self.init_state(b, device=x.device, capacity=t)
            if mask is None:
                cache = self._append(cache, k, v, torch.ones(b, t, dtype=torch.bool, device=x.device), True)
            else:
                cache = self._append(cache, k, v, mask, bool(mask.all()))
            return y, cache
        return y

    def _sdpa(self, q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor]) -> Tensor:
        if mask is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        t = q.shape[2]
        allowed = mask[:, None, None, :].expand(-1, 1, t, -1)
        if self.causal:
            allowed = allowed & torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
        # rows with no allowed key (padding queries): attend anywhere, output zeroed below
        allowed = allowed | ~allowed.any(-1, keepdim=True)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return o * mask[:, None, :, None].to(o.dtype)

    def init_state(self, batch: int, device=None, capacity: int = 64) -> KVCache:
        """An empty KV cache for ``batch`` rows."""
        if not self.causal:
            raise AttentionShapeError("step / init_state need a causal attention (causal=True)")
        device = device if device is not None else self.q_proj.weight.device
        dtype = self.q_proj.weight.dtype
        capacity = max(capacity, 1)
        return KVCache(
            torch.zeros(batch, self.n_heads, capacity, self.head_dim, device=device, dtype=dtype),
            torch.zeros(batch, self.n_heads, capacity, self.value_dim, device=device, dtype=dtype),
            torch.zeros(batch, capacity, dtype=torch.bool, device=device),
            0,
        )

    @staticmethod
    def _append(cache: KVCache, k: Tensor, v: Tensor, valid: Tensor, all_valid: bool = False) -> KVCache:
        n = k.shape[2]
        need = cache.length + n
        ck, cv, cvalid = cache.k, cache.v, cache.valid
        if need > ck.shape[2]:
            cap = max(need, 2 * ck.shape[2])
            grow = cap - ck.shape[2]
            ck = F.pad(ck, (0, 0, 0, grow))
            cv = F.pad(cv, (0, 0, 0, grow))
            cvalid = F.pad(cvalid, (0, grow))
        ck[:, :, cache.length:need] = k.to(ck.dtype)
        cv[:, :, cache.length:need] = v.to(cv.dtype)
        cvalid[:, cache.length:need] = valid
        return KVCache(ck, cv, cvalid, need, cache.all_valid and all_valid)

    def step(self, x_t: Tensor, state: KVCache, mask_t: Optional[Tensor] = None) -> Tuple[Tensor, KVCache]:
        """One decoding step over the cache. x_t (Tensor): (B, d_model).
        RETURNS (Tuple[Tensor, KVCache]): y_t (B, d_model), the cache (updated in place).
        """
        if not self.causal:
            raise AttentionShapeError("step / init_state need a causal attention (causal=True)")
        q, k, v = self._qkv_step(x_t)
        b = x_t.shape[0]
        valid = (torch.ones(b, dtype=torch.bool, device=x_t.device) if mask_t is None
                 else mask_t.to(device=x_t.device, dtype=torch.bool))
        state = self._append(state, k.unsqueeze(2), v.unsqueeze(2), valid.unsqueeze(1), mask_t is None)
        n = state.length
        keys, values = state.k[:, :, :n], state.v[:, :, :n]
        if state.all_valid:
            o = F.scaled_dot_product_attention(q.unsqueeze(2), keys.to(q.dtype), values.to(q.dtype))
        else:
            allowed = state.valid[:, :n]
            allowed = allowed | ~allowed.any(-1, keepdim=True)
            o = F.scaled_dot_product_attention(
                q.unsqueeze(2), keys.to(q.dtype), values.to(q.dtype), attn_mask=allowed[:, None, None, :]
            )
            o = o * valid[:, None, None, None].to(o.dtype)
        return self.out_proj(o.reshape(b, -1)), state


def make_attention(kind: str, d_model: int, n_heads: int, **kwargs) -> nn.Module:
    """Build a "linear" (LinearAttention) or "softmax" (SoftmaxAttention) attention module."""
    if kind == "linear":
        return LinearAttention(d_model, n_heads, **kwargs)
    if kind == "softmax":
        return SoftmaxAttention(d_model, n_heads, **kwargs)
    raise AttentionKernelError(f"attention must be 'linear' or 'softmax', not {kind!r}")


# ----------------------------------------------------------------------------- block and stack
class ShortConv(nn.Module):
    """A causal depthwise convolution over time, added to its input ("token shift" / short conv).

    ``y_t = x_t + Σ_{j<kernel} w_j ⊙ x_{t-j}`` per channel (inputs before the sequence are the
    carried ``past`` or zeros; masked positions count as zeros). The taps start at zero, so the
    module starts as the identity and weight decay pulls it back there.

    d_model (int): channels. kernel (int): taps (≥ 1), the current position included.
    """

    def __init__(self, d_model: int, kernel: int):
        super().__init__()
        if kernel < 1:
            raise AttentionShapeError(f"short_conv kernel must be >= 1, got {kernel}")
        self.kernel = int(kernel)
        self.weight = nn.Parameter(torch.zeros(d_model, self.kernel))  # weight[:, -1]: the current position

    def init_past(self, batch: int, device=None, dtype=torch.float32) -> Tensor:
        """The empty carry: (batch, kernel - 1, d_model) zeros."""
        return torch.zeros(batch, self.kernel - 1, self.weight.shape[0], device=device, dtype=dtype)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None, past: Optional[Tensor] = None
                ) -> Tuple[Tensor, Tensor]:
        """x (Tensor): (B, T, d). mask (Optional[Tensor]): (B, T) bool. past: (B, kernel-1, d).
        RETURNS (Tuple[Tensor, Tensor]): y (B, T, d) and the new past (the last kernel-1 inputs)."""
        if mask is not None:
            x = x * mask[..., None].to(x.dtype)
        if past is None:
            past = self.init_past(x.shape[0], device=x.device, dtype=x.dtype)
        if x.shape[1] == 0:
            return x, past
        xp = torch.cat([past.to(x.dtype), x], dim=1)
        w = self.weight.to(x.dtype)
        y = x + F.conv1d(xp.transpose(1, 2), w[:, None, :], groups=w.shape[0]).transpose(1, 2)
        return y, xp[:, xp.shape[1] - (self.kernel - 1):]

    def step(self, x_t: Tensor, past: Tensor, mask_t: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """x_t (Tensor): (B, d). RETURNS: y_t (B, d) and the new past."""
        if mask_t is not None:
            x_t = x_t * mask_t[:, None].to(x_t.dtype)
        xp = torch.cat([past.to(x_t.dtype), x_t[:, None]], dim=1)
        y = x_t + (xp * self.weight.to(x_t.dtype).t()[None]).sum(1)
        return y, xp[:, 1:]


@dataclass
class BlockState:
    """A block's attention state and its short convolution's carry (the last kernel-1 inputs)."""

    attn: object
    conv: Tensor

    def index_select(self, index: Tensor) -> "BlockState":
        return BlockState(self.attn.index_select(index), self.conv.index_select(0, index))


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + MLP(LN(x)).

    d_model (int): width. n_heads (int): heads.
    attention (str): "linear" or "softmax".
    causal (bool): causal attention (enables step / init_state).
    mlp_ratio (float): hidden width of the MLP / d_model.
    dropout (float): dropout on the attention and MLP outputs.
    short_conv (int): 0 (none) or the kernel of a causal depthwise ``ShortConv`` (causal blocks
        only; its carry joins the state as ``BlockState``).
    short_conv_at (str): where: "input" (the block's input, x ← conv(x): attention and MLP both see
        it, as RWKV's token shift) or "attention" (the attention's input, attn(conv(LN(x)))).
    **attention_kwargs: passed to the attention module (feature_map, chunk_size, ...).
    """

    def __init__(self, d_model: int, n_heads: int, *, attention: str = "linear", causal: bool = False,
                 mlp_ratio: float = 4.0, dropout: float = 0.0, short_conv: int = 0, short_conv_at: str = "input",
                 **attention_kwargs):
        super().__init__()
        if short_conv and not causal:
            raise AttentionShapeError("short_conv is a causal convolution: use it with causal=True")
        if short_conv_at not in ("input", "attention"):
            raise AttentionShapeError(f"short_conv_at must be 'input' or 'attention', not {short_conv_at!r}")
        self.short_conv_at = short_conv_at
        self.ln1 = nn.LayerNorm(d_model)
        self.conv = ShortConv(d_model, short_conv) if short_conv else None
        self.attn = make_attention(attention, d_model, n_heads, causal=causal, **attention_kwargs)
        self.ln2 = nn.LayerNorm(d_model)
        hidden = max(1, int(round(mlp_ratio * d_model)))
        self.mlp = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, d_model))
        self.drop = nn.Dropout(dropout)
        self.causal = causal

    def forward(self, x: Tensor, mask: Optional[Tensor] = None, state=None, return_state: bool = False):
        """x (Tensor): (B, T, d_model). RETURNS: (B, T, d_model) [, state]."""
        past = None
        if self.conv is not None:
            if self.short_conv_at == "input":
                x, past = self.conv(x, mask, None if state is None else state.conv)
                h = self.ln1(x)
            else:
                h, past = self.conv(self.ln1(x), mask, None if state is None else state.conv)
            state = None if state is None else state.attn
        else:
            h = self.ln1(x)
        res = self.attn(h, mask, state=state, return_state=return_state) \
            if (state is not None or return_state) else self.attn(h, mask)
        a, new_state = res if return_state else (res, None)
        if return_state and self.conv is not None:
            new_state = BlockState(new_state, past)
        x = x + self.drop(a)
        x = x + self.drop(self.mlp(self.ln2(x)))
        return (x, new_state) if return_state else x

    def init_state(self, batch: int, device=None):
        state = self.attn.init_state(batch, device=device)
        if self.conv is None:
            return state
        device = device if device is not None else self.conv.weight.device
        return BlockState(state, self.conv.init_past(batch, device=device))

    def step(self, x_t: Tensor, state, mask_t: Optional[Tensor] = None):
        """x_t (Tensor): (B, d_model). RETURNS: (y_t, state)."""
        if self.conv is not None:
            if self.short_conv_at == "input":
                x_t, past = self.conv.step(x_t, state.conv, mask_t)
                h = self.ln1(x_t)
            else:
                h, past = self.conv.step(self.ln1(x_t), state.conv, mask_t)
            a, attn_state = self.attn.step(h, state.attn, mask_t)
            state = BlockState(attn_state, past)
        else:
            a, state = self.attn.step(self.ln1(x_t), state, mask_t)
        x_t = x_t + self.drop(a)
        x_t = x_t + self.drop(self.mlp(self.ln2(x_t)))
        return x_t, state


@dataclass
class StackState:
    """Per-layer attention states and the number of positions consumed (for the positions)."""

    layers: List
    position: int = 0

    def index_select(self, index: Tensor) -> "StackState":
        return StackState([s.index_select(index) for s in self.layers], self.position)


def sinusoidal_positions(start: int, length: int, d_model: int, device=None, dtype=torch.float32) -> Tensor:
    """Transformer sinusoidal position encodings for positions start … start+length-1."""
    pos = torch.arange(start, start + length, device=device, dtype=torch.float32).unsqueeze(1)
    half = (d_model + 1) // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, device=device, dtype=torch.float32) / half)
    ang = pos * freq
    pe = torch.cat([ang.sin(), ang.cos()], dim=1)[:, :d_model]
    return pe.to(dtype)


class AttentionStack(nn.Module):
    """A stack of TransformerBlocks with an optional final LayerNorm and positions.

    n_layers (int): number of blocks.
    d_model, n_heads, attention, causal, mlp_ratio, dropout, **attention_kwargs: per block.
    positions (str): "none" or "sinusoidal" (added to the input; no length limit).
    final_norm (bool): a LayerNorm after the last block.
    short_conv (int), short_conv_at (str): each block's causal ``ShortConv`` (0: none).
    """

    def __init__(self, n_layers: int, d_model: int, n_heads: int, *, attention: str = "linear",
                 causal: bool = False, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 positions: str = "none", final_norm: bool = True, short_conv: int = 0,
                 short_conv_at: str = "input", **attention_kwargs):
        super().__init__()
        if positions not in ("none", "sinusoidal"):
            raise AttentionShapeError(f"positions must be 'none' or 'sinusoidal', not {positions!r}")
        self.blocks = nn.ModuleList(
            TransformerBlock(d_model, n_heads, attention=attention, causal=causal, mlp_ratio=mlp_ratio,
                             dropout=dropout, short_conv=short_conv, short_conv_at=short_conv_at,
                             **attention_kwargs)
            for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(d_model) if final_norm else None
        self.positions = positions
        self.d_model = d_model
        self.causal = causal
        self.attention = attention

    def _add_positions(self, x: Tensor, start: int) -> Tensor:
        if self.positions == "none":
            return x
        pe = sinusoidal_positions(start, x.shape[1], self.d_model, device=x.device, dtype=x.dtype)
        return x + pe

    def forward(self, x: Tensor, mask: Optional[Tensor] = None, state: Optional[StackState] = None,
                return_state: bool = False):
        """x (Tensor): (B, T, d_model). mask (Optional[Tensor]): (B, T) bool.
        state / return_state: causal only; continue after / return a StackState.
        RETURNS: (B, T, d_model) [, StackState].
        """
        start = 0 if state is None else state.position
        x = self._add_positions(x, start)
        new_states = []
        for i, block in enumerate(self.blocks):
            if state is not None or return_state:
                x, s = block(x, mask, state=None if state is None else state.layers[i], return_state=True)
                new_states.append(s)
            else:
                x = block(x, mask)
        if self.norm is not None:
            x = self.norm(x)
        if return_state:
            return x, StackState(new_states, start + x.shape[1])
        return x

    def init_state(self, batch: int, device=None) -> StackState:
        return StackState([b.init_state(batch, device=device) for b in self.blocks], 0)

    def step(self, x_t: Tensor, state: StackState, mask_t: Optional[Tensor] = None):
        """x_t (Tensor): (B, d_model). RETURNS (Tuple[Tensor, StackState]): y_t, the new state."""
        if self.positions != "none":
            x_t = x_t + sinusoidal_positions(state.position, 1, self.d_model, device=x_t.device,
                                             dtype=x_t.dtype)[0]
        layers = []
        for block, s in zip(self.blocks, state.layers):
            x_t, s = block.step(x_t, s, mask_t)
            layers.append(s)
        if self.norm is not None:
            x_t = self.norm(x_t)
        return x_t, StackState(layers, state.position + 1)
