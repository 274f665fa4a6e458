import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kx_spacy.errors import KxError
from kx_spacy.training.clipping import (
    ClippingError, clip_grad_global_norm, clip_gradients, global_grad_norm, smooth_clip_grad,
)


def _params(grads):
    ps = []
    for g in grads:
        p = torch.nn.Parameter(torch.zeros_like(g))
        p.grad = g.clone()
        ps.append(p)
    return ps


def _norm(ps):
    return math.sqrt(sum(float((p.grad ** 2).sum()) for p in ps))


def test_global_norm_is_norm_of_concatenation():
    ps = _params([torch.tensor([3.0, 0.0]), torch.tensor([[4.0]])])
    assert global_grad_norm(ps) == pytest.approx(5.0)
    no_grad = torch.nn.Parameter(torch.zeros(3))
    assert global_grad_norm([no_grad]) == 0.0


def test_hard_clip_scales_all_grads_together():
    ps = _params([torch.tensor([3.0, 0.0]), torch.tensor([4.0])])
    before = clip_grad_global_norm(ps, 1.0)
    assert before == pytest.approx(5.0)
    assert _norm(ps) == pytest.approx(1.0, rel=1e-5)
    # the direction is kept
    assert float(ps[0].grad[0]) / float(ps[1].grad[0]) == pytest.approx(3 / 4)


def test_hard_clip_leaves_small_grads():
    ps = _params([torch.tensor([0.3, 0.4])])
    clip_grad_global_norm(ps, 1.0)
    assert torch.allclose(ps[0].grad, torch.tensor([0.3, 0.4]))


def test_matches_torch_clip_grad_norm():
    torch.manual_seed(0)
    grads = [torch.randn(5, 3), torch.randn(7)]
    a, b = _params(grads), _params(grads)
    clip_grad_global_norm(a, 0.5)
    torch.nn.utils.clip_grad_norm_(b, 0.5)
    for x, y in zip(a, b):
        assert torch.allclose(x.grad, y.grad, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(
    scale=st.floats(min_value=1e-4, max_value=1e4),
    gamma=st.floats(min_value=1e-3, max_value=1e3),
    seed=st.integers(0, 1000),
)
def test_smooth_clip_factor(scale, gamma, seed):
    g = torch.randn(6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale
    ps = _params([g])
    n = float(g.norm())
    before = smooth_clip_grad(ps, gamma)
    assert before == pytest.approx(n, rel=1e-6)
    after = _norm(ps)
    assert after == pytest.approx(n * gamma / (n + gamma), rel=1e-5)
    assert after < gamma  # never reaches the threshold
    assert after <= n


def test_clip_dispatch_and_bad_settings():
    ps = _params([torch.tensor([30.0, 40.0])])
    assert clip_gradients(ps, "none", 1.0) == pytest.approx(50.0)
    assert _norm(ps) == pytest.approx(50.0)
    clip_gradients(ps, "smooth", 50.0)
    assert _norm(ps) == pytest.approx(25.0)
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ClippingError):
            clip_grad_global_norm(ps, bad)
        with pytest.raises(ClippingError):
            smooth_clip_grad(ps, bad)
    with pytest.raises(KxError):
        clip_gradients(ps, "sideways", 1.0)


def test_nonfinite_grads_are_not_rescaled():
    ps = _params([torch.tensor([float("inf"), 1.0])])
    norm = clip_grad_global_norm(ps, 1.0)
    assert not math.isfinite(norm)


def test_per_array_clips_each_tensor_and_reports_the_global_norm():
    from kx_spacy.training.clipping import clip_gradients

    a = torch.nn.Parameter(torch.zeros(3))
    b = torch.nn.Parameter(torch.zeros(2))
    a.grad = torch.tensor([3.0, 4.0, 0.0])      # norm 5 -> scaled to norm 1
    b.grad = torch.tensor([0.3, 0.4])           # norm 0.5 -> unchanged
    before = clip_gradients([a, b], "per_array", 1.0)
    assert before == pytest.approx((25 + 0.25) ** 0.5, rel=1e-6)
    assert torch.linalg.vector_norm(a.grad).item() == pytest.approx(1.0, rel=1e-6)
    assert torch.allclose(b.grad, torch.tensor([0.3, 0.4]))
    # two arrays at the threshold: the step's total norm is sqrt(2) x the threshold, not bounded by it
    a.grad, b.grad = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0])
    clip_gradients([a, b], "per_array", 1.0)
    assert (a.grad.norm() ** 2 + b.grad.norm() ** 2).sqrt().item() == pytest.approx(2 ** 0.5)
