"""Output layers: the papers' formulas, normalisation, the p(eos) lower bound, step == forward."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kx_spacy.errors import GeneratorConfigError
from kx_spacy.generation.output_layers import (
    NonMonotonicSelfTerminatingOutput,
    OutputLayerSpec,
    SelfTerminatingOutput,
    SoftmaxOutput,
    t_star,
    termination_bound,
)

EOS = 2
NEVER = (0, 1)


def _layer(kind, eps=0.1, hidden=6, vocab=9, seed=0, scale=1.0):
    torch.manual_seed(seed)
    layer = OutputLayerSpec(kind, None if kind == "softmax" else eps).build(hidden, vocab, EOS, NEVER)
    with torch.no_grad():
        layer.proj.weight.mul_(scale)
    return layer


def _reference_probs(kind, logits, eps):
    """The papers' formulas in float64, without logs (one sequence, steps 1..T)."""
    logits = logits.double()
    T, V = logits.shape
    other = logits.clone()
    other[:, [EOS, *NEVER]] = float("-inf")
    q = torch.softmax(other, -1)
    sig = torch.sigmoid(logits[:, EOS])
    out = torch.zeros(T, V, dtype=torch.float64)
    alpha = 1.0
    for t in range(1, T + 1):
        if kind == "st":
            alpha = alpha * (1 - eps) * sig[t - 1]
            p_eos = 1 - alpha
        else:
            p_eos = (1 - (1 - eps) ** t) * (1 - sig[t - 1]) + sig[t - 1]
        out[t - 1] = (1 - p_eos) * q[t - 1]
        out[t - 1, EOS] = p_eos
    return out


@pytest.mark.parametrize("kind", ["st", "nmst"])
def test_matches_the_papers_formulas(kind):
    layer = _layer(kind, eps=0.2)
    h = torch.randn(1, 12, 6) * 2
    got = layer(h)[0].double().exp()
    want = _reference_probs(kind, layer.proj(h)[0].detach(), 0.2)
    assert torch.allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("kind", ["softmax", "st", "nmst"])
def test_normalised_never_ids_and_step_equals_forward(kind):
    layer = _layer(kind)
    h = torch.randn(3, 10, 6)
    lp = layer(h)
    assert torch.allclose(torch.logsumexp(lp, -1), torch.zeros(3, 10), atol=1e-5)
    assert torch.isinf(lp[..., list(NEVER)]).all()
    state = layer.initial_state(3)
    for t in range(10):
        lp_t, state = layer.step(h[:, t], state)
        fin = torch.isfinite(lp[:, t])
        assert torch.allclose(lp_t[fin], lp[:, t][fin], atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(["st", "nmst"]), eps=st.floats(1e-4, 0.5), scale=st.floats(0.0, 200.0),
       bias=st.floats(-80.0, 80.0), seed=st.integers(0, 10_000))
def test_lower_bound_holds_and_stays_finite(kind, eps, scale, bias, seed):
    layer = _layer(kind, eps=eps, scale=scale, seed=seed)
    with torch.no_grad():
        layer.proj.bias[EOS] = bias
    h = torch.randn(2, 40, 6, generator=torch.Generator().manual_seed(seed))
    lp = layer(h)
    assert not torch.isnan(lp).any()
    assert torch.isfinite(lp[..., EOS]).all()
    for t in range(1, 41):
        bound = layer.lower_bound(t)
        assert (lp[:, t - 1, EOS].exp() >= bound * (1 - 1e-5) - 1e-7).all()


def test_softmax_gives_no_bound():
    assert SoftmaxOutput(4, 5, EOS).lower_bound(100) == 0.0
    assert termination_bound(None, 10).t_star is None


@pytest.mark.parametrize("eps", [0.0, 1.0, -0.1, 1.5, float("nan"), "x"])
def test_epsilon_outside_zero_one_is_refused(eps):
    with pytest.raises(GeneratorConfigError):
        SelfTerminatingOutput(4, 5, EOS, epsilon=eps)
    with pytest.raises(GeneratorConfigError):
        NonMonotonicSelfTerminatingOutput(4, 5, EOS, epsilon=eps)
    with pytest.raises(GeneratorConfigError):
        termination_bound(eps, 10)


def test_t_star_and_sampling_tail():
    assert t_star(1e-3) == 693
    assert t_star(1e-5) == 69315
    for eps in (1e-3, 0.01, 0.1, 0.3, 0.5):
        t = t_star(eps)
        assert (1 - eps) ** t <= 0.5 < (1 - eps) ** (t - 1)
    bound = termination_bound(0.1, 10)
    assert bound.sampling_tail == pytest.approx(0.9 ** 55)
    assert bound.to_dict()["t_star"] == 7


def test_bad_layer_settings():
    with pytest.raises(GeneratorConfigError):
        OutputLayerSpec("tanh")
    with pytest.raises(GeneratorConfigError):
        SoftmaxOutput(4, 5, eos_id=7)
    with pytest.raises(GeneratorConfigError):
        SoftmaxOutput(4, 5, eos_id=2, never_ids=(2,))
