"""``kx_spacy.Seq2SeqCorpus.v1``: ``source<TAB>target`` files as spaCy Examples.

Each non-empty line gives one ``Example``: the predicted Doc is ``nlp.make_doc(source)``, the
reference Doc has the same words and carries the target text in
``reference.user_data["kx_target"]`` (user_data survives ``Doc.to_bytes`` and ``DocBin``).
A line without a tab, or with an empty side, is a ``DataFormatError`` naming the line.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple, Union

from spacy.util import registry

from ..errors import DataFormatError

TARGET_KEY = "kx_target"


def read_pairs(path: Union[str, Path], *, limit: int = 0) -> List[Tuple[str, str]]:
    """The (source, target) pairs of a ``source<TAB>target`` file (UTF-8, BOM allowed).

    path (str / Path): the file.
    limit (int): keep the first ``limit`` pairs (0 = all).
    RETURNS (List[Tuple[str, str]]): the pairs, in file order.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"No such file: {path}. Check the data_dir setting.")
    pairs = []
    with path.open(encoding="utf-8-sig") as fh:
        for n, line in enumerate(fh, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            source, sep, target = line.partition("\t")
            if not sep or not source.strip() or not target.strip():
                raise DataFormatError(f"{path}, line {n}: expected 'source<TAB>target' with both sides non-empty.")
            pairs.append((source.strip(), target.strip()))
            if limit and len(pairs) >= limit:
                break
    return pairs


def pair_to_example(nlp, source: str, target: Optional[str]):
    """An Example whose reference carries ``target`` in ``user_data['kx_target']``."""
    from spacy.tokens import Doc
    from spacy.training import Example

    predicted = nlp.make_doc(source)
    reference = Doc(nlp.vocab, words=[t.text for t in predicted], spaces=[bool(t.whitespace_) for t in predicted])
    if target is not None:
        reference.user_data[TARGET_KEY] = target
    return Example(predicted, reference)


def example_target(example) -> Optional[str]:
    """The target text an Example's reference carries, or None."""
    return example.reference.user_data.get(TARGET_KEY)


@registry.readers("kx_spacy.Seq2SeqCorpus.v1")
def create_seq2seq_corpus(path: str, limit: int = 0, shuffle: bool = False, seed: int = 0) -> Callable[..., Iterator]:
    """A corpus reader for ``source<TAB>target`` files.

    path (str): the file.
    limit (int): the first ``limit`` pairs (0 = all).
    shuffle (bool): shuffle the pairs each epoch (training).
    seed (int): seed of the shuffle.
    RETURNS (Callable[[Language], Iterator[Example]]): the corpus.
    """
    state = {"epoch": 0}

    def corpus(nlp) -> Iterator:
        pairs = read_pairs(path, limit=limit)
        if shuffle:
            random.Random(seed + state["epoch"]).shuffle(pairs)
            state["epoch"] += 1
        for source, target in pairs:
            yield pair_to_example(nlp, source, target)

    return corpus
