"""`kx_spacy annotate` and `kx_spacy bench-annotate`: a pipeline over a corpus into DocBin shards."""
import json
from pathlib import Path
from typing import Optional

import typer

from . import app


@app.command("annotate")
def annotate_cli(
    pipeline: str = typer.Argument(..., help="Pipeline folder or installed package (spacy.load)."),
    input_path: Path = typer.Argument(..., help="Corpus: text lines, or JSON lines with a text field."),
    output_dir: Path = typer.Argument(..., help="Folder of <start>-<end>.spacy shards (rerun: resumes)."),
    engine: str = typer.Option("local", help="local (nlp.pipe) or ray (Ray Data actors)."),
    shard_size: int = typer.Option(1000, help="Records a shard."),
    batch_size: int = typer.Option(64, help="Docs per nlp.pipe batch."),
    n_process: int = typer.Option(1, help="local: processes for nlp.pipe."),
    actors: int = typer.Option(2, help="ray: actors (one loaded pipeline each)."),
    address: Optional[str] = typer.Option(None, help="ray: cluster address ('auto', 'ray://head:10001'); none starts a local instance."),
    num_cpus: Optional[int] = typer.Option(None, help="ray: CPUs of a local instance."),
    gpus_per_actor: float = typer.Option(0.0, help="ray: GPUs each actor asks for."),
    threads: int = typer.Option(1, help="torch threads per worker."),
    fmt: str = typer.Option("auto", "--format", help="auto, text or jsonl."),
    text_key: str = typer.Option("text", help="jsonl: the field holding the text."),
    on_invalid: str = typer.Option("error", help="A lone surrogate in a text: error (names file and line) or replace (U+FFFD)."),
):
    """Annotate a corpus of any size into resumable, verified DocBin shards."""
    from ..annotation.engines import annotate

    report = annotate(pipeline, input_path, output_dir, engine=engine, shard_size=shard_size, batch_size=batch_size,
                      n_process=n_process, actors=actors, address=address, num_cpus=num_cpus,
                      gpus_per_actor=gpus_per_actor, threads_per_worker=threads, fmt=fmt, text_key=text_key,
                      on_invalid=on_invalid)
    r = report.to_dict()
    typer.echo(f"{r['records']} records in {r['shards']} shards ({r['shards_skipped']} already done); "
               f"{r['docs_written']} docs written in {r['seconds']:.1f} s ({r['docs_per_s']} docs/s); output verified")


@app.command("bench-annotate")
def bench_annotate_cli(
    pipeline: str = typer.Argument(..., help="Pipeline folder or package."),
    input_path: Path = typer.Argument(..., help="Corpus (text lines or JSON lines)."),
    work_dir: Path = typer.Option(Path("training/bench_annotate"), help="Scratch folder for the three outputs."),
    limit: int = typer.Option(0, help="Use the first N lines only (0: all)."),
    workers: int = typer.Option(2, help="Processes / actors."),
    shard_size: int = typer.Option(200, help="Records a shard."),
    output: Optional[Path] = typer.Option(None, help="Write the table as JSON here."),
):
    """docs/s for one process, nlp.pipe(n_process) and Ray actors on the same corpus, in one run."""
    from ..annotation.engines import benchmark_engines

    work_dir.mkdir(parents=True, exist_ok=True)
    if limit:
        cut = work_dir / f"input_{limit}{input_path.suffix}"
        with input_path.open("rb") as src, cut.open("wb") as dst:
            for i, line in enumerate(src):
                if i >= limit:
                    break
                dst.write(line)
        input_path = cut
    rows = benchmark_engines(pipeline, input_path, work_dir, shard_size=shard_size, workers=workers, num_cpus=workers)
    typer.echo(f"{'setting':<24} {'docs':>7} {'seconds':>8} {'docs/s':>8}")
    for r in rows:
        typer.echo(f"{r['setting']:<24} {r['docs_written']:>7} {r['seconds']:>8.1f} {r['docs_per_s']:>8.2f}")
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps({"input": str(input_path), "rows": rows}, indent=2), encoding="utf8")
