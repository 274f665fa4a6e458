"""The importance-weighted bound against a model whose likelihood is known exactly."""
import math

import pytest

torch = pytest.importorskip("torch")

from kx_spacy.models.nvae.config import NVAEError  # noqa: E402
from kx_spacy.models.nvae.evaluation import image_grid, importance_weighted_nll, save_grid  # noqa: E402


class LinearGaussianVAE(torch.nn.Module):
    """p(z) = N(0, I), p(x | z) = N(Wz + b, σ² I), q(z | x) = N(Ax + c, diag(s²)).

    log p(x) = log N(x; b, WWᵀ + σ² I) in closed form. With ``exact=True`` q is the true
    posterior, so every importance weight equals p(x)."""

    def __init__(self, d_x=4, d_z=2, sigma=0.5, exact=False, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(d_x, d_z, generator=g, dtype=torch.float64)
        self.b = torch.randn(d_x, generator=g, dtype=torch.float64)
        self.sigma = sigma
        d = torch.nn.Parameter(torch.zeros(1))  # so that the model has a device
        self.dummy = d
        # exact posterior: Σ = (I + WᵀW/σ²)⁻¹, μ = Σ Wᵀ (x − b) / σ²
        prec = torch.eye(d_z, dtype=torch.float64) + self.W.T @ self.W / sigma ** 2
        self.post_cov = torch.linalg.inv(prec)
        self.A = self.post_cov @ self.W.T / sigma ** 2
        self.exact = exact
        if not exact:  # a deliberately imperfect, diagonal, too-wide posterior
            self.A = self.A * 0.7
            self.q_std = 1.5 * self.post_cov.diagonal().sqrt()
        else:
            self.q_chol = torch.linalg.cholesky(self.post_cov)

    def log_marginal(self, x):
        cov = self.W @ self.W.T + self.sigma ** 2 * torch.eye(self.W.shape[0], dtype=torch.float64)
        return torch.distributions.MultivariateNormal(self.b, covariance_matrix=cov).log_prob(x.double())

    def log_weights(self, x):
        x = x.double()
        mu = (x - self.b) @ self.A.T
        if self.exact:
            q = torch.distributions.MultivariateNormal(mu, scale_tril=self.q_chol)
            z = q.sample()
            log_q = q.log_prob(z)
        else:
            q = torch.distributions.Normal(mu, self.q_std)
            z = q.sample()
            log_q = q.log_prob(z).sum(1)
        log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1)
        log_px_z = torch.distributions.Normal(z @ self.W.T + self.b, self.sigma).log_prob(x).sum(1)
        return log_px_z + log_pz - log_q


def _data(model, n=64, seed=12345):
    g = torch.Generator().manual_seed(seed)  # a seed no evaluation below uses
    z = torch.randn(n, model.W.shape[1], generator=g, dtype=torch.float64)
    return z @ model.W.T + model.b + model.sigma * torch.randn(n, model.W.shape[0], generator=g, dtype=torch.float64)


def test_exact_posterior_gives_exact_likelihood():
    model = LinearGaussianVAE(exact=True)
    x = _data(model)
    res = importance_weighted_nll(model, x, k=3, batch_size=50)
    assert res.nll == pytest.approx(-model.log_marginal(x).mean().item(), abs=1e-9)
    assert torch.allclose(res.per_image, model.log_marginal(x), atol=1e-9)


def test_iw_bound_rises_with_k_towards_log_px_and_never_above_it():
    model = LinearGaussianVAE(exact=False)
    x = _data(model, n=64)
    true_nll = -model.log_marginal(x).mean().item()
    nll = {k: importance_weighted_nll(model, x, k=k, batch_size=64_000, seed=1000 + k).nll for k in (1, 10, 2000)}
    # the gap is real at K = 1 (imperfect q) and shrinks with K
    assert nll[1] > true_nll + 0.05
    assert nll[1] > nll[10] > nll[2000]
    # with large K the bound is within Monte-Carlo noise of log p(x), and not above it
    assert nll[2000] == pytest.approx(true_nll, abs=0.02)
    assert nll[2000] >= true_nll - 0.005


def test_k_split_across_passes_equals_one_pass_in_distribution():
    model = LinearGaussianVAE(exact=False)
    x = _data(model, n=8)
    a = importance_weighted_nll(model, x, k=500, batch_size=10_000, seed=0)  # one pass
    b = importance_weighted_nll(model, x, k=500, batch_size=64, seed=0)  # k split in chunks
    assert a.k == b.k == 500 and a.num_images == b.num_images == 8
    assert a.nll == pytest.approx(b.nll, abs=0.05)


def test_iw_bad_arguments():
    model = LinearGaussianVAE()
    x = _data(model, n=2)
    with pytest.raises(NVAEError):
        importance_weighted_nll(model, x, k=0)
    with pytest.raises(NVAEError):
        importance_weighted_nll(model, x[:0], k=2)


def test_non_finite_weight_is_an_error():
    class Broken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def log_weights(self, x):
            return torch.full((x.shape[0],), float("nan"))

    with pytest.raises(NVAEError, match="non-finite"):
        importance_weighted_nll(Broken(), torch.zeros(3, 2), k=4)


def test_grid_and_png(tmp_path):
    imgs = torch.rand(10, 1, 5, 5)
    grid = image_grid(imgs, nrow=4, pad=1)
    assert tuple(grid.shape) == (3 * 6 + 1, 4 * 6 + 1, 1)
    assert torch.equal(grid[1:6, 1:6, 0], imgs[0, 0])
    path = save_grid(imgs, tmp_path / "g.png", nrow=4, title="t")
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(NVAEError):
        image_grid(torch.rand(5, 5))
    assert math.isfinite(float(grid.sum()))
