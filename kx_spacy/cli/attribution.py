"""Attribution workflow commands: prepare-textcat, evaluate-textcat, explain, bench-attribution.

Training itself is ``python -m spacy train configs/textcat/<config>.cfg`` with the corpora and
base pipeline that ``prepare-textcat`` writes (see project.yml, "attribution commands").
"""
import json
from pathlib import Path
from typing import Optional

import typer

from . import app


@app.command("prepare-textcat")
def prepare_textcat_cli(
    dataset: str = typer.Argument(..., help="sst2 or chnsenticorp."),
    output_dir: Path = typer.Argument(..., help="Folder for <dataset>_{train,dev,test}.spacy."),
    base: Path = typer.Argument(..., help="Folder to save the transformer-only base pipeline to."),
    encoder: str = typer.Option("minilm", help="Encoder: 'minilm', a path or HF name (zh: path of the character MLM; missing -> kx_spacy.encoders.chinese_encoder_path())."),
    data_dir: Optional[str] = typer.Option(None, help="Data folder (default $KX_DATA or ../shared/data)."),
    train_limit: int = typer.Option(0, help="Keep the first N training rows (0: all)."),
    dev_limit: int = typer.Option(0, help="Keep the first N dev rows (0: all)."),
):
    """Write the sentiment corpora as DocBins and save the base pipeline to source."""
    from ..attribution.workflow import LANGS, build_base_pipeline, read_sentiment, write_docbin
    from ..encoders import chinese_encoder_path, english_encoder_path

    lang = LANGS.get(dataset, "en")
    for split, limit in (("train", train_limit), ("dev", dev_limit), ("test", 0)):
        rows = read_sentiment(dataset, split, data_dir, limit or None)
        n = write_docbin(rows, lang, output_dir / f"{dataset}_{split}.spacy")
        typer.echo(f"{dataset} {split}: {n} docs -> {output_dir / f'{dataset}_{split}.spacy'}")
    if lang == "zh":
        name = chinese_encoder_path(encoder if encoder and Path(encoder).exists() else None)
    else:
        name = english_encoder_path(encoder)
    build_base_pipeline(lang, name, base)
    typer.echo(f"base pipeline ({name}) -> {base}")


@app.command("evaluate-textcat")
def evaluate_textcat_cli(
    model: Path = typer.Argument(..., help="Trained pipeline folder (e.g. training/sst2_cpu/model-best)."),
    dataset: str = typer.Argument(..., help="sst2 or chnsenticorp."),
    split: str = typer.Option("test", help="dev or test."),
    data_dir: Optional[str] = typer.Option(None, help="Data folder (default $KX_DATA or ../shared/data)."),
    limit: int = typer.Option(0, help="Evaluate the first N rows (0: all)."),
    output: Optional[Path] = typer.Option(None, help="Write the metrics JSON here (metrics/...)."),
):
    """Accuracy and F1 of a trained textcat pipeline."""
    import spacy

    from ..attribution.workflow import evaluate, read_sentiment

    nlp = spacy.load(model)
    rows = read_sentiment(dataset, split, data_dir, limit or None)
    scores = evaluate(nlp, rows)
    scores.update({"model": str(model), "dataset": dataset, "split": split})
    typer.echo(f"{'dataset':<14}{'split':<7}{'n':>6}{'accuracy':>10}{'F1 pos':>9}{'F1 macro':>10}")
    typer.echo(
        f"{dataset:<14}{split:<7}{scores['n']:>6}{scores['accuracy']:>10.4f}"
        f"{scores['f1_positive']:>9.4f}{scores['f1_macro']:>10.4f}"
    )
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(scores, indent=2))


@app.command("explain")
def explain_cli(
    model: Path = typer.Argument(..., help="Pipeline with a transformer and a listening textcat."),
    output: Path = typer.Argument(..., help="HTML page to write."),
    dataset: Optional[str] = typer.Option(None, help="Explain rows of sst2 / chnsenticorp (else --text)."),
    split: str = typer.Option("dev", help="Split to sample from."),
    data_dir: Optional[str] = typer.Option(None, help="Data folder (default $KX_DATA or ../shared/data)."),
    n: int = typer.Option(12, help="Number of rows to explain."),
    text: Optional[str] = typer.Option(None, help="Explain this text instead of a dataset sample."),
    classifier: str = typer.Option("textcat", help="Name of the classifier pipe."),
    tolerance: float = typer.Option(0.01, help="Completeness tolerance."),
):
    """Explain a sample with kx_attributor and write an HTML page."""
    import spacy

    from ..attribution.render import render_attributions
    from ..attribution.workflow import read_sentiment

    nlp = spacy.load(model)
    if "kx_attributor" not in nlp.pipe_names:
        nlp.add_pipe("kx_attributor", config={"classifier": classifier, "tolerance": tolerance})
    if text:
        texts = [text]
    elif dataset:
        texts = [t for t, _ in read_sentiment(dataset, split, data_dir, n)]
    else:
        raise typer.BadParameter("give --text or --dataset")
    docs = list(nlp.pipe(texts))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render_attributions(docs, page=True, title=f"kx_attributor: {model}"), encoding="utf8")
    errors = [rec["error"] for d in docs for rec in (d._.kx_attributions or {}).values()]
    steps = [rec["steps"] for d in docs for rec in (d._.kx_attributions or {}).values()]
    if errors:
        typer.echo(f"{len(docs)} docs; max completeness error {max(errors):.4%}; mean steps {sum(steps) / len(steps):.1f}")
    typer.echo(f"wrote {output}")


@app.command("bench-attribution")
def bench_attribution_cli(
    model: Path = typer.Argument(..., help="Trained SST-2 pipeline (transformer + textcat)."),
    output: Path = typer.Option(Path("metrics/bench_attribution.json"), help="Results JSON."),
    data_dir: Optional[str] = typer.Option(None, help="Data folder (default $KX_DATA or ../shared/data)."),
    n_time: int = typer.Option(64, help="Examples for the Captum timing comparison."),
    n_errors: int = typer.Option(200, help="Examples for the completeness-vs-steps table."),
    n_deletion: int = typer.Option(200, help="Examples for the deletion curves."),
    seed: int = typer.Option(0, help="Random seed (random baseline of the deletion curves)."),
    threads: int = typer.Option(0, help="torch threads (0: leave as is)."),
    parts: str = typer.Option("abc", help="Parts to run: a (speed), b (completeness), c (deletion)."),
):
    """Benchmark kx_attributor: speed vs Captum, completeness vs steps, deletion AOPC."""
    from ..attribution.benchmark import run_benchmark

    results = run_benchmark(
        model, data_dir=data_dir, n_time=n_time, n_errors=n_errors, n_deletion=n_deletion,
        seed=seed, threads=threads or None, parts=parts,
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2))
    typer.echo(f"wrote {output}")
