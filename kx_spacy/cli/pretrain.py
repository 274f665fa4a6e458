"""`kx_spacy pretrain-mlm`: pretrain a BERT masked LM from raw text (runs under torchrun too)."""
from pathlib import Path
from typing import List, Optional

import typer

from . import app


@app.command(
    "pretrain-mlm",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def pretrain_mlm_cli(
    ctx: typer.Context,
    config_path: Path = typer.Argument(..., help="Pretraining config (.cfg), e.g. configs/pretrain/zh_cpu.cfg."),
    output_dir: Path = typer.Argument(..., help="Where the Hugging Face model folder goes (written atomically at the end)."),
    inputs: Optional[List[str]] = typer.Option(None, "--input", "-i", help="Extra corpus file or glob (plain lines), or READER:PATH (readers: lines, tsv, csv, conllu_text). Repeatable."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the checkpoint in the checkpoint folder."),
    checkpoint_dir: Optional[Path] = typer.Option(None, "--checkpoint-dir", help="Checkpoint folder (default: OUTPUT.checkpoints)."),
    on_invalid: Optional[str] = typer.Option(None, "--on-invalid", help="Lines with invalid UTF-8: skip (default) or fail."),
    metrics: Optional[Path] = typer.Option(None, "--metrics", help="Also write the JSON manifest here (e.g. metrics/pretrain_zh.json)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
):
    """Pretrain a BertForMaskedLM from scratch. Config overrides as in spaCy: --training.max_steps 200."""
    from spacy.cli._util import parse_config_overrides

    from ..errors import KxError
    from ..pretraining.config import load_config
    from ..pretraining.loop import pretrain

    overrides = parse_config_overrides(ctx.args)
    if on_invalid is not None:
        overrides["corpus.on_invalid"] = on_invalid
    try:
        cfg = load_config(config_path, overrides)
        manifest = pretrain(cfg, output_dir, checkpoint_dir=checkpoint_dir, resume=resume,
                            extra_sources=inputs or [], metrics_path=metrics, progress=not no_progress)
    except KxError as err:
        typer.echo(f"✘ {type(err).__name__}: {err}", err=True)
        raise typer.Exit(1)
    if manifest is not None:
        fin = manifest["final"]
        typer.echo(
            f"✔ {output_dir}: {manifest['parameters']:,} parameters, vocab {manifest['vocab_size']}, "
            f"{manifest['corpus']['total_chars']:,} characters from {len(manifest['corpus']['files'])} files\n"
            f"  steps {manifest['steps']}  time {manifest['time_s']} s  tokens/s {manifest['tokens_per_s']:,.0f}\n"
            f"  held-out MLM loss {fin['heldout_loss']:.4f}  accuracy {fin['heldout_acc']:.4f} "
            f"({fin['heldout_tokens']} masked tokens)"
        )


def _raw_lines(paths: Optional[List[Path]]) -> List[str]:
    """The lines of plain-text files, whitespace removed."""
    out: List[str] = []
    for p in paths or []:
        out += ["".join(x.split()) for x in p.read_text(encoding="utf-8").splitlines()]
    return out


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
    threads: int = typer.Option(1, help="torch CPU threads."),
):
    """Teacher pair scores → confident pseudo-labels → boundary classifier (no gold data used)."""
    import json
    import time

    import torch

    from ..encoders import chinese_encoder_path
    from ..errors import KxError
    from ..pretraining.self_training import self_train
    from ..pretraining.teachers import teacher_scores, teacher_words
    from ..readers import read_sighan, read_word_list

    torch.set_num_threads(max(1, threads))
    start = time.perf_counter()
    lines = read_sighan(input_path, segmented=False)
    seg_lines = lines[:limit] if limit else lines
    teach = lines[:teach_limit] if teach_limit else lines
    enc = chinese_encoder_path(encoder) if "mlm" in teacher else None
    extra_texts = _raw_lines(extra)
    more = [t for t in _raw_lines(teach_extra) if t]
    n_input_teach = len(teach)
    try:
        weights = [float(x) for x in teacher_weights.split(",")] if teacher_weights else None
    except ValueError:
        typer.echo(f"✘ --teacher-weights {teacher_weights!r}: comma-separated numbers, e.g. '2,1'", err=True)
        raise typer.Exit(1)
    teach = list(teach) + more
    try:
        taught = teacher_scores(teacher, teach, list(lines) + more + extra_texts, encoder=enc, max_len=max_len,
                                min_count=min_count, cache=impacts_cache, weights=weights, progress=True)
        teacher_s = time.perf_counter() - start
        words, stats = self_train(teach, taught["scores"], seg_lines, high=high, low=low, rounds=rounds,
                                  threshold=threshold, join_rate=join_rate, extra_texts=extra_texts)
    except KxError as err:
        typer.echo(f"✘ {type(err).__name__}: {err}", err=True)
        raise typer.Exit(1)
    result = {"input": str(input_path), "encoder": enc, "teacher": teacher, "teacher_weights": weights, "teach_lines": n_input_teach,
              "extra": [str(p) for p in extra or []], "extra_characters": sum(map(len, extra_texts)),
              "teach_extra": [str(p) for p in teach_extra or []], "teach_extra_lines": len(more),
              "lines": len(seg_lines), "high": high, "low": low, "rounds": rounds, "threshold": threshold,
              "join_rate": join_rate, "max_len": max_len, "min_count": min_count, "stats": stats,
              "teacher_seconds": round(teacher_s, 1), "seconds": round(time.perf_counter() - start, 1)}
    if gold_path:
        from ..scoring import segmentation_scores

        gold = read_sighan(gold_path)
        train_words = read_word_list(words_path) if words_path else None
        result.update(segmentation_scores(words, gold[: len(seg_lines)], train_words))
        n = min(n_input_teach, len(seg_lines))
        alone = teacher_words(teach[:n], taught["scores"][:n], names=taught["names"])
        result["teacher_f_on_teach_lines"] = segmentation_scores(alone, gold[:n])["f"]
        result["student_f_on_teach_lines"] = segmentation_scores(words[:n], gold[:n])["f"]
        typer.echo(f"lines {len(seg_lines)}  P {100 * result['precision']:.1f}  R {100 * result['recall']:.1f}  "
                   f"F {100 * result['f']:.1f}   (first {n} lines: teacher F {100 * result['teacher_f_on_teach_lines']:.1f}, "
                   f"student F {100 * result['student_f_on_teach_lines']:.1f})")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
    if segmented:
        segmented.write_text("".join("  ".join(w) + "\n" for w in words), encoding="utf-8")
    typer.echo(f"Wrote {output}")
