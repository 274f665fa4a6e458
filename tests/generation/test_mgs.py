"""The MGS update and its PG / MRT / MLE siblings on toy models whose task loss is known."""
import math

import pytest
import torch
from torch import nn

from kx_spacy.generation.mgs import (
    MGSConfig,
    MGSConfigError,
    MGSTaskError,
    SequenceLevelUpdater,
    decode_budget,
    mgs_update,
    select_parameters,
)

T, V = 6, 5
TARGET = torch.tensor([0, 1, 2, 3, 4, 0])


class Table(nn.Module):
    """A 'decoder' whose greedy output is the argmax of a (T, V) logit table."""

    def __init__(self):
        super().__init__()
        init = torch.zeros(T, V)
        init[torch.arange(T), (TARGET + 1) % V] = 0.5  # every position starts wrong
        self.logits = nn.Parameter(init)
        self.other = nn.Linear(3, 3)


def task_closures(module, mle_positions=3):
    def mle_loss():
        # the MLE signal only sees the first positions: the rest must be found by search
        return nn.functional.cross_entropy(module.logits[:mle_positions], TARGET[:mle_positions]) \
            + 0.0 * module.other.weight.sum()

    def decode():
        return [module.logits.argmax(-1).tolist()]

    def task_loss(hyps):
        return [sum(int(a != b) for a, b in zip(h, TARGET.tolist())) / T for h in hyps]

    return mle_loss, decode, task_loss


def current_loss(module):
    _, decode, task_loss = task_closures(module)
    return task_loss(decode())[0]


@pytest.mark.slow
def test_mgs_lowers_a_task_loss_that_mle_cannot_see():
    torch.manual_seed(0)
    mgs_model, mle_model = Table(), Table()
    config = MGSConfig(num_candidates=4, beta=100.0, noise=0.3, noise_scale="constant", parameters=["logits"])
    opt = torch.optim.SGD(mgs_model.parameters(), lr=1.0)
    for step in range(60):
        mgs_update(mgs_model, *task_closures(mgs_model), opt, config, seed=step)
    mle_opt = torch.optim.SGD(mle_model.parameters(), lr=1.0)
    for _ in range(60):
        mle_opt.zero_grad()
        task_closures(mle_model)[0]().backward()
        mle_opt.step()
    assert current_loss(Table()) == 1.0
    assert current_loss(mle_model) == 0.5  # MLE fixes the three positions it sees, nothing else
    assert current_loss(mgs_model) < 0.5


def test_rejected_candidates_leave_weights_bit_identical():
    model = Table()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    seen = []
    mle_loss, decode, task_loss = task_closures(model)

    def spy_decode():
        seen.append(model.logits.detach().clone())
        assert torch.equal(model.other.weight, before["other.weight"])  # outside the subset
        return decode()

    stats = mgs_update(model, mle_loss, spy_decode, task_loss, torch.optim.SGD(model.parameters(), lr=0.0),
                       MGSConfig(num_candidates=4, parameters=["logits"]), seed=3)
    assert len(seen) == 5 == stats.decodes  # current + K candidates
    assert any(not torch.equal(s, before["logits"]) for s in seen[1:])  # candidates were applied
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n  # and reverted exactly
        assert p.grad is None
    assert stats.extra_bytes == before["logits"].numel() * 4 == stats.subset_bytes


def test_step_is_the_weighted_sum_of_the_candidates():
    model = Table()
    theta = model.logits.detach().clone()
    seen = []
    mle_loss, decode, task_loss = task_closures(model)

    def spy_decode():
        seen.append(model.logits.detach().clone())
        return decode()

    config = MGSConfig(num_candidates=3, beta=2.0, noise=0.5, noise_scale="constant", clip_mode="none",
                       parameters=["logits"], density="unit")
    stats = mgs_update(model, mle_loss, spy_decode, task_loss, torch.optim.SGD([model.logits], lr=1.0), config,
                       seed=11)
    eps = [s - theta for s in seen[1:]]
    expected = theta + sum(w * e for w, e in zip(stats.weights, eps))
    assert torch.allclose(model.logits.detach(), expected, atol=1e-5)
    assert sum(stats.weights) == pytest.approx(1.0)
    # candidates 0 and 2 are centred on the MLE step, 1 is pure noise
    assert stats.mle_weight == pytest.approx(stats.weights[0] + stats.weights[2])


def worse_everywhere(model):
    """Task loss 0 at the current weights, 1 for any perturbation."""
    theta = model.logits.detach().clone()
    mle_loss, _, _ = task_closures(model)

    def decode():
        return [bool(torch.equal(model.logits, theta))]

    def task_loss(hyps):
        return [0.0 if h else 1.0 for h in hyps]

    return theta, mle_loss, decode, task_loss


def test_all_candidates_worse_with_zero_candidate_keeps_the_model():
    model = Table()
    theta, *fns = worse_everywhere(model)
    config = MGSConfig(num_candidates=4, beta=100.0, zero_candidate=True, parameters=["logits"])
    stats = mgs_update(model, *fns, torch.optim.SGD([model.logits], lr=1.0), config, seed=0)
    assert stats.all_worse and not stats.skipped
    assert stats.weights[-1] == pytest.approx(1.0)  # the zero candidate takes the weight
    assert torch.allclose(model.logits.detach(), theta, atol=1e-30)


def test_all_candidates_worse_without_zero_candidate_is_defined():
    model = Table()
    theta, *fns = worse_everywhere(model)
    stats = mgs_update(model, *fns, torch.optim.SGD([model.logits], lr=1.0),
                       MGSConfig(num_candidates=4, beta=100.0, parameters=["logits"]), seed=0)
    assert stats.all_worse and not stats.skipped
    assert sum(stats.weights) == pytest.approx(1.0)
    assert torch.isfinite(model.logits).all() and not torch.equal(model.logits, theta)


def test_nan_task_loss_drops_the_candidate():
    model = Table()
    mle_loss, decode, task_loss = task_closures(model)
    calls = []

    def nan_second(hyps):
        calls.append(1)
        return [math.nan] if len(calls) == 3 else task_loss(hyps)  # call 1 = current, 3 = candidate 1

    stats = mgs_update(model, mle_loss, decode, nan_second, torch.optim.SGD([model.logits], lr=1.0),
                       MGSConfig(num_candidates=4, parameters=["logits"]), seed=1)
    assert stats.dropped == 1 and stats.weights[1] == 0.0 and not stats.skipped
    assert sum(stats.weights) == pytest.approx(1.0)


def test_all_nan_skips_the_update():
    model = Table()
    before = model.logits.detach().clone()
    mle_loss, decode, _ = task_closures(model)
    stats = mgs_update(model, mle_loss, decode, lambda h: [math.nan], torch.optim.SGD([model.logits], lr=1.0),
                       MGSConfig(num_candidates=2, parameters=["logits"]), seed=1)
    assert stats.skipped and stats.dropped == 2
    assert torch.equal(model.logits, before) and model.logits.grad is None


def test_without_score_current_decodes_k_times():
    model = Table()
    stats = mgs_update(model, *task_closures(model), torch.optim.SGD([model.logits], lr=0.1),
                       MGSConfig(num_candidates=2, score_current=False, parameters=["logits"]), seed=0)
    assert stats.decodes == 2 and math.isnan(stats.task_loss) and not stats.skipped


@pytest.mark.parametrize("k", [0, -1, 1.5, True])
def test_bad_k_raises(k):
    with pytest.raises(MGSConfigError):
        MGSConfig(num_candidates=k)


@pytest.mark.parametrize("bad", [dict(method="x"), dict(density="q"), dict(mle_mix=2.0), dict(beta=-1.0),
                                 dict(clip_threshold=0.0), dict(pg_baseline="z")])
def test_bad_settings_raise(bad):
    with pytest.raises(MGSConfigError):
        MGSConfig(**bad)


def test_parameter_patterns():
    model = Table()
    assert [n for n, _ in select_parameters(model, ["other.*"])] == ["other.weight", "other.bias"]
    assert [n for n, _ in select_parameters(model, ["re:^log"])] == ["logits"]
    assert len(select_parameters(model, [])) == 3
    with pytest.raises(MGSTaskError):
        select_parameters(model, ["nothing*"])


def test_decode_budget():
    assert decode_budget(10) == int(1.3 * 12)
    assert decode_budget(0) == 2
    assert decode_budget(10_000) == 1000


# ---- the updater on the toy seq2seq: PG, MRT, MLE mixing, state
@pytest.fixture(scope="module")
def toy():
    from kx_spacy.generation.mgs_toy import ToyTask, collate, make_pairs, make_toy_model

    torch.manual_seed(0)
    return make_toy_model(width=16, seed=0), ToyTask(0), collate(make_pairs(4, seed=0))


@pytest.mark.parametrize("method", ["mgs", "pg", "mrt"])
def test_updater_methods_update_only_the_subset(toy, method):
    from kx_spacy.generation.task_losses import EditDistanceLoss

    module, task, batch = toy
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    updater = SequenceLevelUpdater(task, EditDistanceLoss(), MGSConfig(method=method, num_candidates=2,
                                                                        parameters=["output.*"]))
    logs = updater.step(module, batch, torch.optim.SGD(module.parameters(), lr=0.5))
    assert logs["sequences"] == 3 * 4 and logs["mle_step"] == 0.0
    changed = {n for n, p in module.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= {"output.weight", "output.bias"}
    assert all(p.grad is None for p in module.parameters())


def test_mle_mix_one_is_all_mle_and_state_round_trips(toy):
    from kx_spacy.generation.task_losses import EditDistanceLoss

    module, task, batch = toy
    updater = SequenceLevelUpdater(task, EditDistanceLoss(), MGSConfig(mle_mix=1.0, seed=5))
    opt = torch.optim.SGD(module.parameters(), lr=0.01)
    assert updater.step(module, batch, opt)["mle_step"] == 1.0
    state = updater.state_dict()
    a = updater._draw()
    other = SequenceLevelUpdater(task, EditDistanceLoss(), MGSConfig(mle_mix=1.0, seed=99))
    other.load_state_dict(state)
    assert other._draw() == a


def test_task_loss_of_wrong_length_raises(toy):
    module, task, batch = toy
    updater = SequenceLevelUpdater(task, lambda h, r: [0.0], MGSConfig(num_candidates=1))
    with pytest.raises(MGSTaskError):
        updater.step(module, batch, torch.optim.SGD(module.parameters(), lr=0.01))


class _Ctx:
    """The engine's StepContext as far as engine_step uses it."""

    def __init__(self):
        self.written = None

    def set_gradients(self, params, grads):
        self.written = list(zip(params, grads))
        for p, g in self.written:
            p.grad = g.detach().clone()


def test_engine_step_writes_the_same_update(toy):
    from kx_spacy.generation.task_losses import EditDistanceLoss

    module, task, batch = toy
    config = MGSConfig(num_candidates=2, parameters=["output.*"], seed=4)
    a = SequenceLevelUpdater(task, EditDistanceLoss(), config)
    b = SequenceLevelUpdater(task, EditDistanceLoss(), config)
    params, grads, _ = a.compute(module, batch)
    ctx = _Ctx()
    value, logs = b.engine_step(module, batch, ctx)
    assert math.isfinite(value) and "decodes" in logs and "passes" in logs and "grad_norm" not in logs
    assert [p for p, _ in ctx.written] == params
    for p, g in zip(params, grads):
        assert torch.allclose(p.grad, g, atol=1e-7)
    assert all(p.grad is None for n, p in module.named_parameters() if not n.startswith("output."))
    for p in module.parameters():
        p.grad = None


def test_skipped_update_is_a_nan_loss_for_the_engine(toy):
    module, task, batch = toy
    updater = SequenceLevelUpdater(task, lambda h, r: [math.nan] * len(h), MGSConfig(num_candidates=2))
    ctx = _Ctx()
    value, logs = updater.engine_step(module, batch, ctx)
    assert math.isnan(value) and logs["skipped"] == 1.0 and ctx.written is None


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mgs", "pg"])
def test_interrupted_finetune_resumes_exactly(tmp_path, method):
    pytest.importorskip("kx_spacy.training.engine")
    from kx_spacy.generation.mgs_toy import finetune, make_pairs, make_toy_model
    from kx_spacy.generation.task_losses import EditDistanceLoss

    pairs = make_pairs(64, seed=1)
    config = MGSConfig(method=method, num_candidates=2, seed=3)
    straight = make_toy_model(width=16, seed=0)
    finetune(straight, pairs, config=config, task_loss=EditDistanceLoss(), steps=4, batch_size=16,
             output_dir=tmp_path / "a")
    resumed = make_toy_model(width=16, seed=0)
    finetune(resumed, pairs, config=config, task_loss=EditDistanceLoss(), steps=2, batch_size=16,
             output_dir=tmp_path / "b")
    fresh = make_toy_model(width=16, seed=0)  # the resumed run loads its weights from the checkpoint
    cost = finetune(fresh, pairs, config=config, task_loss=EditDistanceLoss(), steps=4, batch_size=16,
                    output_dir=tmp_path / "b", resume=True)
    assert cost["updates"] == 4
    for (n, p), q in zip(straight.named_parameters(), fresh.parameters()):
        assert torch.equal(p, q), n


def test_log_proposal_matches_the_reference_formula():
    from kx_spacy.generation.mgs import _log_proposal

    ee, eg, gg = 0.7, 0.2, 0.5
    # wellecks/mgs perturb(): q = ½·exp(−½ εε) + ½·exp(−½ εε + εg − ½ gg)
    reference = math.log(0.5 * math.exp(-0.5 * ee) + 0.5 * math.exp(-0.5 * ee + eg - 0.5 * gg))
    assert _log_proposal("unit", 0.5, ee, eg, gg, 0, 0, 0) == pytest.approx(reference)
    # "scaled" uses the σ-normalised sums, "none" is flat
    assert _log_proposal("scaled", 0.5, 9, 9, 9, ee, eg, gg) == pytest.approx(reference)
    assert _log_proposal("none", 0.5, ee, eg, gg, ee, eg, gg) == 0.0
    # only MLE-centred candidates: the N(g, ·) component alone
    assert _log_proposal("unit", 1.0, ee, eg, gg, 0, 0, 0) == pytest.approx(-0.5 * (ee - 2 * eg + gg))


@pytest.mark.parametrize("group", [0, 2, 3])
def test_batched_candidates_match_one_at_a_time(group):
    from kx_spacy.generation.mgs import mgs_search

    model = Table()
    before = model.logits.detach().clone()
    mle_loss, decode, task_loss = task_closures(model)
    calls = []

    def decode_candidates(values_list):
        assert torch.equal(model.logits, before)  # the module itself is never perturbed
        calls.append(len(values_list))
        return [[(model.logits if v is None else v[0]).argmax(-1).tolist()] for v in values_list]

    base = dict(num_candidates=5, beta=10.0, noise=0.5, noise_scale="constant", parameters=["logits"])
    named = select_parameters(model, ["logits"])
    d_seq, s_seq = mgs_search(model, mle_loss, decode, task_loss, MGSConfig(candidate_batch=1, **base),
                              parameters=named, seed=3, decode_candidates=decode_candidates)
    assert not calls and s_seq.passes == 6  # candidate_batch=1: in place, one decode each
    d_bat, s_bat = mgs_search(model, mle_loss, decode, task_loss, MGSConfig(candidate_batch=group, **base),
                              parameters=named, seed=3, decode_candidates=decode_candidates)
    size = 5 if group == 0 else group
    assert calls[0] == min(5, size) + 1 and sum(calls) == 6  # the current model rides in the first pass
    assert s_bat.passes == len(calls) < s_seq.passes and s_bat.decodes == s_seq.decodes == 6
    assert s_bat.candidate_losses == s_seq.candidate_losses and s_bat.task_loss == s_seq.task_loss
    assert s_bat.weights == pytest.approx(s_seq.weights)
    assert torch.allclose(d_bat[0], d_seq[0]) and torch.equal(model.logits, before)
    assert s_bat.extra_bytes == min(5, size) * before.numel() * before.element_size()


def test_candidate_batch_must_be_a_count():
    with pytest.raises(MGSConfigError):
        MGSConfig(candidate_batch=-1)
