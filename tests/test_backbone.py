"""The shared-encoder adapter: faithful to the pipeline, leaves no trace on the shared module."""
import numpy
import pytest
import spacy
import torch

from kx_spacy.backbone import Backbone
from kx_spacy.errors import (
    KxError,
    MissingTransformerError,
    MissingTrfDataError,
    NoMaskTokenError,
    TransformerNotInitializedError,
    UnsupportedTransformerError,
)
from kx_spacy.testing import make_pipeline, transformer_config

LONG_TEXT = " ".join(["the quick brown fox jumps over the lazy dog ."] * 12)


def test_rebuilt_inputs_reproduce_pipeline_outputs(en_nlp):
    docs = list(en_nlp.pipe(["The cat sat on the mat.", LONG_TEXT]))
    backbone = Backbone.from_nlp(en_nlp)
    for doc in docs:
        pieces = backbone.doc_wordpieces(doc)
        stored = numpy.asarray(doc._.trf_data.model_output.last_hidden_state)
        assert pieces.input_ids.shape == stored.shape[:2]
        out = backbone.encode(torch.as_tensor(pieces.input_ids), torch.as_tensor(pieces.attention_mask))
        mask = pieces.attention_mask.astype(bool)
        assert numpy.abs(out.numpy()[mask] - stored[mask]).max() <= 1e-5
    # the long doc was cut into several spans; the alignment covers every token
    assert pieces.input_ids.shape[0] > 1
    assert len(pieces.token_rows) == len(docs[1])
    assert all(len(rows) >= 1 for rows in pieces.token_rows)


def test_hidden_states_match_direct_encode(en_nlp):
    backbone = Backbone.from_nlp(en_nlp)
    seqs = [backbone.tokenize_words(w.split()).ids for w in ["the cat sat", "a dog ran over the park", "fox"]]
    outs = backbone.hidden_states(seqs, batch_size=2)
    for seq, out in zip(seqs, outs):
        full = torch.as_tensor([backbone.with_specials(seq)])
        ref = backbone.encode(full)[0]
        assert out.shape == ref.shape
        assert torch.allclose(out, ref.float(), atol=1e-5)
    # selected rows and several layers averaged
    layered = backbone.hidden_states(seqs, positions=[[0, 1], [2], [1]], layers=[1, 2])
    full = torch.as_tensor([backbone.with_specials(seqs[1])])
    ref = backbone.encode(full, layers=[1, 2])[0]
    assert torch.allclose(layered[1][0], ref[2], atol=1e-5)


def test_mode_restored_and_no_gradients_left(en_nlp):
    backbone = Backbone.from_nlp(en_nlp)
    module = backbone.module
    ids = torch.as_tensor([backbone.with_specials(backbone.tokenize_words(["the", "cat"]).ids)])
    for mode in (True, False):
        module.train(mode)
        backbone.encode(ids)
        assert module.training is mode
    module.train(True)
    embeds = backbone.input_embeddings(ids).requires_grad_(True)
    out = backbone.encode(inputs_embeds=embeds, grad=True)
    # not out.sum(): after the final LayerNorm (gamma = 1 at init) each row sums to a constant,
    # so its gradient is zero up to rounding noise, which some CPUs' kernels do not produce
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
    (grad,) = torch.autograd.grad((out * weights).sum(), embeds)
    assert module.training is True
    assert grad.abs().sum().item() > 0
    assert all(p.grad is None for p in module.parameters())
    assert all(p.requires_grad for p in module.parameters())
    # inference path leaves no graph
    assert not backbone.encode(ids).requires_grad


def test_out_of_memory_splits_batches(en_nlp, monkeypatch):
    backbone = Backbone.from_nlp(en_nlp)
    seqs = [backbone.tokenize_words(("the cat sat on the mat " * k).split()).ids for k in range(1, 9)]
    expected = backbone.hidden_states(seqs, batch_size=8)
    module = backbone.module
    real_forward = module.forward
    calls = []

    def forward(*args, **kwargs):
        batch = kwargs["input_ids"].shape[0]
        calls.append(batch)
        if batch > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (induced)")
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(module, "forward", forward)
    got = Backbone.from_nlp(en_nlp).hidden_states(seqs, batch_size=8)
    assert calls[0] == 8 and calls.count(8) == 1  # the first try failed, then halves
    assert sum(c for c in calls if c <= 2) == len(seqs)  # every input ran once, in small batches
    for a, b in zip(expected, got):
        assert torch.allclose(a, b, atol=1e-6)

    def always_oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (induced)")

    monkeypatch.setattr(module, "forward", always_oom)
    with pytest.raises(KxError, match="Out of memory on a single input"):
        Backbone.from_nlp(en_nlp).hidden_states(seqs[:2])


def test_other_errors_are_not_swallowed(en_nlp, monkeypatch):
    backbone = Backbone.from_nlp(en_nlp)

    def broken(*args, **kwargs):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(backbone.module, "forward", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        backbone.hidden_states([[5, 6, 7]])


def test_sequences_longer_than_the_window(en_nlp):
    backbone = Backbone.from_nlp(en_nlp)
    width = backbone.max_content_length  # 62 for the tiny model
    words = ("the quick brown fox jumps over the lazy dog " * 20).split()
    seq = backbone.tokenize_words(words).ids
    assert len(seq) > 2 * width
    (out,) = backbone.hidden_states([seq])
    assert out.shape == (len(seq) + 2, backbone.hidden_size)
    assert torch.isfinite(out).all()
    # positions near the start come from the first window: equal to encoding it alone
    first = backbone.encode(torch.as_tensor([backbone.with_specials(seq[:width])]))[0]
    assert torch.allclose(out[: width // 4], first[: width // 4].float(), atol=1e-5)
    # every window position is owned by a window in which it has context on both sides
    windows, owner = backbone._windows(len(seq))
    assert windows[0][0] == 0 and windows[-1][1] == len(seq)
    for k in range(len(seq)):
        s, e = windows[owner[k]]
        assert s <= k < e
        assert (k - s >= width // 4 or s == 0) and (e - 1 - k >= width // 4 - 1 or e == len(seq))
    # a long doc through the pipeline still aligns every token
    doc = en_nlp(" ".join(words))
    assert len(backbone.doc_wordpieces(doc).token_rows) == len(doc)


def test_empty_and_whitespace_inputs(en_nlp):
    backbone = Backbone.from_nlp(en_nlp)
    assert backbone.hidden_states([]) == []
    assert backbone.tokenize_words([]).ids == []
    (out,) = backbone.hidden_states([[]])  # an empty sequence is just its special tokens
    assert out.shape == (2, backbone.hidden_size)
    pieces = backbone.tokenize_words(["the", " ", "\n", "cat"])
    assert len(pieces.spans) == 4
    assert pieces.spans[1][0] == pieces.spans[1][1]  # whitespace words have no pieces
    for text in ("", "   ", "\n\t "):
        doc = en_nlp(text)
        assert len(backbone.doc_wordpieces(doc).token_rows) == len(doc)


def test_unknown_characters_map_to_unk(en_nlp):
    backbone = Backbone.from_nlp(en_nlp)
    pieces = backbone.tokenize_words(["the", "\U0001F600", "ß"])
    assert backbone.special_ids.unk in pieces.ids
    (out,) = backbone.hidden_states([pieces.ids])
    assert torch.isfinite(out).all()


def test_clear_errors(tiny_mlm_dir, tiny_nomask_dir):
    nlp = spacy.blank("en")
    with pytest.raises(MissingTransformerError, match="transformer"):
        Backbone.from_nlp(nlp)
    nlp.add_pipe("sentencizer", name="transformer")
    with pytest.raises(UnsupportedTransformerError):
        Backbone.from_nlp(nlp)
    nlp = spacy.blank("en")
    nlp.add_pipe("transformer", config=transformer_config(str(tiny_mlm_dir)))
    with pytest.raises(TransformerNotInitializedError, match="initialize"):
        Backbone.from_nlp(nlp)
    nomask = make_pipeline("en", tiny_nomask_dir)
    with pytest.raises(NoMaskTokenError, match="no mask token"):
        Backbone.from_nlp(nomask).require_mask()
    with pytest.raises(MissingTrfDataError):
        Backbone.from_nlp(nomask).doc_wordpieces(spacy.blank("en")("no transformer ran"))


def test_save_and_load_keeps_the_encoder(en_nlp, tmp_path):
    doc = en_nlp("the cat sat on the mat")
    en_nlp.to_disk(tmp_path / "p")
    loaded = spacy.load(tmp_path / "p")
    backbone = Backbone.from_nlp(loaded)
    again = loaded("the cat sat on the mat")
    a = numpy.asarray(doc._.trf_data.model_output.last_hidden_state)
    b = numpy.asarray(again._.trf_data.model_output.last_hidden_state)
    assert numpy.allclose(a, b, atol=1e-6)
    assert backbone.require_mask() == en_nlp.get_pipe("transformer").model.tokenizer.mask_token_id
