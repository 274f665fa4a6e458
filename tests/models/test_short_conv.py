"""The blocks' causal short convolution (token shift): exact against a loop, in every form."""
import pytest
import torch

from kx_spacy.errors import AttentionShapeError
from kx_spacy.models.char_lm import CharLM
from kx_spacy.models.linear_attention import AttentionStack, ShortConv, TransformerBlock

from test_linear_attention import check_stack_step_and_prefill  # noqa: E402  (tests/models is on sys.path)


def _reference(conv, x, mask=None):
    w = conv.weight.detach().double()
    x = x.double() if mask is None else x.double() * mask[..., None]
    y = x.clone()
    for t in range(x.shape[1]):
        for j in range(conv.kernel):
            if t - j >= 0:
                y[:, t] += w[:, conv.kernel - 1 - j] * x[:, t - j]
    return y


@pytest.mark.parametrize("kernel", [1, 2, 4])
@pytest.mark.parametrize("masked", [False, True])
def test_short_conv_matches_loop_and_steps(kernel, masked):
    torch.manual_seed(kernel)
    conv = ShortConv(6, kernel)
    with torch.no_grad():
        conv.weight.normal_()
    x = torch.randn(3, 7, 6)
    mask = torch.rand(3, 7) > 0.3 if masked else None
    y, past = conv(x, mask)
    torch.testing.assert_close(y.double(), _reference(conv, x, mask), atol=1e-5, rtol=0)
    assert past.shape == (3, kernel - 1, 6)
    # in two pieces with the carry, and step by step
    y1, p1 = conv(x[:, :3], None if mask is None else mask[:, :3])
    y2, p2 = conv(x[:, 3:], None if mask is None else mask[:, 3:], p1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, atol=1e-6, rtol=0)
    torch.testing.assert_close(p2, past)
    p, ys = conv.init_past(3), []
    for t in range(7):
        yt, p = conv.step(x[:, t], p, None if mask is None else mask[:, t])
        ys.append(yt)
    torch.testing.assert_close(torch.stack(ys, 1), y, atol=1e-6, rtol=0)
    torch.testing.assert_close(p, past)


def test_short_conv_starts_as_identity_and_short_inputs():
    conv = ShortConv(4, 3)
    x = torch.randn(2, 5, 4)
    assert torch.equal(conv(x)[0], x)
    y, past = conv(x[:, :1])  # T < kernel - 1: the carry keeps the zeros before the sequence
    assert past.shape == (2, 2, 4) and torch.equal(past[:, 1], x[:, 0]) and not past[:, 0].any()
    y, past = conv(x[:, :0])
    assert y.shape == (2, 0, 4) and past.shape == (2, 2, 4)
    with pytest.raises(AttentionShapeError):
        ShortConv(4, 0)
    with pytest.raises(AttentionShapeError, match="causal"):
        TransformerBlock(8, 2, causal=False, short_conv=2)
    with pytest.raises(AttentionShapeError, match="short_conv_at"):
        TransformerBlock(8, 2, causal=True, short_conv=2, short_conv_at="output")


@pytest.mark.parametrize("at", ["input", "attention"])
@pytest.mark.parametrize("attention,chunk", [("linear", 1), ("linear", 3), ("linear", 64), ("softmax", 4)])
def test_stack_with_short_conv_forward_step_prefill_agree(attention, chunk, at):
    torch.manual_seed(5)
    kwargs = {"chunk_size": chunk} if attention == "linear" else {}
    stack = AttentionStack(2, 16, 2, attention=attention, causal=True, short_conv=3, short_conv_at=at, **kwargs)
    with torch.no_grad():
        for b in stack.blocks:
            b.conv.weight.normal_(std=0.5)
    stack.eval()
    x = torch.randn(2, 9, 16)
    y = check_stack_step_and_prefill(stack, x, split=4)
    if attention == "linear" and chunk == 3:  # the chunk size changes nothing
        other = AttentionStack(2, 16, 2, attention="linear", causal=True, short_conv=3, short_conv_at=at,
                               chunk_size=64)
        other.load_state_dict(stack.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(other(x), y, atol=2e-5, rtol=0)


@pytest.mark.parametrize("positions", ["learned", "sinusoidal", "none"])
def test_char_lm_positions_and_short_conv(positions):
    torch.manual_seed(0)
    lm = CharLM(11, 8, 16, 1, 2, attention="linear", chunk_size=4, positions=positions, short_conv=2)
    idx = torch.randint(0, 11, (2, 8))
    loss = lm(idx, idx)
    loss.backward()
    assert torch.isfinite(loss) and lm.stack.blocks[0].conv.weight.grad.abs().sum() > 0
    assert (lm.pos is not None) == (positions == "learned")
    if positions != "learned":  # no table: longer than context is fine
        assert lm(torch.randint(0, 11, (1, 20))).shape == (1, 20, 11)
    with pytest.raises(ValueError, match="positions"):
        CharLM(11, 8, 16, 1, 2, positions="rope")


def test_lm_config_passes_positions_and_short_conv():
    from kx_spacy.lm.char_lm import build_char_lm, load_lm_config

    cfg = load_lm_config(None, {"model.d_model": 16, "model.n_layers": 1, "model.n_heads": 2, "model.context": 8,
                                "model.positions": "none", "model.short_conv": 3, "model.short_conv_at": "attention"})
    for attention in ("linear", "softmax"):
        cfg["model"]["attention"] = attention
        lm = build_char_lm(cfg, 7)
        block = lm.stack.blocks[0]
        assert lm.pos is None and block.conv.kernel == 3 and block.short_conv_at == "attention"
