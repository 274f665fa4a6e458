"""The ``self-train-segmenter`` workflow as a library function: read the raw lines, score them
with the teacher(s), self-train the student, segment, and (given gold) score the result.

The command line (:mod:`kx_spacy.cli.segment`) only parses arguments and prints.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple


def raw_lines(paths: Optional[Sequence[Path]]) -> List[str]:
    """The lines of plain-text files, whitespace removed (bad bytes: an error naming the line)."""
    from ..text import read_text_file

    out: List[str] = []
    for p in paths or []:
        out += ["".join(x.split()) for x in read_text_file(p).splitlines()]
    return out


def run_self_training(
    input_path: Path, *, gold_path: Optional[Path] = None, words_path: Optional[Path] = None,
    encoder: Optional[str] = None, teach_limit: int = 300, limit: int = 0, high: float = 0.75,
    low: float = 0.45, rounds: int = 1, threshold: float = 0.5, join_rate: Optional[float] = None,
    teacher: str = "mlm", extra: Sequence[Path] = (), teach_extra: Sequence[Path] = (),
    teacher_weights: Optional[Sequence[float]] = None, max_len: int = 4, min_count: int = 1,
    impacts_cache: Optional[Path] = None, threads: int = 1, output: Optional[Path] = None,
    segmented: Optional[Path] = None, save_model: Optional[Path] = None, progress: bool = True,
    features: str = "base", relabel: str = "segment", confident: float = 0.9, decoder: str = "threshold",
    decoder_weight: float = 1.0, decoder_bias: float = 0.0, decoder_max_len: int = 6,
    round_labels: str = "confident",
) -> Tuple[Dict, List[List[str]]]:
    """Self-train a segmenter on the raw lines of ``input_path`` (no gold data used).

    input_path (Path): raw input lines (bakeoff style); whitespace is removed.
    gold_path (Optional[Path]): bakeoff gold file, only to SCORE the result.
    words_path (Optional[Path]): training word list, only for OOV recall.
    encoder (Optional[str]): teacher MLM (HF name or path; default the shipped character MLM).
    teach_limit (int): lines the teacher scores (0 = all).
    limit (int): lines to segment and score (0 = all).
    teacher (str): ``mlm``, ``nvbe``, ``pmi`` or several joined by ``+``.
    extra (Sequence[Path]): more raw text for the corpus statistics.
    teach_extra (Sequence[Path]): more raw lines the teacher scores and the student learns from.
    teacher_weights (Optional[Sequence[float]]): weights of the combined teachers.
    output (Optional[Path]): where the results JSON goes.
    segmented (Optional[Path]): where the segmented lines go (space separated).
    save_model (Optional[Path]): where the student folder goes (``kx_self_trained_segmenter``
        loads it; see :class:`kx_spacy.segmentation.student.SegmenterStudent`).
    Other settings (features, relabel, confident, round_labels, decoder*): see
    :func:`kx_spacy.segmentation.self_training.train_student` and
    :func:`kx_spacy.segmentation.teachers.teacher_scores`.
    RETURNS (Tuple[Dict, List[List[str]]]): the results and the words of each segmented line.
    """
    from ..readers import read_sighan, read_word_list
    from .self_training import segment_lines, train_student
    from .teachers import teacher_scores, teacher_words

    start = time.perf_counter()
    enc = None
    if "mlm" in teacher:
        import torch

        from ..encoders import chinese_encoder_path

        if threads > 0:
            torch.set_num_threads(threads)
        enc = chinese_encoder_path(encoder)
    lines = read_sighan(input_path, segmented=False)
    seg_lines = lines[:limit] if limit else lines
    teach = lines[:teach_limit] if teach_limit else lines
    extra_texts = raw_lines(extra)
    more = [t for t in raw_lines(teach_extra) if t]
    n_input_teach = len(teach)
    weights = list(teacher_weights) if teacher_weights is not None else None
    teach = list(teach) + more
    taught = teacher_scores(teacher, teach, list(lines) + more + extra_texts, encoder=enc, max_len=max_len,
                            min_count=min_count, cache=impacts_cache, weights=weights, progress=progress)
    teacher_s = time.perf_counter() - start
    student, stats = train_student(teach, taught["scores"], seg_lines, high=high, low=low, rounds=rounds,
                                   threshold=threshold, join_rate=join_rate, extra_texts=extra_texts,
                                   features=features, relabel=relabel, confident=confident, decoder=decoder,
                                   decoder_weight=decoder_weight, decoder_bias=decoder_bias,
                                   decoder_max_len=decoder_max_len, round_labels=round_labels)
    words, stats["predicted_join_rate"] = segment_lines(student, seg_lines)
    result = {"input": str(input_path), "encoder": enc, "teacher": teacher, "teacher_weights": weights,
              "teach_lines": n_input_teach, "extra": [str(p) for p in extra or []],
              "extra_characters": sum(map(len, extra_texts)),
              "teach_extra": [str(p) for p in teach_extra or []], "teach_extra_lines": len(more),
              "lines": len(seg_lines), "high": high, "low": low, "rounds": rounds, "threshold": threshold,
              "join_rate": join_rate, "max_len": max_len, "min_count": min_count, "features": features,
              "relabel": relabel, "confident": confident, "round_labels": round_labels, "decoder": student.decoder, "stats": stats,
              "teacher_seconds": round(teacher_s, 1), "seconds": round(time.perf_counter() - start, 1)}
    if gold_path:
        from ..scoring import segmentation_scores

        gold = read_sighan(gold_path)
        train_words = read_word_list(words_path) if words_path else None
        result.update(segmentation_scores(words, gold[: len(seg_lines)], train_words))
        n = min(n_input_teach, len(seg_lines))
        alone = teacher_words(teach[:n], taught["scores"][:n], names=taught["names"])
        result["teacher_lines_scored"] = n
        result["teacher_f_on_teach_lines"] = segmentation_scores(alone, gold[:n])["f"]
        result["student_f_on_teach_lines"] = segmentation_scores(words[:n], gold[:n])["f"]
    if save_model is not None:
        student.meta.update({"teacher": teacher, "teacher_weights": weights, "input": str(input_path),
                             "encoder": enc, "max_len": max_len, "min_count": min_count,
                             "extra": result["extra"], "teach_extra": result["teach_extra"]})
        student.to_disk(save_model)
        result["save_model"] = str(save_model)
    if output is not None:
        output = Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
    if segmented is not None:
        Path(segmented).write_text("".join("  ".join(w) + "\n" for w in words), encoding="utf-8")
    return result, words
