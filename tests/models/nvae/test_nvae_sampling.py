"""Sampling with temperature and the guarded batch-norm re-adjustment."""
import pytest

torch = pytest.importorskip("torch")

from kx_spacy.models.nvae.config import NVAEConfig, NVAEError  # noqa: E402
from kx_spacy.models.nvae.layers import bn_layers  # noqa: E402
from kx_spacy.models.nvae.model import NVAE  # noqa: E402
from kx_spacy.models.nvae.sampling import readjust_batchnorm, sample_images  # noqa: E402


def _bn_state(model):
    return [(m.running_mean.clone(), m.running_var.clone()) for m in bn_layers(model)]


def test_readjustment_changes_statistics_and_sample_images_puts_them_back():
    torch.manual_seed(0)
    model = NVAE(NVAEConfig.tiny()).eval()
    before = _bn_state(model)
    res = sample_images(model, 6, temperature=0.7, readjust_bn=True, readjust_samples=8, readjust_iterations=2)
    assert res.readjusted and not res.fallback
    assert res.images.shape == (6, 1, 28, 28) and torch.isfinite(res.images).all()
    after = _bn_state(model)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(before, after))
    assert not model.training
    # readjust_batchnorm itself keeps the new statistics (and the momentum of the paper)
    assert readjust_batchnorm(model, 0.7, num_samples=8, iterations=2)
    assert any(not torch.equal(a[1], b[1]) for a, b in zip(before, _bn_state(model)))
    assert {m.momentum for m in bn_layers(model)} == {0.05}


def test_readjustment_that_gives_nan_falls_back_to_the_training_statistics():
    torch.manual_seed(0)
    model = NVAE(NVAEConfig.tiny()).eval()
    before = _bn_state(model)
    real_sample = model.sample

    def poisoned(n, t=1.0):  # in train mode (re-adjustment passes) the decoder blows up
        out = real_sample(n, t)
        if model.training:
            for m in bn_layers(model):
                m.running_var.fill_(float("nan"))
        return out

    model.sample = poisoned
    res = sample_images(model, 4, temperature=0.8, readjust_bn=True, readjust_samples=4, readjust_iterations=1)
    assert res.fallback and not res.readjusted
    assert torch.isfinite(res.images).all()
    assert all(torch.equal(a[1], b[1]) for a, b in zip(before, _bn_state(model)))


def test_bad_temperatures_and_sizes():
    model = NVAE(NVAEConfig.tiny())
    for t in (0.0, -0.5):
        with pytest.raises(NVAEError, match="temperature"):
            sample_images(model, 2, temperature=t)
        with pytest.raises(NVAEError, match="temperature"):
            readjust_batchnorm(model, t)
    with pytest.raises(NVAEError):
        readjust_batchnorm(model, 1.0, num_samples=1)
    with pytest.raises(NVAEError):
        model.sample(0, 1.0)
