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


@app.command("self-train-segmenter")
def self_train_segmenter_cli(
    input_path: Path = typer.Argument(..., help="Raw input lines (e.g. icwb2/testing/pku_test.utf8); whitespace is removed."),
    gold_path: Optional[Path] = typer.Option(None, "--gold", help="Bakeoff gold file, only to SCORE the result."),
    words_path: Optional[Path] = typer.Option(None, "--words", help="Training word list, only for OOV recall."),
    encoder: Optional[str] = typer.Option(None, help="Teacher MLM: HF name or path (default: the shipped character MLM)."),
    teach_limit: int = typer.Option(300, help="Lines the (slow) perturbed-masking teacher scores (0 = all)."),
    limit: int = typer.Option(0, help="Lines to segment and score (0 = all)."),
    high: float = typer.Option(0.75, help="Pseudo-label 'join' at or above this quantile of teacher scores."),
    low: float = typer.Option(0.45, help="Pseudo-label 'split' below this quantile."),
    rounds: int = typer.Option(1, help="Self-training rounds (≥ 2: relabel with the student's confident pairs)."),
    threshold: float = typer.Option(0.5, help="Join when the student's probability reaches this."),
    join_rate: Optional[float] = typer.Option(None, help="Instead of --threshold: join this fraction of the open pairs (a word-length prior, e.g. 0.4)."),
    teacher: str = typer.Option("mlm", help="Teacher scores: 'mlm' (perturbed masking with --encoder) or 'pmi' (bigram PMI of the raw text, a baseline)."),
    extra: Optional[List[Path]] = typer.Option(None, "--extra", help="More raw text (plain lines) for the PMI counts."),
    impacts_cache: Optional[Path] = typer.Option(None, help="An .npz file to keep / reuse the teacher's scores."),
    output: Path = typer.Option(Path("metrics/self_train_segmenter.json"), "--output", "-o", help="Results JSON."),
    segmented: Optional[Path] = typer.Option(None, help="Also write the segmented lines here (space separated)."),
    threads: int = typer.Option(1, help="torch CPU threads."),
):
    """Perturbed-masking teacher → confident pseudo-labels → boundary classifier (no gold data used)."""
    import json
    import time

    import numpy
    from tqdm import tqdm

    from ..encoders import chinese_encoder_path
    from ..errors import KxError
    from ..pretraining.self_training import _rules, self_train
    from ..readers import read_sighan, read_word_list

    import torch

    torch.set_num_threads(max(1, threads))
    start = time.perf_counter()
    lines = read_sighan(input_path, segmented=False)
    seg_lines = lines[:limit] if limit else lines
    teach = lines[:teach_limit] if teach_limit else lines
    enc = chinese_encoder_path(encoder)
    impacts = None
    if teacher not in ("mlm", "pmi"):
        typer.echo(f"✘ --teacher must be 'mlm' or 'pmi', got {teacher!r}", err=True)
        raise typer.Exit(1)
    extra_texts = []
    for p in extra or []:
        extra_texts += ["".join(x.split()) for x in p.read_text(encoding="utf-8").splitlines()]
    if teacher == "pmi":
        from ..pretraining.self_training import CorpusCounts

        enc = "pmi"
        counts = CorpusCounts.from_texts(list(lines) + extra_texts)
        impacts = [numpy.array([counts.pmi(a, b) for a, b in zip(t, t[1:])]) for t in teach]
    elif impacts_cache and impacts_cache.exists():
        data = numpy.load(impacts_cache, allow_pickle=False)
        if str(data["encoder"]) == enc and int(data["n"]) == len(teach):
            flat, offs = data["flat"], data["offsets"]
            impacts = [flat[offs[i]:offs[i + 1]] for i in range(len(teach))]
    if impacts is None:
        from ..backbone import Backbone
        from ..perturbed.segmenter import adjacent_impacts
        from ..pipeline_builder import build_pipeline

        nlp = build_pipeline("zh", enc, [])
        backbone = Backbone.from_nlp(nlp, "transformer")
        impacts = []
        step = 8
        for i in tqdm(range(0, len(teach), step), desc="teacher", unit="batch"):
            chunk = teach[i:i + step]
            pairs = [[r is None for r in _rules(t)] for t in chunk]
            impacts += adjacent_impacts(backbone, [list(t) for t in chunk], pairs=pairs)
        if impacts_cache:
            offs = numpy.cumsum([0] + [len(v) for v in impacts])
            impacts_cache.parent.mkdir(parents=True, exist_ok=True)
            numpy.savez(impacts_cache, flat=numpy.concatenate(impacts) if impacts else numpy.zeros(0),
                        offsets=offs, encoder=enc, n=len(teach))
    teacher_s = time.perf_counter() - start
    try:
        words, stats = self_train(teach, impacts, seg_lines, high=high, low=low, rounds=rounds,
                                  threshold=threshold, join_rate=join_rate, extra_texts=extra_texts)
    except KxError as err:
        typer.echo(f"✘ {type(err).__name__}: {err}", err=True)
        raise typer.Exit(1)
    result = {"input": str(input_path), "encoder": enc, "teacher": teacher, "teach_lines": len(teach),
              "lines": len(seg_lines), "high": high, "low": low, "rounds": rounds, "threshold": threshold,
              "join_rate": join_rate, "stats": stats,
              "teacher_seconds": round(teacher_s, 1), "seconds": round(time.perf_counter() - start, 1)}
    if gold_path:
        from ..scoring import segmentation_scores

        gold = read_sighan(gold_path)[: len(seg_lines)]
        train_words = read_word_list(words_path) if words_path else None
        result.update(segmentation_scores(words, gold, train_words))
        # the teacher alone (Su's rule at the segmenter's default quantile 0.6) on its lines
        from ..pretraining.self_training import words_from_joins

        base = []
        for t, v in zip(teach, impacts):
            r = _rules(t)
            sc = numpy.array([x for x, rr in zip(v, r) if rr is None and not numpy.isnan(x)])
            cut = numpy.quantile(sc, 0.6) if sc.size else numpy.inf
            base.append(words_from_joins(t, [bool(rr) if rr is not None else bool(not numpy.isnan(x) and x >= cut) for x, rr in zip(v, r)]))
        n = min(len(teach), len(seg_lines))
        result["teacher_f_on_teach_lines"] = segmentation_scores(base[:n], read_sighan(gold_path)[:n])["f"]
        result["student_f_on_teach_lines"] = segmentation_scores(words[:n], read_sighan(gold_path)[:n])["f"]
        typer.echo(f"lines {len(seg_lines)}  P {100 * result['precision']:.1f}  R {100 * result['recall']:.1f}  "
                   f"F {100 * result['f']:.1f}   (first {n} lines: teacher F {100 * result['teacher_f_on_teach_lines']:.1f}, "
                   f"student F {100 * result['student_f_on_teach_lines']:.1f})")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
    if segmented:
        segmented.write_text("".join("  ".join(w) + "\n" for w in words), encoding="utf-8")
    typer.echo(f"Wrote {output}")
