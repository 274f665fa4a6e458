"""The NVAE model: shapes, objective, distributions, regularisers, bad input."""
import math

import pytest

torch = pytest.importorskip("torch")

from kx_spacy.errors import KxError  # noqa: E402
from kx_spacy.models.nvae.config import NVAEConfig, NVAEError  # noqa: E402
from kx_spacy.models.nvae.distributions import (  # noqa: E402
    DiagonalNormal,
    DiscretizedLogisticMixture,
)
from kx_spacy.models.nvae.layers import WNConv2d, cached_weights, soft_clamp  # noqa: E402
from kx_spacy.models.nvae.mlp_vae import MLPVAE  # noqa: E402
from kx_spacy.models.nvae.model import NVAE  # noqa: E402
from kx_spacy.models.nvae.regularizers import (  # noqa: E402
    SpectralRegularizer,
    balanced_kl,
    kl_balance_alpha,
    kl_warmup_coefficient,
)


def _binary(n=4, size=28, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, size, size, generator=g) > 0.5).float()


def test_tiny_nvae_forward_and_objective():
    torch.manual_seed(0)
    model = NVAE(NVAEConfig.tiny())
    out = model(_binary())
    assert out.kl_groups.shape == (4, 2)  # 2 scales × 1 group
    assert out.recon_log_prob.shape == out.log_q.shape == out.log_p.shape == (4,)
    assert (out.kl_groups >= 0).all()
    assert (out.recon_log_prob < 0).all()
    loss = model.objective(_binary(), kl_coeff=0.5, reg_coeff=1e-2)
    loss.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert loss.spectral.item() > 0 and loss.bn.item() > 0
    assert loss.nelbo.item() == pytest.approx(loss.recon.item() + loss.kl.item(), rel=1e-5)


def test_repeated_posterior_samples_equal_repeated_images():
    """log_weights_repeated encodes each image once: the same weights as repeating the images
    (same random draws), in eval mode (the IW evaluation) and in training mode."""
    model = NVAE(NVAEConfig.tiny(num_groups_per_scale=2, channels_last=True)).to(memory_format=torch.channels_last)
    x = _binary(3)
    for train in (False, True):
        model.train(train)
        torch.manual_seed(7)
        fast = model.log_weights_repeated(x, 4)
        torch.manual_seed(7)
        slow = model.log_weights(x.repeat_interleave(4, dim=0))
        assert fast.shape == (12,) and torch.allclose(fast, slow, rtol=1e-4, atol=1e-3)
        assert not torch.allclose(fast[0], fast[1])  # different samples of one image
    with pytest.raises(NVAEError, match="repeats"):
        model(x, repeats=0)


def test_several_groups_per_scale_and_adaptive_groups():
    cfg = NVAEConfig.tiny(num_groups_per_scale=4, adaptive_groups=True, num_cells_per_group_dec=2)
    assert cfg.groups_per_scale == [4, 2]
    model = NVAE(cfg)
    assert model.num_groups == 6
    assert model.groups_top_down == [2, 4]
    assert model(_binary(2)).kl_groups.shape == (2, 6)
    # the balancing weights favour the finer scale by 4 per halving, per group count
    alpha = model.kl_alpha
    assert alpha.tolist() == pytest.approx([1, 1, 2, 2, 2, 2])


def test_padded_and_logistic_mixture_models():
    model = NVAE(NVAEConfig.tiny(padding=2, num_preprocess_blocks=2, num_postprocess_blocks=2))
    assert model(_binary(2)).recon_log_prob.shape == (2,)
    grey = torch.randint(0, 256, (2, 1, 28, 28)).float() / 255
    mix = NVAE(NVAEConfig.tiny(output="logistic_mixture", num_mixtures=3))
    out = mix(grey)
    assert torch.isfinite(out.elbo).all()
    assert mix.sample(2, 0.8).shape == (2, 1, 28, 28)


@pytest.mark.slow
def test_training_reduces_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = NVAE(NVAEConfig.tiny())
    x = _binary(8, seed=3)
    opt = torch.optim.Adamax(model.parameters(), lr=1e-2)
    first = None
    for _ in range(12):
        loss = model.objective(x, kl_coeff=1.0, reg_coeff=1e-3)
        opt.zero_grad()
        loss.loss.backward()
        opt.step()
        first = first if first is not None else loss.nelbo.item()
    assert loss.nelbo.item() < first - 30


def test_residual_posterior_with_zero_shift_is_the_prior():
    prior = DiagonalNormal(torch.randn(3, 4), torch.randn(3, 4))
    post = DiagonalNormal.residual(prior, torch.zeros(3, 4), torch.zeros(3, 4))
    assert torch.allclose(post.mu, prior.mu) and torch.allclose(post.sigma, prior.sigma)
    assert post.kl(prior).abs().max().item() < 1e-6
    shifted = DiagonalNormal.residual(prior, torch.ones(3, 4), torch.zeros(3, 4))
    assert (shifted.kl(prior) > 0).all()


def test_analytic_kl_matches_monte_carlo():
    torch.manual_seed(0)
    q = DiagonalNormal(torch.tensor([0.3]), torch.tensor([-0.5]))
    p = DiagonalNormal(torch.tensor([-0.2]), torch.tensor([0.1]))
    z = q.mu + q.sigma * torch.randn(200_000)
    mc = (q.log_prob(z) - p.log_prob(z)).mean().item()
    assert q.kl(p).item() == pytest.approx(mc, abs=0.01)


def test_soft_clamp_is_smooth_and_bounded():
    assert soft_clamp(torch.tensor([-1e4, 1e4])).abs().max().item() <= 5.0
    x = torch.linspace(-20, 20, 41, requires_grad=True)
    y = soft_clamp(x)
    assert y.abs().max().item() < 5.0
    assert soft_clamp(torch.tensor(0.1)).item() == pytest.approx(0.1, rel=1e-3)
    y.sum().backward()
    assert (x.grad > 0).all()


def test_logistic_mixture_is_normalised_over_grey_levels():
    torch.manual_seed(0)
    m, bits = 3, 3
    params = torch.randn(1, m * 3, 1, 1)
    levels = torch.arange(2 ** bits).float() / (2 ** bits - 1)
    total = sum(
        math.exp(DiscretizedLogisticMixture(params, 1, m, bits).log_prob(v.view(1, 1, 1, 1)).item())
        for v in levels
    )
    assert total == pytest.approx(1.0, abs=1e-3)


def test_spectral_regularizer_matches_largest_singular_value():
    torch.manual_seed(0)
    ws = [torch.randn(6, 9), torch.randn(6, 9), torch.randn(4, 3)]
    reg = SpectralRegularizer([tuple(w.shape) for w in ws], iterations=5)
    for _ in range(10):
        value = reg(ws)
    want = sum(torch.linalg.matrix_norm(w, ord=2).item() for w in ws)
    assert value.item() == pytest.approx(want, rel=1e-3)
    # differentiable in the weights
    w = torch.randn(5, 7, requires_grad=True)
    reg2 = SpectralRegularizer([(5, 7)])
    reg2([w]).backward()
    assert w.grad is not None and w.grad.abs().sum() > 0
    assert "u0" in reg.state_dict() and "v0" in reg.state_dict()


def test_weight_norm_conv_starts_as_plain_conv():
    conv = WNConv2d(3, 5, 3, padding=1)
    assert torch.allclose(conv.effective_weight(), conv.weight, atol=1e-6)
    with torch.no_grad():
        conv.log_gain.add_(math.log(2.0))
    assert torch.allclose(conv.effective_weight(), 2 * conv.weight, atol=1e-5)


def test_cached_weights_give_the_uncached_loss_and_gradients():
    """objective() normalises each kernel once per step (cached_weights): the loss and every
    gradient equal those of a pass that normalises the kernels at every use."""
    def run(cache):
        torch.manual_seed(0)
        model = NVAE(NVAEConfig.tiny())
        x = _binary(seed=3)
        torch.manual_seed(1)
        if cache:
            loss = model.objective(x, kl_coeff=0.5, reg_coeff=1e-2).loss
        else:  # the same terms, each kernel normalised where it is used
            out = model(x)
            w, _ = balanced_kl(out.kl_groups, 0.5, model.kl_alpha)
            spectral, bn = model.regularizers()
            loss = -out.recon_log_prob.mean() + w.mean() + 1e-2 * (spectral + bn)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()], model

    loss_c, grads_c, model = run(True)
    loss_u, grads_u, _ = run(False)
    assert torch.allclose(loss_c, loss_u, rtol=1e-5)
    for gc, gu in zip(grads_c, grads_u):
        assert torch.allclose(gc, gu, rtol=1e-4, atol=1e-6)
    conv = model._convs[0]
    assert conv._cached_weight is None  # dropped after the step
    with cached_weights([conv]):
        assert conv.effective_weight() is conv.effective_weight()
        assert torch.allclose(conv.effective_weight(), conv.compute_weight())
    with pytest.raises(RuntimeError), cached_weights([conv]):
        raise RuntimeError("boom")
    assert conv._cached_weight is None  # also after an error


@pytest.mark.parametrize("channels_last", [False, True])
def test_upsampling_decoder_cell_equals_resize_first(channels_last):
    """An up-sampling DecoderCell runs its pointwise layers before the nearest 2× resize:
    output, gradients and BN running means equal those of resizing first."""
    import torch.nn.functional as F

    from kx_spacy.models.nvae.cells import RESIDUAL_SCALE, DecoderCell

    torch.manual_seed(0)
    cell = DecoderCell(8, 4, expansion=2, upsample=True)
    ref = DecoderCell(8, 4, expansion=2, upsample=True)
    ref.load_state_dict(cell.state_dict())
    x = torch.randn(3, 8, 5, 5)
    if channels_last:
        cell, ref = cell.to(memory_format=torch.channels_last), ref.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    for mode in ("train", "eval"):
        getattr(cell, mode)(), getattr(ref, mode)()
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        out = cell(xa)
        big = F.interpolate(xb, scale_factor=2, mode="nearest")
        want = ref.skip(xb) + RESIDUAL_SCALE * ref.branch(big)
        assert out.shape == (3, 4, 10, 10)
        assert torch.allclose(out, want, atol=1e-5)
        g = torch.randn_like(out)
        out.backward(g)
        want.backward(g)
        assert torch.allclose(xa.grad, xb.grad, atol=1e-5)
        for pa, pb in zip(cell.parameters(), ref.parameters()):
            assert torch.allclose(pa.grad, pb.grad, rtol=1e-3, atol=1e-4)
    for ba, bb in zip(cell.modules(), ref.modules()):
        if isinstance(ba, torch.nn.BatchNorm2d):
            assert torch.allclose(ba.running_mean, bb.running_mean, atol=1e-6)
            assert torch.allclose(ba.running_var, bb.running_var, rtol=0.02)


def test_kl_warmup_and_balancing():
    assert kl_warmup_coefficient(0.0) == pytest.approx(1e-4)
    assert kl_warmup_coefficient(0.15, anneal_portion=0.3) == pytest.approx(0.5, abs=1e-3)
    assert kl_warmup_coefficient(0.9) == 1.0
    assert kl_warmup_coefficient(0.2, anneal_portion=0.0) == 1.0
    kl = torch.tensor([[10.0, 0.1], [12.0, 0.3]])
    alpha = kl_balance_alpha([1, 1])
    weighted, coeff = balanced_kl(kl, 0.5, alpha)
    assert coeff.mean().item() == pytest.approx(1.0)
    assert coeff[0] > coeff[1]  # the group that carries more information is pressed harder
    plain, ones = balanced_kl(kl, 1.0, alpha)
    assert torch.allclose(plain, kl.sum(1)) and torch.equal(ones, torch.ones(2))


def test_sampling_temperature():
    torch.manual_seed(0)
    model = NVAE(NVAEConfig.tiny()).eval()
    imgs = model.sample(3, 0.5)
    assert imgs.shape == (3, 1, 28, 28) and ((imgs >= 0) & (imgs <= 1)).all()
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(NVAEError, match="temperature"):
            model.sample(2, bad)
    with pytest.raises(NVAEError, match="temperature"):
        MLPVAE().sample(2, 0.0)


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.zeros(2, 1, 27, 27), "shape"),
        (torch.zeros(2, 3, 28, 28), "shape"),
        (torch.zeros(28, 28), "shape"),
        (torch.full((2, 1, 28, 28), 255.0), r"\[0, 1\]"),
        (torch.full((2, 1, 28, 28), -0.5), r"\[0, 1\]"),
        (torch.full((2, 1, 28, 28), float("nan")), "NaN"),
    ],
)
def test_bad_images_are_clear_errors(x, match):
    model = NVAE(NVAEConfig.tiny())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NVAEError, match=match):
        model(x)
    # nothing was touched (BN statistics included)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(KxError):
        MLPVAE()(x if x.dim() == 4 and x.shape[1] == 1 and x.shape[2] == 28 else torch.zeros(2, 1, 5, 5))


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(output="gaussian"), "output"),
        (dict(image_size=30), "divisible"),
        (dict(num_preprocess_blocks=2), "equal"),
        (dict(channels=0), "channels"),
        (dict(bn_momentum=0.0), "momentum"),
    ],
)
def test_bad_configs(overrides, match):
    with pytest.raises(NVAEError, match=match):
        NVAEConfig.tiny(**overrides)
    with pytest.raises(NVAEError, match="Unknown"):
        NVAEConfig.from_dict({"chanels": 4})


def test_bn_momentum_is_the_papers():
    model = NVAE(NVAEConfig.tiny())
    moms = {m.momentum for m in model._bns}
    assert moms == {0.05}


@pytest.mark.parametrize("size", [28, 7])
@pytest.mark.parametrize("channels_last", [False, True])
def test_factorized_reduce_as_one_conv_equals_four_shifted_convs(size, channels_last):
    """The fused 2×2 stride-2 form gives the four shifted 1×1 convolutions' output and
    gradients (even and odd sizes, both memory formats)."""
    from kx_spacy.models.nvae.layers import FactorizedReduce

    torch.manual_seed(0)
    fr = FactorizedReduce(4, 10)  # parts 2, 2, 2, 4
    x = torch.randn(3, 4, size, size)
    if channels_last:
        fr = fr.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = fr(x1), fr.forward_plain(x2)
    assert y1.shape == (3, 10, (size + 1) // 2, (size + 1) // 2)
    assert torch.allclose(y1, y2, atol=1e-6)
    g = torch.randn_like(y1)
    params = list(fr.parameters())
    for a, b in zip(torch.autograd.grad(y1, [x1] + params, g), torch.autograd.grad(y2, [x2] + params, g)):
        assert torch.allclose(a, b, atol=1e-5)
