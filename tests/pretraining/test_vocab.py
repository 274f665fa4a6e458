import pytest

from kx_spacy.pretraining.errors import PretrainConfigError, VocabSizeError
from kx_spacy.pretraining.vocab import (
    SPECIAL_TOKENS, build_char_vocab, build_vocab, build_wordpiece_vocab, save_tokenizer,
)


def test_char_vocab_min_count_and_order():
    texts = ["好好好坏", "好坏了", "A1 a"]
    vocab = build_char_vocab(texts, min_count=2)
    assert vocab[: len(SPECIAL_TOKENS)] == SPECIAL_TOKENS
    body = vocab[len(SPECIAL_TOKENS):]
    assert body[0] == "好" and "坏" in body
    assert "了" not in body and "1" not in body  # seen once
    assert "a" in body and "##a" in body  # "A" and "a" merge when lower-casing; Latin gets a twin
    assert "##好" not in body  # CJK characters never need a continuation twin
    assert build_char_vocab(texts, min_count=1, lowercase=False).count("A") == 1


def test_char_vocab_too_large_or_empty():
    with pytest.raises(VocabSizeError, match="larger than the data supports"):
        build_char_vocab(["好好坏坏"], min_count=2, max_size=100)
    assert len(build_char_vocab(["好好坏坏"], min_count=2, max_size=6)) == 6
    with pytest.raises(VocabSizeError):
        build_char_vocab(["一二三"], min_count=5)


def test_saved_char_tokenizer_splits_characters(tmp_path):
    vocab = build_char_vocab(["我爱北京 abc", "我爱北京 abc"], min_count=1)
    tok = save_tokenizer(vocab, tmp_path / "tok")
    assert (tmp_path / "tok" / "tokenizer.json").exists()
    pieces = tok.tokenize("我爱北京abc")
    assert pieces == ["我", "爱", "北", "京", "a", "##b", "##c"]
    assert tok.mask_token == "[MASK]" and tok.unk_token_id == 1
    assert tok.tokenize("猫") == ["[UNK]"]


def test_wordpiece_vocab_and_errors(tmp_path):
    texts = ["The cat sat on the mat.", "The dog ran in the park!"] * 20
    vocab = build_wordpiece_vocab(texts, vocab_size=40, min_count=1)
    assert len(vocab) == 40 and vocab[: len(SPECIAL_TOKENS)] == SPECIAL_TOKENS
    tok = save_tokenizer(vocab, tmp_path / "wp")
    assert tok.tokenize("THE CAT") == ["the", "cat"]  # lower-cased
    with pytest.raises(VocabSizeError):
        build_wordpiece_vocab(texts, vocab_size=50000, min_count=1)
    with pytest.raises(PretrainConfigError):
        build_vocab("wordpiece", texts, vocab_size=None, min_count=1, lowercase=True)
    with pytest.raises(PretrainConfigError):
        build_vocab("bytes", texts, vocab_size=None, min_count=1, lowercase=True)
