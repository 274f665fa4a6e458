"""Turn join decisions between neighbouring character tokens into merged words (both segmenters)."""
from __future__ import annotations

from typing import List, Sequence, Tuple

from spacy.tokens import Doc


def joined_spans(joins: Sequence[bool], start: int, end: int) -> List[Tuple[int, int]]:
    """The words of two or more tokens in ``[start, end)``.

    joins (Sequence[bool]): ``joins[k - start]`` says whether token k is joined to token k + 1.
    RETURNS (List[Tuple[int, int]]): (first token, end token) of each multi-token word.
    """
    spans, first = [], start
    for k in range(start, end):
        if k == end - 1 or not joins[k - start]:
            if k > first:
                spans.append((first, k + 1))
            first = k + 1
    return spans


def merge_spans(doc: Doc, spans: Sequence[Tuple[int, int]]) -> Doc:
    """Merge each (start, end) token span of ``doc`` into one token, in place."""
    if spans:
        with doc.retokenize() as retokenizer:
            for s, e in spans:
                retokenizer.merge(doc[s:e])
    return doc
