"""`kx_spacy self-train-segmenter`: a word segmenter self-trained with no gold data."""
from pathlib import Path
from typing import List, Optional

import typer

from . import app
from ._threads import DEFAULT_THREADS, THREADS_HELP


@app.command("self-train-segmenter")
def self_train_segmenter_cli(
    input_path: Path = typer.Argument(..., help="Raw input lines (e.g. icwb2/testing/pku_test.utf8); whitespace is removed."),
    gold_path: Optional[Path] = typer.Option(None, "--gold", help="Bakeoff gold file, only to SCORE the result."),
    words_path: Optional[Path] = typer.Option(None, "--words", help="Training word list, only for OOV recall."),
    encoder: Optional[str] = typer.Option(None, help="Teacher MLM: HF name or path (default: the shipped character MLM)."),
    teach_limit: int = typer.Option(300, help="Lines the teacher scores (0 = all); the perturbed-masking teacher is slow."),
    limit: int = typer.Option(0, help="Lines to segment and score (0 = all)."),
    high: float = typer.Option(0.75, help="Pseudo-label 'join' at or above this quantile of teacher scores."),
    low: float = typer.Option(0.45, help="Pseudo-label 'split' below this quantile."),
    rounds: int = typer.Option(1, help="Self-training rounds (≥ 2: relabel with the student's confident pairs)."),
    threshold: float = typer.Option(0.5, help="Join when the student's probability reaches this."),
    join_rate: Optional[float] = typer.Option(None, help="Instead of --threshold: join this fraction of the open pairs (a word-length prior, e.g. 0.4)."),
    teacher: str = typer.Option("mlm", help="Teacher scores: 'mlm' (perturbed masking with --encoder), 'nvbe' (branching entropy of the raw text: no model), 'pmi' (bigram PMI, a baseline), or several joined by '+' (mean rank), e.g. 'nvbe+mlm'."),
    extra: Optional[List[Path]] = typer.Option(None, "--extra", help="More raw text (plain lines) for the corpus statistics (PMI, branching entropy)."),
    teach_extra: Optional[List[Path]] = typer.Option(None, "--teach-extra", help="More raw lines the teacher scores and the student learns from (not segmented or scored); also counted in the statistics, so do not pass them as --extra too."),
    teacher_weights: Optional[str] = typer.Option(None, help="Weights of the combined teachers, comma separated in the order of --teacher (e.g. '2,1')."),
    max_len: int = typer.Option(4, help="nvbe teacher: longest word."),
    min_count: int = typer.Option(1, help="nvbe teacher: strings of 2+ characters seen fewer times in the corpus are not words."),
    impacts_cache: Optional[Path] = typer.Option(None, help="An .npz file to keep / reuse the teacher's scores."),
    output: Path = typer.Option(Path("metrics/self_train_segmenter.json"), "--output", "-o", help="Results JSON."),
    segmented: Optional[Path] = typer.Option(None, help="Also write the segmented lines here (space separated)."),
    save_model: Optional[Path] = typer.Option(None, "--save-model", help="Also write the student to this folder, for the kx_self_trained_segmenter pipe (it segments any text)."),
    features: str = typer.Option("base", help="Student features: 'base' (character n-grams, bigram PMI / frequency) or 'be' (also each side's character branching entropy)."),
    relabel: str = typer.Option("segment", help="Rounds ≥ 2 relabel the segmented lines ('segment') or the teacher's lines too ('all')."),
    confident: float = typer.Option(0.9, help="Rounds ≥ 2: the student's probability (or 1 − it) that makes a label."),
    round_labels: str = typer.Option("confident", help="Rounds ≥ 2 learn the student's confident pairs ('confident') or its --decoder output on every pair ('decoded')."),
    decoder: str = typer.Option("threshold", help="'threshold' (each pair on its own) or 'semi_markov' (best segmentation of the line under a word-length prior from the student's own output)."),
    decoder_weight: float = typer.Option(1.0, help="semi_markov: weight of the log length prior."),
    decoder_bias: float = typer.Option(0.0, help="semi_markov: score added per word (> 0: more, shorter words)."),
    decoder_max_len: int = typer.Option(6, help="semi_markov: longest word of several atoms (a rule-joined run counts as one atom)."),
    threads: int = typer.Option(DEFAULT_THREADS, help=THREADS_HELP),
):
    """Teacher pair scores → confident pseudo-labels → boundary classifier (no gold data used)."""
    from ..errors import KxError
    from ..segmentation.workflow import run_self_training

    try:
        weights = [float(x) for x in teacher_weights.split(",")] if teacher_weights else None
    except ValueError:
        typer.echo(f"✘ --teacher-weights {teacher_weights!r}: comma-separated numbers, e.g. '2,1'", err=True)
        raise typer.Exit(1)
    try:
        result, _ = run_self_training(
            input_path, gold_path=gold_path, words_path=words_path, encoder=encoder, teach_limit=teach_limit,
            limit=limit, high=high, low=low, rounds=rounds, threshold=threshold, join_rate=join_rate,
            teacher=teacher, extra=extra or [], teach_extra=teach_extra or [], teacher_weights=weights,
            max_len=max_len, min_count=min_count, impacts_cache=impacts_cache, threads=threads,
            output=output, segmented=segmented, save_model=save_model, features=features, relabel=relabel,
            confident=confident, decoder=decoder, decoder_weight=decoder_weight, decoder_bias=decoder_bias,
            decoder_max_len=decoder_max_len, round_labels=round_labels)
    except KxError as err:
        typer.echo(f"✘ {type(err).__name__}: {err}", err=True)
        raise typer.Exit(1)
    if gold_path:
        n = result["teacher_lines_scored"]
        typer.echo(f"lines {result['lines']}  P {100 * result['precision']:.1f}  R {100 * result['recall']:.1f}  "
                   f"F {100 * result['f']:.1f}   (first {n} lines: teacher F {100 * result['teacher_f_on_teach_lines']:.1f}, "
                   f"student F {100 * result['student_f_on_teach_lines']:.1f})")
    if save_model:
        typer.echo(f"Wrote the student to {save_model}")
    typer.echo(f"Wrote {output}")
