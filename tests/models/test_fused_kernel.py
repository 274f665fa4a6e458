"""The fused causal kernel's chunk groups and its pool of output buffers (CPU)."""
import pytest
import torch

import kx_spacy.models.linear_attention as la
from kx_spacy.models.linear_attention import linear_attention


def _qkv(b=2, h=3, t=23, d=6, e=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, t, w, generator=g, dtype=torch.float64) for w in (d, d, e)]


@pytest.mark.parametrize("group_floats", [1, 40, 1 << 19], ids=["one-chunk", "few-chunks", "whole-block"])
@pytest.mark.parametrize("fmap", ["elu", "relu", "identity"])
def test_fused_groups_match_cumsum(monkeypatch, group_floats, fmap):
    monkeypatch.setattr(la, "_FUSED_GROUP_FLOATS", group_floats)
    monkeypatch.setattr(la, "_FUSED_BLOCK_FLOATS", 200)           # blocks of one or two rows
    q, k, v = _qkv()
    if fmap == "identity":
        q, k = q.abs(), k.abs()
    mask = torch.rand(2, 23, generator=torch.Generator().manual_seed(1)) > 0.3
    outs, grads = [], []
    for algorithm in ("fused", "cumsum"):
        x = [t.clone().requires_grad_() for t in (q, k, v)]
        out = linear_attention(*x, feature_map=fmap, causal=True, mask=mask, chunk_size=4, algorithm=algorithm)
        outs.append(out)
        grads.append(torch.autograd.grad((out * torch.cos(out)).sum(), x))
    assert (outs[0] - outs[1]).abs().max() <= 1e-10
    for a, b in zip(*grads):
        assert (a - b).abs().max() <= 1e-9


def test_pooled_outputs_are_reused_only_when_nothing_refers_to_them():
    q, k, v = (t.float().requires_grad_() for t in _qkv(t=40, seed=2))

    def run():
        return linear_attention(q, k, v, causal=True, chunk_size=8, algorithm="fused")

    with torch.no_grad():
        y1 = run()
        keep = y1.clone()
        view = y1[:, :1]                      # a view keeps the storage alive
        del y1
        y2 = run() * 0 + run()                # two more outputs while the view lives
        assert torch.equal(view, keep[:, :1])
        p = view.data_ptr()
        del view
        assert run().data_ptr() == p          # now the buffer is handed out again
    y = run()
    y.sum().backward()
    g1 = [t.grad.clone() for t in (q, k, v)]
    run().sum().backward()                    # accumulates into the .grad of the first
    for t, g in zip((q, k, v), g1):
        assert torch.allclose(t.grad, 2 * g, atol=1e-5)
    assert torch.equal(y2, keep * 0 + keep)


def test_buffers_made_under_inference_mode_do_not_leak_into_training():
    # kept workspace buffers and pooled outputs made inside inference_mode are inference tensors;
    # in-place use of them outside it would raise
    q, k, v = (t.float() for t in _qkv(t=40, seed=3))
    with torch.inference_mode():
        ref = linear_attention(q, k, v, causal=True, chunk_size=8, algorithm="fused").clone()
    x = [t.clone().requires_grad_() for t in (q, k, v)]
    out = linear_attention(*x, causal=True, chunk_size=8, algorithm="fused")
    out.sum().backward()
    assert torch.allclose(out, ref, atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(linear_attention(q, k, v, causal=True, chunk_size=8, algorithm="fused"), ref, atol=1e-6)
    with torch.inference_mode():
        assert torch.allclose(linear_attention(q, k, v, causal=True, chunk_size=8, algorithm="fused"), ref, atol=1e-6)


def test_buffer_pools_can_be_released_and_capped(monkeypatch):
    for name in ("_SAVED_POOL_BYTES", "_OUTPUT_POOL_BYTES", "_WORKSPACE_KEEP_BYTES"):
        monkeypatch.setattr(la, name, getattr(la, name))            # restored after the test
    q, k, v = _qkv(t=64, seed=3)

    def fwd_bwd():
        x = [t.clone().requires_grad_() for t in (q, k, v)]
        out = linear_attention(*x, causal=True, chunk_size=8, algorithm="fused")
        return out.detach(), [g.detach() for g in torch.autograd.grad(out.sum(), x)]

    ref_out, ref_grads = fwd_bwd()
    la.release_cpu_buffers()
    fwd_bwd()
    assert la.release_cpu_buffers() > 0                  # the call above left buffers in the pools
    assert la.release_cpu_buffers() == 0                  # and they are gone
    la.set_cpu_buffer_limits(saved_bytes=0, output_bytes=0, workspace_bytes=0)
    out, grads = fwd_bwd()
    assert la.release_cpu_buffers() == 0                  # nothing kept under zero limits
    assert torch.equal(out, ref_out) and all(torch.equal(a, b) for a, b in zip(grads, ref_grads))
    with pytest.raises(la.AttentionKernelError):
        la.set_cpu_buffer_limits(output_bytes=-1)
