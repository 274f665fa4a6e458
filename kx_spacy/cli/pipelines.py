"""`kx_spacy build-pipeline`: save a small pipeline for `spacy package`."""
from pathlib import Path
from typing import List

import typer

from . import app


@app.command("build-pipeline")
def build_pipeline_cli(
    output: Path = typer.Argument(..., help="Folder to write the pipeline to."),
    lang: str = typer.Option("en", help="spaCy language code."),
    encoder: str = typer.Option("minilm", help="HF name or path of the encoder ('minilm' = packaged MiniLM)."),
    component: List[str] = typer.Option([], "--component", "-c", help="kx factory to add (repeatable)."),
    name: str = typer.Option("kx_demo", help="Package name (spacy package prefixes the language)."),
    version: str = typer.Option("0.1.0", help="Package version."),
):
    """Build a pipeline (transformer + kx components) and save it for `spacy package`."""
    from ..pipeline_builder import build_pipeline, save_pipeline

    nlp = build_pipeline(lang, encoder, component)
    save_pipeline(nlp, output, name=name, version=version)
    typer.echo(f"Saved {lang} pipeline {nlp.pipe_names} to {output}")
