"""Cost of ``kx_parser`` on long docs with no sentence boundaries (issue 16).

A doc without boundaries is one sentence; without a cap its impacts take ~n²/2 masked inputs
of length n and Eisner is cubic, so a 5k-token doc did not finish. ``long_doc_benchmark``
times a transformer + kx_parser pipeline (no sentencizer, as the README builds it) on docs of
the given token counts, so the cost per token can be read off: with ``max_sentence_words``
it stays flat as the doc grows.
"""
from __future__ import annotations

import resource
import sys
import time
import warnings
from typing import Dict, Sequence


def _max_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024.0 * 1024.0) if sys.platform == "darwin" else rss / 1024.0


def long_doc_benchmark(nlp, token_counts: Sequence[int], *, unit: str = "the cat sat .",
                       parser: str = "kx_parser") -> Dict:
    """Time ``nlp`` on docs of ``token_counts`` tokens made of ``unit`` repeated, no boundaries.

    nlp (Language): a pipeline with a transformer and ``parser`` (and no sentencizer).
    token_counts (Sequence[int]): doc lengths in tokens (each doc is cut to exactly that many).
    unit (str): the text repeated.
    parser (str): the kx_parser pipe's name (its ``max_sentence_words`` is reported).
    RETURNS (Dict): ``rows`` of tokens, seconds, tokens/s, ms/token, chunks (sentences parsed),
        the process's peak resident memory after the doc (MB), and the setting.
    """
    words = unit.split()
    rows = []
    nlp("warm up .")
    for count in token_counts:
        text = " ".join(words[i % len(words)] for i in range(int(count)))
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the pipe's "sentence was cut" warning
            doc = nlp(text)
        seconds = time.perf_counter() - start
        rows.append({"tokens": len(doc), "seconds": seconds, "tokens_per_s": len(doc) / seconds,
                     "ms_per_token": 1000.0 * seconds / len(doc),
                     "chunks": len(doc._.kx_parse["sentences"]), "max_rss_mb": _max_rss_mb()})
    return {"rows": rows, "unit": unit, "max_sentence_words": nlp.get_pipe(parser).max_sentence_words}


def format_long_doc_table(result: Dict) -> str:
    """The rows of ``long_doc_benchmark`` as a plain-text table."""
    lines = [f"kx_parser on one doc with no sentence boundaries (max_sentence_words = {result['max_sentence_words']})",
             f"{'tokens':>7} {'seconds':>8} {'tokens/s':>9} {'ms/token':>9} {'chunks':>6} {'peak RSS MB':>11}"]
    for r in result["rows"]:
        lines.append(f"{r['tokens']:>7} {r['seconds']:>8.2f} {r['tokens_per_s']:>9.1f} {r['ms_per_token']:>9.2f} "
                     f"{r['chunks']:>6} {r['max_rss_mb']:>11.0f}")
    return "\n".join(lines)
