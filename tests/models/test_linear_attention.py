"""Linear attention: every form against a quadratic reference written here (float64)."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from kx_spacy.errors import AttentionKernelError, AttentionShapeError, FeatureMapError, KxError
from kx_spacy.models.linear_attention import (
    AttentionStack,
    FeatureMap,
    LinearAttention,
    SoftmaxAttention,
    TransformerBlock,
    feature_map_names,
    fla_available,
    linear_attention,
    linear_attention_step,
    register_feature_map,
)

EPS = 1e-6
TOL = 1e-5
CAUSAL_MAPS = ["elu", "relu", "identity"]
ALL_MAPS = CAUSAL_MAPS + ["separate_softmax"]


# ---------------------------------------------------------------- the reference (O(T²), float64)
def _phi(name, x, mask, is_key):
    if name == "elu":
        out = torch.where(x > 0, x + 1.0, torch.exp(x))
    elif name == "relu":
        out = x.clamp_min(0.0)
    elif name == "identity":
        out = x.clone()
    elif name == "separate_softmax":
        if not is_key:
            return torch.exp(x) / torch.exp(x).sum(-1, keepdim=True)
        w = torch.exp(x - x.max())
        if mask is not None:
            w = w * mask
        total = w.sum(-2, keepdim=True)
        return torch.where(total > 0, w / torch.where(total > 0, total, 1.0), 0.0)
    else:
        raise AssertionError(name)
    if is_key and mask is not None:
        out = out * mask
    return out


def reference(q, k, v, fmap="elu", causal=False, mask=None, normalize=True, eps=EPS):
    q, k, v = q.double(), k.double(), v.double()
    m = None if mask is None else mask.double()[:, None, :, None]
    fq, fk = _phi(fmap, q, m, False), _phi(fmap, k, m, True)
    a = fq @ fk.transpose(-1, -2)                       # (B, H, T, T)
    if causal:
        t = q.shape[2]
        a = a * torch.ones(t, t, dtype=torch.float64).tril()
    num = a @ v
    if normalize:
        d = a.sum(-1, keepdim=True)
        safe = torch.where(d.abs() < eps, torch.where(d < 0, -eps, eps), d)
        num = num / safe
    if m is not None:
        num = num * m
    return num


def qkv(b=2, h=3, t=19, d=8, e=5, seed=0, positive=False):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, t, n, generator=g) for n in (d, d, e))
    if positive:
        q, k = q.abs() + 0.1, k.abs() + 0.1
    return q, k, v


def assert_close(a, b, tol=TOL):
    assert a.shape == b.shape, (a.shape, b.shape)
    err = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
    assert err <= tol, err


# ---------------------------------------------------------------- exactness, every form
@pytest.mark.parametrize("fmap", ALL_MAPS)
@pytest.mark.parametrize("masked", [False, True])
def test_noncausal_matches_reference(fmap, masked):
    q, k, v = qkv(positive=fmap == "identity")
    mask = (torch.rand(2, 19, generator=torch.Generator().manual_seed(1)) > 0.3) if masked else None
    out = linear_attention(q, k, v, feature_map=fmap, mask=mask)
    assert_close(out, reference(q, k, v, fmap, False, mask))


@pytest.mark.parametrize("fmap", CAUSAL_MAPS)
@pytest.mark.parametrize("chunk", [1, 4, 8, 19, 64])
@pytest.mark.parametrize("algorithm", ["fused", "cumsum", "loop"])
@pytest.mark.parametrize("masked", [False, True])
def test_causal_chunked_matches_reference(fmap, chunk, algorithm, masked):
    q, k, v = qkv(positive=fmap == "identity")           # T = 19: never a multiple of 4 or 8
    mask = (torch.rand(2, 19, generator=torch.Generator().manual_seed(2)) > 0.3) if masked else None
    out = linear_attention(q, k, v, feature_map=fmap, causal=True, mask=mask, chunk_size=chunk,
                           algorithm=algorithm)
    assert_close(out, reference(q, k, v, fmap, True, mask))


@pytest.mark.parametrize("fmap", CAUSAL_MAPS)
def test_unnormalised_forms_match_reference_with_signed_features(fmap):
    q, k, v = qkv(seed=3)                                # identity: features of both signs
    for causal in (False, True):
        out = linear_attention(q, k, v, feature_map=fmap, causal=causal, normalize=False, chunk_size=4)
        assert_close(out, reference(q, k, v, fmap, causal, normalize=False), tol=5e-5)


@pytest.mark.parametrize("fmap", CAUSAL_MAPS)
@pytest.mark.parametrize("masked", [False, True])
def test_recurrent_step_matches_reference(fmap, masked):
    q, k, v = qkv(t=11, positive=fmap == "identity")
    mask = (torch.rand(2, 11, generator=torch.Generator().manual_seed(4)) > 0.3) if masked else None
    from kx_spacy.models.linear_attention import LinearAttentionState

    state = LinearAttentionState(torch.zeros(2, 3, 8, 5), torch.zeros(2, 3, 8))
    ys = []
    for t in range(11):
        y, state = linear_attention_step(q[:, :, t], k[:, :, t], v[:, :, t], state, feature_map=fmap,
                                         mask_t=None if mask is None else mask[:, t])
        ys.append(y)
    assert_close(torch.stack(ys, 2), reference(q, k, v, fmap, True, mask))
    # the chunked form hands over the same state
    _, final = linear_attention(q, k, v, feature_map=fmap, causal=True, mask=mask, chunk_size=4,
                                return_state=True)
    assert_close(final.kv, state.kv, tol=1e-4)
    assert final.kv.dtype == torch.float32


@settings(max_examples=25, deadline=None)
@given(
    b=st.integers(1, 3), t=st.integers(0, 40), chunk=st.integers(1, 17), seed=st.integers(0, 10_000),
    masked=st.booleans(), algorithm=st.sampled_from(["fused", "cumsum", "loop"]), fmap=st.sampled_from(["elu", "relu"]),
)
def test_property_causal_and_noncausal(b, t, chunk, seed, masked, algorithm, fmap):
    q, k, v = qkv(b=b, h=2, t=t, d=4, e=3, seed=seed)
    mask = (torch.rand(b, t, generator=torch.Generator().manual_seed(seed)) > 0.4) if masked else None
    out = linear_attention(q, k, v, feature_map=fmap, causal=True, mask=mask, chunk_size=chunk,
                           algorithm=algorithm)
    assert_close(out, reference(q, k, v, fmap, True, mask))
    assert_close(linear_attention(q, k, v, feature_map=fmap, mask=mask), reference(q, k, v, fmap, False, mask))


def test_gradients_match_reference():
    q, k, v = (x.requires_grad_() for x in qkv(t=13))
    out = linear_attention(q, k, v, causal=True, chunk_size=4)
    grads = torch.autograd.grad((out * torch.cos(out)).sum(), (q, k, v))
    q2, k2, v2 = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = reference(q2, k2, v2, "elu", True)
    refs = torch.autograd.grad((ref * torch.cos(ref)).sum(), (q2, k2, v2))
    for g, r in zip(grads, refs):
        assert_close(g, r, tol=1e-4)


def test_gradcheck_double_chunked():
    q, k, v = (x.double().requires_grad_() for x in qkv(b=1, h=1, t=7, d=3, e=2))
    for algorithm in ("fused", "cumsum", "loop"):
        assert torch.autograd.gradcheck(
            lambda a, b_, c: linear_attention(a, b_, c, causal=True, chunk_size=3, algorithm=algorithm),
            (q, k, v),
        )


@pytest.fixture(params=[1 << 19, 40], ids=["one-block", "many-blocks"])
def fused_blocks(request, monkeypatch):
    """The fused form with every row in one block, and with blocks of one or two rows."""
    import kx_spacy.models.linear_attention as la

    monkeypatch.setattr(la, "_FUSED_BLOCK_FLOATS", request.param)
    return request.param


@pytest.mark.parametrize("fmap", CAUSAL_MAPS)
@pytest.mark.parametrize("normalize", [True, False])
def test_fused_gradients_match_reference(fused_blocks, fmap, normalize):
    q, k, v = (x.requires_grad_() for x in qkv(t=13, positive=fmap == "identity"))
    mask = torch.rand(2, 13, generator=torch.Generator().manual_seed(5)) > 0.3
    out = linear_attention(q, k, v, feature_map=fmap, causal=True, mask=mask, chunk_size=4,
                           normalize=normalize, algorithm="fused")
    grads = torch.autograd.grad((out * torch.cos(out)).sum(), (q, k, v))
    q2, k2, v2 = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = reference(q2, k2, v2, fmap, True, mask, normalize=normalize)
    assert_close(out, ref, tol=TOL if normalize else 5e-5)
    refs = torch.autograd.grad((ref * torch.cos(ref)).sum(), (q2, k2, v2))
    for g, r in zip(grads, refs):            # relative: unnormalised gradients reach ~1e3
        assert_close(g, r, tol=1e-4 * max(1.0, r.abs().max().item()))


@pytest.mark.parametrize("normalize", [True, False])
def test_fused_gradcheck_with_mask_and_states(fused_blocks, normalize):
    from kx_spacy.models.linear_attention import LinearAttentionState

    g = torch.Generator().manual_seed(6)
    q, k, v = (x.double().requires_grad_() for x in qkv(b=2, h=2, t=7, d=3, e=2))
    s0 = torch.rand(2, 2, 3, 2, generator=g, dtype=torch.float64).requires_grad_()
    z0 = (torch.rand(2, 2, 3, generator=g, dtype=torch.float64) + 1.0).requires_grad_()
    mask = torch.tensor([[True, True, False, True, True, True, False], [False] + [True] * 6])

    def run(q, k, v, s0, z0):
        out, st = linear_attention(q, k, v, causal=True, mask=mask, chunk_size=3, normalize=normalize,
                                   state=LinearAttentionState(s0, z0), return_state=True,
                                   algorithm="fused")
        return out, st.kv, st.z

    assert torch.autograd.gradcheck(run, (q, k, v, s0, z0))


def test_fused_matches_cumsum_on_strided_inputs_and_custom_maps(fused_blocks):
    from kx_spacy.models.linear_attention import PointwiseFeatureMap

    # (B, T, H, D) projections seen as (B, H, T, D), as the modules pass them
    x = torch.randn(2, 21, 3, 8, generator=torch.Generator().manual_seed(7))
    q, k, v = x.transpose(1, 2), (0.5 * x).transpose(1, 2), x[..., :5].transpose(1, 2)
    for fmap in ("elu", PointwiseFeatureMap("softplus", F.softplus, lambda t: t.copy_(F.softplus(t)))):
        ref = reference(q, k, v, "elu", True) if fmap == "elu" else None
        out = linear_attention(q, k, v, feature_map=fmap, causal=True, chunk_size=8, algorithm="fused")
        if ref is None:         # no derivative given: φ' from autograd; compare with cumsum
            qg, kg = q.clone().requires_grad_(), k.clone().requires_grad_()
            a = linear_attention(qg, kg, v, feature_map=fmap, causal=True, chunk_size=8, algorithm="fused")
            ga = torch.autograd.grad(a.sum(), (qg, kg))
            b = linear_attention(qg, kg, v, feature_map=fmap, causal=True, chunk_size=8, algorithm="cumsum")
            gb = torch.autograd.grad(b.sum(), (qg, kg))
            assert_close(a, b)
            for x1, x2 in zip(ga, gb):
                assert_close(x1, x2, tol=1e-4)
        else:
            assert_close(out, ref)


@pytest.mark.parametrize("t,chunk", [(64, 4), (100, 4), (34, 2)])
def test_fused_blocked_scans_match_reference(t, chunk):
    # D = E = 32: chunk states of 1,024 elements take the blocked scan (16 and 25 chunks), 17
    # chunks (a prime) the log-step one
    q, k, v = (x.requires_grad_() for x in qkv(b=1, h=2, t=t, d=32, e=32, seed=3))
    mask = torch.rand(1, t, generator=torch.Generator().manual_seed(8)) > 0.2
    out = linear_attention(q, k, v, causal=True, mask=mask, chunk_size=chunk, algorithm="fused")
    grads = torch.autograd.grad((out * torch.cos(out)).sum(), (q, k, v))
    q2, k2, v2 = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = reference(q2, k2, v2, "elu", True, mask)
    assert_close(out, ref)
    refs = torch.autograd.grad((ref * torch.cos(ref)).sum(), (q2, k2, v2))
    for g, r in zip(grads, refs):
        assert_close(g, r, tol=1e-4 * max(1.0, r.abs().max().item()))


@pytest.mark.parametrize("n", [16, 17, 25, 128])
@pytest.mark.parametrize("reverse", [False, True])
def test_chunk_scans_are_prefix_and_suffix_sums(n, reverse):
    from kx_spacy.models.linear_attention import _scan_

    x = torch.randn(2, n, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    ref = x.flip(1).cumsum(1).flip(1) if reverse else x.cumsum(1)
    assert_close(_scan_(x.clone(), torch.empty_like(x), reverse), ref, tol=1e-10)
    small = x[:, :, 0, :3].contiguous()                     # few elements per chunk: log-step
    ref = small.flip(1).cumsum(1).flip(1) if reverse else small.cumsum(1)
    assert_close(_scan_(small.clone(), torch.empty_like(small), reverse), ref, tol=1e-10)


def test_fused_saved_buffers_survive_a_second_backward_and_return_to_the_pool():
    import kx_spacy.models.linear_attention as la

    q, k, v = (x.requires_grad_() for x in qkv(t=21))
    pool = la._saved_pool(torch.float32)

    def pooled():
        return sum(len(free) for free in pool.values())

    out = linear_attention(q, k, v, causal=True, chunk_size=4, algorithm="fused")
    first = torch.autograd.grad((out * out).sum(), (q, k, v), retain_graph=True)
    second = torch.autograd.grad((out * out).sum(), (q, k, v))
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    before = pooled()
    del out                                   # the autograd node goes: its buffers are pooled
    assert pooled() == before + 6              # φ(q), φ(k), scores, states, key sums, normalisers
    out = linear_attention(q, k, v, causal=True, chunk_size=4, algorithm="fused")
    assert pooled() == before                 # the same shapes are served from the pool
    again = torch.autograd.grad((out * out).sum(), (q, k, v))
    for a, b in zip(first, again):
        assert_close(a, b, tol=0.0)
    with torch.no_grad():                     # no backward to come: nothing is lent
        linear_attention(q, k, v, causal=True, chunk_size=4, algorithm="fused")
    assert pooled() == before


# ---------------------------------------------------------------- bad input: defined or clear errors
def test_length_zero():
    q, k, v = qkv(t=0)
    for causal in (False, True):
        out = linear_attention(q, k, v, causal=causal)
        assert out.shape == (2, 3, 0, 5)
    out, state = linear_attention(q, k, v, causal=True, return_state=True)
    assert float(state.kv.abs().sum()) == 0.0
    m = LinearAttention(8, 2, causal=True)
    assert m(torch.zeros(3, 0, 8)).shape == (3, 0, 8)
    assert SoftmaxAttention(8, 2, causal=True)(torch.zeros(3, 0, 8)).shape == (3, 0, 8)


@pytest.mark.parametrize("fmap", ALL_MAPS)
def test_all_padding_rows_give_zeros(fmap):
    q, k, v = qkv(positive=fmap == "identity")
    mask = torch.ones(2, 19, dtype=torch.bool)
    mask[1] = False
    for causal in ([False, True] if fmap != "separate_softmax" else [False]):
        out = linear_attention(q, k, v, feature_map=fmap, causal=causal, mask=mask, chunk_size=4)
        assert torch.isfinite(out).all()
        assert float(out[1].abs().max()) == 0.0
        assert_close(out[0:1], reference(q[0:1], k[0:1], v[0:1], fmap, causal))


def test_softmax_twin_all_padding_rows_give_zeros():
    m = SoftmaxAttention(8, 2, causal=True)
    x = torch.randn(2, 5, 8)
    mask = torch.tensor([[True] * 5, [False] * 5])
    y = m(x, mask)
    assert torch.isfinite(y).all()
    assert_close(y[1], m.out_proj(torch.zeros(5, 8)))    # zero attention output, then out_proj


def test_mismatched_shapes_are_errors():
    q, k, v = qkv()
    with pytest.raises(AttentionShapeError, match="head dim"):
        linear_attention(q, k[..., :4], v)
    with pytest.raises(AttentionShapeError):
        linear_attention(q, k[:, :, :5], v)
    with pytest.raises(AttentionShapeError, match="mask"):
        linear_attention(q, k, v, mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(AttentionShapeError):
        linear_attention(q[0], k[0], v[0])
    with pytest.raises(AttentionShapeError, match="divisible"):
        LinearAttention(10, 3)
    with pytest.raises(AttentionShapeError):
        LinearAttention(8, 2)(torch.zeros(2, 3, 6))
    with pytest.raises(AttentionShapeError, match="chunk_size"):
        linear_attention(q, k, v, causal=True, chunk_size=0)
    assert issubclass(AttentionShapeError, KxError)


def test_fp16_on_cpu_is_defined():
    q, k, v = qkv()
    ref32 = linear_attention(q, k, v, causal=True, chunk_size=4)
    out = linear_attention(q.half(), k.half(), v.half(), causal=True, chunk_size=4)
    assert out.dtype == torch.float16
    assert torch.isfinite(out).all()
    assert_close(out, ref32, tol=5e-3)                   # inputs rounded to fp16, then fp32 inside


def test_bf16_autocast_keeps_fp32_state():
    m = LinearAttention(16, 2, causal=True, chunk_size=4)
    x = torch.randn(2, 9, 16)
    y32, s32 = m(x, return_state=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16, s16 = m(x, return_state=True)
    assert s16.kv.dtype == torch.float32 and s16.z.dtype == torch.float32
    assert (y16.float() - y32).abs().max().item() < 0.1
    assert (s16.z - s32.z).abs().max().item() / s32.z.abs().max().item() < 2e-2


def test_signed_feature_map_with_zero_normaliser_is_defined():
    # identity map, a key and a query chosen so that φ(q)·Σφ(k) is exactly 0
    q = torch.tensor([[[[1.0, 1.0], [1.0, -1.0]]]])      # (1, 1, 2, 2)
    k = torch.tensor([[[[1.0, -1.0], [2.0, 2.0]]]])
    v = torch.tensor([[[[3.0], [5.0]]]])
    for causal in (False, True):
        out = linear_attention(q, k, v, feature_map="identity", causal=causal, chunk_size=1)
        assert torch.isfinite(out).all()
        assert_close(out, reference(q, k, v, "identity", causal), tol=1e-3)
    # position 0 (causal): d = q0·k0 = 0 → numerator 0 / +eps = 0
    out = linear_attention(q, k, v, feature_map="identity", causal=True)
    assert float(out[0, 0, 0, 0]) == 0.0
    # a tiny negative denominator keeps its sign
    q2 = torch.tensor([[[[1.0, 0.0]]]])
    k2 = torch.tensor([[[[-1e-8, 0.0]]]])
    out = linear_attention(q2, k2, torch.ones(1, 1, 1, 1), feature_map="identity", causal=True)
    assert_close(out, torch.full((1, 1, 1, 1), -1e-8 / -EPS), tol=1e-6)


def test_separate_softmax_is_refused_causally():
    q, k, v = qkv()
    with pytest.raises(FeatureMapError, match="not causal"):
        linear_attention(q, k, v, feature_map="separate_softmax", causal=True)
    with pytest.raises(FeatureMapError, match="not causal"):
        LinearAttention(8, 2, feature_map="separate_softmax", causal=True)
    # its rows sum to one: constant values pass through unchanged
    out = linear_attention(q, k, torch.ones_like(v), feature_map="separate_softmax", normalize=False)
    assert_close(out, torch.ones_like(out), tol=1e-5)


def test_feature_map_registry():
    assert set(ALL_MAPS) <= set(feature_map_names())
    with pytest.raises(FeatureMapError, match="Unknown feature map"):
        linear_attention(*qkv(), feature_map="nope")

    class Square(FeatureMap):
        name = "test_square"

        def query(self, x):
            return x * x

    register_feature_map("test_square")(Square)
    q, k, v = qkv()
    out = linear_attention(q, k, v, feature_map="test_square", causal=True, chunk_size=4)
    ref = linear_attention(q * q, k * k, v, feature_map="identity", causal=True, chunk_size=4)
    assert_close(out, ref)


def test_unknown_kernel_and_algorithm():
    with pytest.raises(AttentionKernelError):
        LinearAttention(8, 2, kernel="cuda-magic")
    with pytest.raises(AttentionKernelError):
        linear_attention(*qkv(), causal=True, algorithm="fast")
    if not fla_available():
        m = LinearAttention(8, 2, causal=True, kernel="fla")
        with pytest.raises(AttentionKernelError, match="fla-core"):
            m(torch.randn(1, 4, 8))


# ---------------------------------------------------------------- modules
def _manual_module_reference(m: LinearAttention, x, mask=None):
    b, t, _ = x.shape
    q = m.q_proj(x).view(b, t, m.n_heads, m.head_dim).transpose(1, 2)
    k = m.k_proj(x).view(b, t, m.n_heads, m.head_dim).transpose(1, 2)
    v = m.v_proj(x).view(b, t, m.n_heads, m.value_dim).transpose(1, 2)
    o = reference(q, k, v, m.feature_map.name, m.causal, mask).float()
    return m.out_proj(o.transpose(1, 2).reshape(b, t, -1))


@pytest.mark.parametrize("causal", [False, True])
def test_module_matches_reference_and_steps(causal):
    torch.manual_seed(0)
    m = LinearAttention(16, 4, head_dim=6, value_dim=3, causal=causal, chunk_size=3)
    x = torch.randn(2, 10, 16)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 7:] = False
    with torch.no_grad():
        assert_close(m(x, mask), _manual_module_reference(m, x, mask))
        if causal:
            state = m.init_state(2)
            ys = []
            for t in range(10):
                y, state = m.step(x[:, t], state, mask[:, t])
                ys.append(y)
            assert_close(torch.stack(ys, 1) * mask[..., None], m(x, mask) * mask[..., None])
        else:
            with pytest.raises(AttentionShapeError):
                m.init_state(2)


def test_output_norm_forms_agree():
    torch.manual_seed(1)
    m = LinearAttention(16, 2, causal=True, chunk_size=4, output_norm=True, normalize=False)
    x = torch.randn(2, 9, 16)
    with torch.no_grad():
        y = m(x)
        state, ys = m.init_state(2), []
        for t in range(9):
            yt, state = m.step(x[:, t], state)
            ys.append(yt)
    assert_close(torch.stack(ys, 1), y)


def _softmax_reference(m: SoftmaxAttention, x, mask=None):
    b, t, _ = x.shape
    q = m.q_proj(x).view(b, t, m.n_heads, m.head_dim).transpose(1, 2).double()
    k = m.k_proj(x).view(b, t, m.n_heads, m.head_dim).transpose(1, 2).double()
    v = m.v_proj(x).view(b, t, m.n_heads, m.value_dim).transpose(1, 2).double()
    s = q @ k.transpose(-1, -2) / math.sqrt(m.head_dim)
    allowed = torch.ones(b, 1, t, t, dtype=torch.bool)
    if m.causal:
        allowed = allowed & torch.ones(t, t, dtype=torch.bool).tril()
    if mask is not None:
        allowed = allowed & mask[:, None, None, :]
    w = torch.softmax(s.masked_fill(~allowed, float("-inf")), -1).nan_to_num(0.0)
    o = w @ v
    if mask is not None:
        o = o * mask[:, None, :, None]
    return m.out_proj(o.float().transpose(1, 2).reshape(b, t, -1))


@pytest.mark.parametrize("causal", [False, True])
def test_softmax_twin_matches_reference_and_shares_parameters(causal):
    torch.manual_seed(2)
    lin = LinearAttention(16, 4, causal=causal)
    soft = SoftmaxAttention(16, 4, causal=causal, feature_map="elu", chunk_size=8)
    assert set(lin.state_dict()) == set(soft.state_dict())
    soft.load_state_dict(lin.state_dict())
    x = torch.randn(2, 7, 16)
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    with torch.no_grad():
        assert_close(soft(x, mask), _softmax_reference(soft, x, mask))
        if causal:
            cache = soft.init_state(2, capacity=2)          # forces the cache to grow
            ys = []
            for t in range(7):
                y, cache = soft.step(x[:, t], cache, mask[:, t])
                ys.append(y)
            keep = mask[..., None]
            assert_close(torch.stack(ys, 1) * keep, soft(x, mask) * keep)


def check_stack_step_and_prefill(stack, x, split, tol=2e-5):
    """A causal stack's forward equals stepping token by token and a prefill of ``split`` tokens
    continued from its state, and reordering the state (beams) reorders the rows. RETURNS: y."""
    t = x.shape[1]
    with torch.no_grad():
        y = stack(x)
        state, ys = stack.init_state(x.shape[0]), []
        for i in range(t):
            yt, state = stack.step(x[:, i], state)
            ys.append(yt)
        assert_close(torch.stack(ys, 1), y, tol=tol)
        assert state.position == t
        y1, s1 = stack(x[:, :split], return_state=True)
        y2 = stack(x[:, split:], state=s1)
        assert_close(torch.cat([y1, y2], 1), y, tol=tol)
        flipped = s1.index_select(torch.tensor([1, 0]))
        assert_close(stack(x.flip(0)[:, split:], state=flipped), y2.flip(0), tol=tol)
    return y


@pytest.mark.parametrize("attention", ["linear", "softmax"])
def test_stack_forward_step_and_prefill_agree(attention):
    torch.manual_seed(3)
    stack = AttentionStack(2, 16, 2, attention=attention, causal=True, positions="sinusoidal", chunk_size=4)
    stack.eval()
    check_stack_step_and_prefill(stack, torch.randn(2, 9, 16), split=5)


def test_block_trains_and_noncausal_is_permutation_equivariant():
    torch.manual_seed(4)
    block = TransformerBlock(16, 2, attention="linear", causal=False)
    x = torch.randn(1, 6, 16)
    perm = torch.tensor([3, 1, 0, 5, 2, 4])
    with torch.no_grad():
        assert_close(block(x)[:, perm], block(x[:, perm]))
    opt = torch.optim.Adam(block.parameters(), lr=1e-2)
    target = torch.randn(1, 6, 16)
    losses = []
    for _ in range(8):
        loss = F.mse_loss(block(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


# ---------------------------------------------------------------- fla (GPU only, optional)
@pytest.mark.gpu
def test_fla_kernel_matches_reference():
    if not fla_available():
        pytest.skip("fla-core is not installed")
    torch.manual_seed(5)
    m = LinearAttention(128, 2, causal=True, kernel="fla").cuda()
    ref = LinearAttention(128, 2, causal=True, kernel="torch").cuda()
    ref.load_state_dict(m.state_dict())
    x = torch.randn(2, 300, 128, device="cuda")
    with torch.no_grad():
        a = m(x).float()
        b = ref(x).float()
    assert (a - b).abs().max().item() < 5e-2          # fla computes in bf16
