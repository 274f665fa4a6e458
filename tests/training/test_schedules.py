import math

import pytest
import torch

from kx_spacy.training import TrainingError, WarmupDecay


def _sched(**kw):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    return opt, WarmupDecay(opt, **kw)


def _old_factor(step, warmup, progress, decay, min_ratio):
    """The hand-written schedule the MLM loop had before the engine (for comparison)."""
    warm = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    if decay == "constant":
        return warm
    if decay == "cosine":
        return warm * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
    return warm * (min_ratio + (1 - min_ratio) * (1 - progress))


@pytest.mark.parametrize("decay,warmup,min_ratio", [("linear", 10, 0.0), ("linear", 0, 0.02), ("cosine", 10, 0.1),
                                                    ("constant", 5, 0.0)])
def test_factors_equal_the_old_formula(decay, warmup, min_ratio):
    opt, sched = _sched(decay=decay, warmup_steps=warmup, max_steps=100, min_lr_ratio=min_ratio)
    for step in range(100):
        assert opt.param_groups[0]["lr"] == pytest.approx(2.0 * _old_factor(step, warmup, step / 100, decay, min_ratio),
                                                          rel=1e-12, abs=1e-15)
        opt.step()
        sched.step()


def test_time_budget_decays_when_it_runs_out_first():
    opt, sched = _sched(decay="linear", warmup_steps=0, max_steps=1000)
    sched.set_time_fraction(0.75)
    opt.step()
    sched.step()  # step 1 of 1000, but 75 % of the time used
    assert opt.param_groups[0]["lr"] == pytest.approx(2.0 * 0.25)
    sched.set_time_fraction(0.0)
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(2.0 * (1 - 2 / 1000))


def test_state_round_trip_and_bad_settings():
    opt, sched = _sched(decay="cosine", warmup_steps=3, max_steps=20, min_lr_ratio=0.1)
    for _ in range(7):
        opt.step()
        sched.step()
    state = sched.state_dict()
    assert "_warm" not in state and torch.save(state, __import__("io").BytesIO()) is None
    opt2, sched2 = _sched(decay="linear", warmup_steps=0, max_steps=5)
    sched2.load_state_dict(state)
    opt2.step()
    sched2.step()
    opt.step()
    sched.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
    with pytest.raises(TrainingError, match="Unknown decay"):
        _sched(decay="step", max_steps=10)
    with pytest.raises(TrainingError, match="max_steps > 0"):
        _sched(max_steps=0)
