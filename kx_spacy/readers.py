"""Readers for the evaluation data: Universal Dependencies CoNLL-U and SIGHAN bakeoff files.

* ``read_conllu(path)`` -> ``List[ConlluSentence]``: one record per sentence with its words,
  heads (0 = ROOT), relations, UPOS tags, ``SpaceAfter`` flags, ``# sent_id`` and
  ``# text``. Multiword-token ranges (``3-4``) and empty nodes (``8.1``) are skipped, as the
  UD evaluation does: heads always index the basic-tree words.
* ``kx_spacy.ConlluCorpus.v1`` (``registry.readers``): a spaCy corpus that yields one
  ``Example`` per sentence, the reference carrying gold heads, relations and POS, so
  ``nlp.evaluate`` and ``spacy train`` can use UD files directly.
* ``read_sighan(path)``: a SIGHAN bakeoff file (UTF-8, CRLF or LF, with or without a BOM),
  one entry per line. Gold / segmented files: the list of words of each line, words
  separated by any run of whitespace, full-width spaces (U+3000) included. Input files
  (``segmented=False``): the text of each line with every whitespace character removed, so
  that its characters are exactly those of the gold line. Empty lines are kept (as ``[]`` /
  ``""``) so line numbers stay aligned with the gold.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional, Union

from spacy.util import registry

from .errors import DataFormatError

PathLike = Union[str, Path]
PUNCT_UPOS = frozenset({"PUNCT"})


@dataclass
class ConlluSentence:
    """One sentence of a CoNLL-U file (basic tree only).

    words (List[str]): the FORM column of the syntactic words.
    heads (List[int]): per word, its head (0 = ROOT, else 1-based word index).
    deprels (List[str]): per word, the DEPREL column.
    upos (List[str]): per word, the UPOS column.
    spaces (List[bool]): per word, whether a space follows (from ``SpaceAfter=No``).
    sent_id / text (str or None): from the ``# sent_id`` / ``# text`` comments.
    """

    words: List[str]
    heads: List[int]
    deprels: List[str]
    upos: List[str]
    spaces: List[bool] = field(default_factory=list)
    sent_id: Optional[str] = None
    text: Optional[str] = None

    def __len__(self) -> int:
        return len(self.words)

    @property
    def root(self) -> int:
        """The (first) word whose head is ROOT, 1-based; 0 for an empty sentence."""
        for i, h in enumerate(self.heads, start=1):
            if h == 0:
                return i
        return 0

    def punct_mask(self, punct_upos: Iterable[str] = PUNCT_UPOS) -> List[bool]:
        """Per word, whether it counts as punctuation (UPOS in ``punct_upos``)."""
        tags = set(punct_upos)
        return [t in tags for t in self.upos]

    def n_non_punct(self, punct_upos: Iterable[str] = PUNCT_UPOS) -> int:
        """Number of words that are not punctuation."""
        return sum(1 for p in self.punct_mask(punct_upos) if not p)


def _open_text(path: PathLike) -> str:
    from .text import read_text_file

    return read_text_file(path)  # bad bytes: an error naming the file, line and column


def parse_conllu(text: str, *, source: str = "<string>") -> List[ConlluSentence]:
    """Parse CoNLL-U text into sentences (see ``read_conllu``).

    text (str): the file content.
    source (str): a name for error messages.
    RETURNS (List[ConlluSentence]): the sentences, in order.
    """
    sentences: List[ConlluSentence] = []
    block: List[str] = []
    comments: dict = {}
    start_line = 1

    def flush(line_no: int) -> None:
        nonlocal block, comments
        if block:
            sentences.append(_parse_block(block, comments, source, start_line))
        block, comments = [], {}

    for line_no, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            flush(line_no)
            start_line = line_no + 1
            continue
        if line.startswith("#"):
            if not block:
                key, sep, value = line[1:].partition("=")
                if sep:
                    comments.setdefault(key.strip(), value.strip())
            continue
        if not block:
            start_line = line_no
        block.append(line)
    flush(len(text))
    return sentences


def _parse_block(lines: List[str], comments: dict, source: str, start: int) -> ConlluSentence:
    words, heads, deprels, upos, spaces = [], [], [], [], []
    for offset, line in enumerate(lines):
        cols = line.split("\t")
        where = f"{source}, line {start + offset}"
        if len(cols) != 10:
            raise DataFormatError(f"{where}: expected 10 tab-separated columns, got {len(cols)}.")
        tid = cols[0]
        if "-" in tid or "." in tid:  # multiword-token range or empty node
            continue
        try:
            index = int(tid)
        except ValueError:
            raise DataFormatError(f"{where}: bad word id {tid!r}.") from None
        if index != len(words) + 1:
            raise DataFormatError(f"{where}: word id {index} out of order (expected {len(words) + 1}).")
        try:
            head = int(cols[6])
        except ValueError:
            raise DataFormatError(f"{where}: bad head {cols[6]!r} (basic tree heads are integers).") from None
        words.append(cols[1])
        upos.append(cols[3])
        heads.append(head)
        deprels.append(cols[7])
        misc = cols[9].split("|") if cols[9] != "_" else []
        spaces.append("SpaceAfter=No" not in misc)
    n = len(words)
    for i, h in enumerate(heads, start=1):
        if not 0 <= h <= n or h == i:
            raise DataFormatError(f"{source}, sentence at line {start}: word {i} has head {h} (n = {n}).")
    return ConlluSentence(
        words, heads, deprels, upos, spaces, sent_id=comments.get("sent_id"), text=comments.get("text")
    )


def read_conllu(
    path: PathLike,
    *,
    limit: int = 0,
    max_words: int = 0,
    min_words: int = 1,
    count_punct: bool = False,
    punct_upos: Iterable[str] = PUNCT_UPOS,
) -> List[ConlluSentence]:
    """Read the sentences of a CoNLL-U file, optionally filtered by length.

    path (str / Path): the file.
    limit (int): keep at most this many sentences (after filtering); 0 = all.
    max_words (int): keep sentences of at most this many words; 0 = no limit. Counts
        non-punctuation words (the WSJ10 convention) unless ``count_punct``.
    min_words (int): drop sentences with fewer words (all words counted).
    count_punct (bool): count punctuation in ``max_words`` too.
    punct_upos (Iterable[str]): UPOS tags that count as punctuation.
    RETURNS (List[ConlluSentence]): the sentences.
    """
    if limit < 0 or max_words < 0:
        raise DataFormatError("limit and max_words must be >= 0 (0 = no limit).")
    sentences = parse_conllu(_open_text(path), source=str(path))
    tags = set(punct_upos)
    out = []
    for sent in sentences:
        if len(sent) < min_words:
            continue
        if max_words:
            size = len(sent) if count_punct else sent.n_non_punct(tags)
            if size > max_words:
                continue
        out.append(sent)
        if limit and len(out) >= limit:
            break
    return out


def sentence_to_example(nlp, sent: ConlluSentence):
    """A spaCy ``Example`` for one sentence: the predicted Doc has the gold words (no
    annotation), the reference carries heads, relations, POS and one sentence.

    nlp (Language): supplies the vocab.
    sent (ConlluSentence): the sentence.
    RETURNS (Example): the example.
    """
    from spacy.tokens import Doc
    from spacy.training import Example

    spaces = list(sent.spaces or [True] * len(sent))
    if spaces:
        spaces[-1] = False
    heads = [h - 1 if h > 0 else i for i, h in enumerate(sent.heads)]
    deps = [d if h > 0 else "ROOT" for d, h in zip(sent.deprels, sent.heads)]
    pos = [p if p != "_" else "X" for p in sent.upos]
    reference = Doc(
        nlp.vocab,
        words=sent.words,
        spaces=spaces,
        heads=heads,
        deps=deps,
        pos=pos,
        sent_starts=[True] + [False] * (len(sent) - 1),
    )
    predicted = Doc(nlp.vocab, words=sent.words, spaces=spaces)
    return Example(predicted, reference)


@registry.readers("kx_spacy.ConlluCorpus.v1")
def create_conllu_corpus(
    path: str,
    limit: int = 0,
    max_words: int = 0,
    count_punct: bool = False,
) -> Callable[..., Iterator]:
    """A corpus reader for UD CoNLL-U files: one ``Example`` per sentence.

    path (str): the .conllu file.
    limit (int): at most this many sentences; 0 = all.
    max_words (int): only sentences of at most this many (non-punctuation) words; 0 = all.
    count_punct (bool): count punctuation in ``max_words``.
    RETURNS (Callable[[Language], Iterator[Example]]): the corpus.
    """

    def corpus(nlp) -> Iterator:
        for sent in read_conllu(path, limit=limit, max_words=max_words, count_punct=count_punct):
            yield sentence_to_example(nlp, sent)

    return corpus


def read_sighan(path: PathLike, *, segmented: bool = True) -> Union[List[List[str]], List[str]]:
    """Read a SIGHAN bakeoff file, one entry per line.

    path (str / Path): the file (UTF-8; CRLF or LF; an optional BOM is dropped).
    segmented (bool): True for a gold / predicted file (words separated by runs of
        whitespace, full-width spaces included): each line becomes its list of words.
        False for an input file: each line becomes its text with all whitespace removed.
    RETURNS (List[List[str]] or List[str]): per line, its words or its text. A trailing
        newline at the end of the file does not add an empty line.
    """
    text = _open_text(path)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if segmented:
        return [line.split() for line in lines]
    return ["".join(line.split()) for line in lines]


def read_word_list(path: PathLike) -> set:
    """A training word list (one word per line, e.g. ``pku_training_words.utf8``) as a set.

    path (str / Path): the file.
    RETURNS (set): the words (whitespace-stripped, empty lines skipped).
    """
    return {w for w in (line.strip() for line in _open_text(path).split("\n")) if w}
