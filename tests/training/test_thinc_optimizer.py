"""kx_spacy.Adam.v1 / SGD.v1: global-norm clipping for thinc and PyTorch-wrapped weights."""
import math

import numpy as np
import pytest
import spacy
from thinc.api import Linear, PyTorchWrapper, chain

from kx_spacy.training.thinc_optimizer import GlobalClipOptimizer, OptimizerConfigError, make_adam, make_sgd

N_LAYERS = 10


def _model(torch_too: bool = True):
    """A chain of many thinc arrays, plus (optionally) a PyTorch-wrapped linear layer."""
    import torch

    layers = [Linear(4, 4) for _ in range(N_LAYERS)]
    if torch_too:
        torch.manual_seed(0)
        layers.append(PyTorchWrapper(torch.nn.Linear(4, 4)))
    model = chain(*layers)
    model.initialize()
    return model


def _set_grads(model, value: float = 1.0):
    """Give every parameter array a gradient of norm ``value``; RETURNS a snapshot of the weights."""
    import torch

    before = {}
    for node in model.walk():
        for name in node.param_names:
            param = node.get_param(name)
            grad = np.full(param.shape, value / math.sqrt(param.size), dtype="f")
            node.set_grad(name, grad)
            before[(node.id, name)] = param.copy()
        for shim in node.shims:
            for pname, p in shim._model.named_parameters():
                p.grad = torch.full_like(p, value / math.sqrt(p.numel()))
                before[(shim.id, pname)] = p.detach().numpy().copy()
    return before


def _weights(model):
    out = {}
    for node in model.walk():
        for name in node.param_names:
            out[(node.id, name)] = node.get_param(name).copy()
        for shim in node.shims:
            for pname, p in shim._model.named_parameters():
                out[(shim.id, pname)] = p.detach().numpy().copy()
    return out


def _step(model, optimizer):
    model.finish_update(optimizer)
    optimizer.step_schedules()


def _update_norm(before, after):
    return math.sqrt(sum(float(((after[k] - before[k]) ** 2).sum()) for k in before))


def test_per_array_and_global_clipping_differ_and_global_bounds_the_step():
    lr, tau = 0.1, 1.0
    steps = {}
    for mode in ("per_array", "global_norm", "none"):
        model = _model()
        before = _set_grads(model, value=1.0)  # each array's norm is exactly tau: per-array clips nothing
        opt = make_sgd(lr, clip_mode=mode, clip_threshold=tau, use_averages=False)
        _step(model, opt)
        steps[mode] = _update_norm(before, _weights(model))
    n_arrays = 2 * N_LAYERS + 2
    assert steps["per_array"] == pytest.approx(lr * math.sqrt(n_arrays), rel=1e-4)
    assert steps["none"] == pytest.approx(steps["per_array"], rel=1e-4)
    # global: the whole step is bounded by lr * tau, thinc and torch weights together
    assert steps["global_norm"] == pytest.approx(lr * tau, rel=1e-4)
    assert steps["per_array"] > 4 * steps["global_norm"]


def test_global_norm_is_measured_before_any_update_and_reported():
    model = _model()
    _set_grads(model, value=3.0)
    opt = make_sgd(0.01, clip_mode="global_norm", clip_threshold=1.0, use_averages=False)
    model.finish_update(opt)
    assert opt.last_grad_norm is None  # nothing applied yet: the step is not complete
    opt.step_schedules()
    n_arrays = 2 * N_LAYERS + 2
    assert opt.last_grad_norm == pytest.approx(3.0 * math.sqrt(n_arrays), rel=1e-4)


def test_torch_weights_move_by_the_clipped_sgd_step():
    import torch

    model = _model()
    before = _set_grads(model, value=2.0)
    torch_layer = model.layers[-1].shims[0]._model
    grads = {n: p.grad.clone() for n, p in torch_layer.named_parameters()}
    opt = make_sgd(0.5, clip_mode="global_norm", clip_threshold=1.0, use_averages=False)
    _step(model, opt)
    factor = 1.0 / opt.last_grad_norm
    for name, p in torch_layer.named_parameters():
        expected = before[(model.layers[-1].shims[0].id, name)] - 0.5 * factor * grads[name].numpy()
        np.testing.assert_allclose(p.detach().numpy(), expected, rtol=1e-5, atol=1e-6)
        assert float(p.grad.abs().sum()) == 0.0  # the model's gradient was consumed


def test_smooth_clipping_scales_by_tau_over_norm_plus_tau():
    model = _model(torch_too=False)
    before = _set_grads(model, value=1.0)
    opt = make_sgd(1.0, clip_mode="smooth", clip_threshold=2.0, use_averages=False)
    _step(model, opt)
    norm = opt.last_grad_norm
    assert _update_norm(before, _weights(model)) == pytest.approx(norm * 2.0 / (norm + 2.0), rel=1e-4)


def test_nan_gradient_skips_the_step_and_counts_it():
    model = _model()
    before = _set_grads(model, value=1.0)
    first = model.layers[0]
    grad = first.get_grad("W").copy()
    grad[0, 0] = np.nan
    first.set_grad("W", grad)
    opt = make_adam(0.01, clip_mode="global_norm")
    _step(model, opt)
    assert opt.skipped_steps == 1
    after = _weights(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_per_array_mode_matches_thinc_adam_exactly():
    from thinc.api import Adam, fix_random_seed

    results = []
    for opt in (Adam(0.01, grad_clip=0.5), make_adam(0.01, clip_mode="per_array", clip_threshold=0.5)):
        fix_random_seed(0)
        model = _model(torch_too=False)
        for _ in range(3):
            _set_grads(model, value=2.0)
            _step(model, opt)
        results.append(list(_weights(model).values()))
    for ours, thincs in zip(results[1], results[0]):
        np.testing.assert_array_equal(ours, thincs)


def test_update_without_step_schedules_warns_and_applies():
    model = _model(torch_too=False)
    before = _set_grads(model)
    opt = make_sgd(0.1, use_averages=False)
    model.finish_update(opt)
    _set_grads(model)
    with pytest.warns(UserWarning, match="step_schedules"):
        model.finish_update(opt)
    assert _update_norm(before, _weights(model)) > 0


@pytest.mark.parametrize("kwargs", [{"clip_mode": "elementwise"}, {"clip_threshold": 0.0}, {"clip_threshold": math.inf}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(OptimizerConfigError):
        make_adam(0.001, **kwargs)


def test_registered_and_usable_from_a_spacy_training_config():
    nlp = spacy.blank("en")
    nlp.add_pipe("textcat")
    nlp.config["training"]["optimizer"] = {
        "@optimizers": "kx_spacy.Adam.v1", "learn_rate": 0.01, "clip_mode": "global_norm", "clip_threshold": 1.0,
    }
    from spacy.training import Example

    data = [("great fun", "POS"), ("awful waste", "NEG"), ("really great", "POS"), ("so awful", "NEG")]
    examples = [Example.from_dict(nlp.make_doc(t), {"cats": {"POS": y == "POS", "NEG": y == "NEG"}}) for t, y in data]
    opt = nlp.initialize(lambda: examples)
    assert isinstance(opt, GlobalClipOptimizer)
    losses = []
    for _ in range(15):
        step_losses = {}
        nlp.update(examples, sgd=False, losses=step_losses)
        for _, proc in nlp.pipeline:
            proc.finish_update(opt)
        opt.step_schedules()
        losses.append(step_losses["textcat"])
    assert opt.last_grad_norm is not None and opt.last_grad_norm > 0
    assert losses[-1] < losses[0]
