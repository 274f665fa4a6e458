"""Vocabularies built from the training text, saved as a ``BertTokenizerFast``.

- ``chars``: one token per character seen at least ``min_count`` times (Chinese; every CJK
  character is its own word for BERT's basic tokenizer). Non-CJK characters get a ``##``
  continuation twin so that Latin words and numbers split into known characters, not [UNK].
- ``wordpiece``: sub-words trained with the ``tokenizers`` library (WordPiece, lower-cased).
"""
from __future__ import annotations

import unicodedata
from collections import Counter
from pathlib import Path
from typing import Iterable, List, Optional

from .errors import PretrainConfigError, VocabSizeError

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB_KINDS = ("chars", "wordpiece")


def _is_cjk(ch: str) -> bool:
    cp = ord(ch)
    return (
        0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F
    )


def _normalise_char(ch: str, lowercase: bool) -> str:
    if lowercase:
        ch = ch.lower()
        ch = "".join(c for c in unicodedata.normalize("NFD", ch) if unicodedata.category(c) != "Mn")
    return ch


def build_char_vocab(
    texts: Iterable[str], *, min_count: int = 2, max_size: Optional[int] = None, lowercase: bool = True
) -> List[str]:
    """Character vocabulary: specials, then characters by frequency (≥ ``min_count``).

    texts (Iterable[str]): the training texts (streamed once).
    min_count (int): minimum number of occurrences of a character.
    max_size (Optional[int]): the most tokens in total (specials and ## twins included);
        larger than the data supports raises VocabSizeError.
    lowercase (bool): lower-case and strip accents like the saved tokenizer does.
    RETURNS (List[str]): the vocabulary in id order.
    """
    counts: Counter = Counter()
    for text in texts:
        counts.update(text)
    merged: Counter = Counter()
    for ch, n in counts.items():
        if ch.isspace() or unicodedata.category(ch)[0] == "C":
            continue
        norm = _normalise_char(ch, lowercase)
        if len(norm) == 1:
            merged[norm] += n
    chars = [ch for ch, n in sorted(merged.items(), key=lambda kv: (-kv[1], kv[0])) if n >= min_count]
    seen, tokens = set(SPECIAL_TOKENS), list(SPECIAL_TOKENS)
    for ch in chars:
        if ch not in seen:
            seen.add(ch)
            tokens.append(ch)
    twins = [f"##{ch}" for ch in tokens[len(SPECIAL_TOKENS):] if not _is_cjk(ch) and ch.isalnum()]
    tokens += twins
    if max_size is not None:
        if max_size > len(tokens):
            raise VocabSizeError(
                f"vocab_size {max_size} is larger than the data supports: only {len(tokens)} tokens "
                f"(characters seen ≥ {min_count} times, specials and ## twins included). "
                f"Lower vocab_size or min_count, or add text."
            )
        tokens = tokens[:max_size]
    if len(tokens) <= len(SPECIAL_TOKENS):
        raise VocabSizeError(f"No character occurs ≥ {min_count} times: the corpus is too small")
    return tokens


def build_wordpiece_vocab(
    texts: Iterable[str], *, vocab_size: int, min_count: int = 2, lowercase: bool = True
) -> List[str]:
    """Train a WordPiece vocabulary with the ``tokenizers`` library.

    texts (Iterable[str]): the training texts (streamed once).
    vocab_size (int): the size to train to; if the data cannot fill it, VocabSizeError.
    min_count (int): minimum frequency of a merged pair / word.
    lowercase (bool): lower-case and strip accents (BERT uncased).
    RETURNS (List[str]): the vocabulary in id order.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=lowercase, lowercase=lowercase
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_count, special_tokens=list(SPECIAL_TOKENS),
        show_progress=False, continuing_subword_prefix="##",
    )
    tok.train_from_iterator(texts, trainer=trainer)
    vocab = tok.get_vocab()
    if len(vocab) < vocab_size:
        raise VocabSizeError(
            f"vocab_size {vocab_size} is larger than the data supports: WordPiece training "
            f"stopped at {len(vocab)} tokens (min_count {min_count}). Lower vocab_size or add text."
        )
    return [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]


def save_tokenizer(vocab: List[str], output_dir: Path, *, lowercase: bool = True, model_max_length: int = 512):
    """Write ``vocab.txt`` and a ``BertTokenizerFast`` (tokenizer.json etc.) to ``output_dir``.

    RETURNS (BertTokenizerFast): the tokenizer, loaded back from the written files.
    """
    from transformers import BertTokenizerFast

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    vocab_file = output_dir / "vocab.txt"
    vocab_file.write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
    tok = BertTokenizerFast(
        vocab_file=str(vocab_file), do_lower_case=lowercase, tokenize_chinese_chars=True,
        strip_accents=None if lowercase else False, model_max_length=model_max_length,
    )
    tok.save_pretrained(str(output_dir))
    return BertTokenizerFast.from_pretrained(str(output_dir))


def build_vocab(kind: str, texts: Iterable[str], *, vocab_size: Optional[int], min_count: int, lowercase: bool) -> List[str]:
    """Dispatch on ``kind`` ("chars" or "wordpiece")."""
    if kind == "chars":
        return build_char_vocab(texts, min_count=min_count, max_size=vocab_size, lowercase=lowercase)
    if kind == "wordpiece":
        if not vocab_size:
            raise PretrainConfigError("A wordpiece vocabulary needs vocab_size")
        return build_wordpiece_vocab(texts, vocab_size=vocab_size, min_count=min_count, lowercase=lowercase)
    raise PretrainConfigError(f"Unknown vocabulary kind {kind!r}; use one of {VOCAB_KINDS}")
