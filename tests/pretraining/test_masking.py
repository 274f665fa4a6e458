import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kx_spacy.pretraining.masking import MLMCollator, ShuffleBuffer, pack_sequences

CLS, SEP, PAD, MASK = 2, 3, 0, 4


@settings(max_examples=50, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 40), min_size=1, max_size=30),
    max_length=st.integers(3, 24),
)
def test_packing_keeps_every_token_in_order(lengths, max_length):
    texts, nxt = [], 10
    for n in lengths:
        texts.append(list(range(nxt, nxt + n)))
        nxt += n
    seqs = list(pack_sequences(texts, max_length=max_length, cls_id=CLS, sep_id=SEP))
    assert all(len(s) <= max_length and s[0] == CLS and s[-1] == SEP for s in seqs)
    flat = [t for s in seqs for t in s if t not in (CLS, SEP)]
    assert flat == [t for text in texts for t in text]


def test_masking_80_10_10_and_specials():
    coll = MLMCollator(vocab_size=100, mask_id=MASK, pad_id=PAD, special_ids=[0, 1, 2, 3, 4],
                       mlm_probability=0.3)
    seqs = [[CLS] + list(range(5, 5 + n)) + [SEP] for n in (90, 60, 1)]
    gen = torch.Generator().manual_seed(0)
    sel = masked = rand = kept = 0
    for _ in range(60):
        b = coll(seqs, gen)
        orig = coll.pad(seqs)["input_ids"]
        chosen = b["labels"] != -100
        assert torch.equal(b["labels"][chosen], orig[chosen])
        assert chosen[:, 0].sum() == 0 and (~chosen[orig == PAD]).all() and not chosen[orig == SEP].any()
        assert chosen[2].any()  # a one-token sequence still predicts something
        assert torch.equal(b["input_ids"][~chosen], orig[~chosen])
        sel += int(chosen.sum())
        masked += int((b["input_ids"][chosen] == MASK).sum())
        kept += int((b["input_ids"][chosen] == orig[chosen]).sum())
        rand += int(((b["input_ids"] != orig) & chosen & (b["input_ids"] != MASK)).sum())
        assert b["attention_mask"].sum() == sum(map(len, seqs))
    assert 0.25 < sel / (60 * 153) < 0.35
    assert abs(masked / sel - 0.8) < 0.03
    assert abs((rand + kept) / sel - 0.2) < 0.03
    assert rand > 0 and kept > 0


def test_shuffle_buffer_is_a_permutation():
    out = list(ShuffleBuffer(7, seed=1)(range(50)))
    assert sorted(out) == list(range(50)) and out != list(range(50))
    assert out == list(ShuffleBuffer(7, seed=1)(range(50)))
