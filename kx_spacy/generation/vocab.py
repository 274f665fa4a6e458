"""The generator's own target vocabulary and the target tokenizers.

``TargetVocab`` maps target tokens to ids with four special ids first: PAD = 0, BOS = 1,
EOS = 2, UNK = 3. It is built from the training targets in ``initialize`` and saved with
the pipe (a plain list of strings), so a loaded pipe decodes to the same text.

UNK stands for every target token outside the vocabulary. It is an *input* token (teacher
forcing feeds it, so the positions after it stay right) but never an output: it is one of
``never_ids`` (with PAD and BOS), to which every output layer gives probability 0, so no
decoding strategy can produce it, and teacher-forcing positions whose target is UNK are left
out of the loss and the perplexity (``loss_ignore_ids``; the perplexity report counts them
separately). With the ST / NMST layers p(eos) comes from the EOS sigmoid alone and the never
ids are dropped from the softmax over the *other* tokens, so masking UNK leaves p(eos), and
the termination bound, unchanged.

Target tokenizers (``target_tokenizer`` setting of ``kx_generator``):

* ``"char"``: every non-whitespace character is a token; decoding concatenates them
  (Chinese: couplets, titles).
* ``"whitespace"``: tokens split on whitespace, decoding joins them with one space.
* ``"encoder"``: the word pieces of the pipeline's transformer tokenizer (its ``tokenize``);
  decoding through ``convert_tokens_to_string``. Only the pieces seen in the training
  targets enter the vocabulary.
"""
from __future__ import annotations

from collections import Counter
from typing import Callable, Dict, Iterable, List, Optional, Sequence

from ..errors import GeneratorConfigError, GeneratorVocabError

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
TOKENIZERS = ("char", "whitespace", "encoder")


class TargetVocab:
    """Target tokens <-> ids, specials first.

    tokens (Sequence[str]): the vocabulary; must start with PAD, BOS, EOS, UNK.
    """

    def __init__(self, tokens: Sequence[str]):
        tokens = list(tokens)
        if tokens[: len(SPECIALS)] != list(SPECIALS):
            missing = [s for s in SPECIALS if s not in tokens]
            what = f"lacks {missing}" if missing else f"does not start with {list(SPECIALS)}"
            raise GeneratorVocabError(
                f"The target vocabulary {what}: its first ids must be PAD, BOS, EOS, UNK "
                f"({list(SPECIALS)}); without EOS the generator could never stop."
            )
        if len(set(tokens)) != len(tokens):
            raise GeneratorVocabError("The target vocabulary has duplicate tokens.")
        self.tokens = tokens
        self.index: Dict[str, int] = {t: i for i, t in enumerate(tokens)}

    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3
    never_ids = (0, 1, 3)  # PAD, BOS, UNK: never generated (probability 0 in every output layer)
    loss_ignore_ids = (0, 3)  # PAD, UNK: target positions left out of the loss / perplexity

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def build(cls, sequences: Iterable[List[str]], *, max_size: int = 0, min_freq: int = 1) -> "TargetVocab":
        """A vocabulary of the most frequent tokens of ``sequences``.

        max_size (int): at most this many tokens, specials included (0 = no limit).
        min_freq (int): drop tokens seen fewer times.
        """
        counts = Counter(tok for seq in sequences for tok in seq)
        if not counts:
            raise GeneratorVocabError(
                "No target tokens to build the vocabulary from: the training examples carry "
                "no targets (read them with kx_spacy.Seq2SeqCorpus.v1)."
            )
        ranked = sorted((t for t, c in counts.items() if c >= min_freq and t not in SPECIALS),
                        key=lambda t: (-counts[t], t))
        if max_size:
            ranked = ranked[: max(0, max_size - len(SPECIALS))]
        if not ranked:
            raise GeneratorVocabError(
                f"The target vocabulary would hold no ordinary token (max_size={max_size}, "
                f"min_freq={min_freq}): raise max_vocab above {len(SPECIALS)} or lower min_freq.")
        return cls(list(SPECIALS) + ranked)

    def encode(self, tokens: Sequence[str]) -> List[int]:
        return [self.index.get(t, self.unk_id) for t in tokens]

    def decode(self, ids: Iterable[int]) -> List[str]:
        """Tokens of ``ids``, specials other than UNK dropped (a trained pipe never generates
        UNK; a forced prefix may hold one)."""
        return [self.tokens[i] for i in ids if i >= len(SPECIALS) or i == self.unk_id]


def make_target_tokenizer(kind: str, hf_tokenizer=None):
    """(tokenize: str -> List[str], detokenize: List[str] -> str) for ``kind``."""
    if kind == "char":
        return (lambda text: [c for c in text if not c.isspace()]), (lambda toks: "".join(toks))
    if kind == "whitespace":
        return (lambda text: text.split()), (lambda toks: " ".join(toks))
    if kind == "encoder":
        if hf_tokenizer is None:
            raise GeneratorConfigError("target_tokenizer 'encoder' needs the transformer pipe's tokenizer.")
        return (lambda text: list(hf_tokenizer.tokenize(text))), (
            lambda toks: hf_tokenizer.convert_tokens_to_string(list(toks)).strip() if toks else "")
    raise GeneratorConfigError(f"target_tokenizer must be one of {TOKENIZERS}, got {kind!r}.")
