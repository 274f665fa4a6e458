"""`kx_spacy build-pipeline` and `kx_spacy assemble-pipeline`: save pipelines for `spacy package`."""
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
    """Build a pipeline (transformer + untrained kx components) and save it."""
    from ..pipeline_builder import build_pipeline, save_pipeline

    nlp = build_pipeline(lang, encoder, component)
    save_pipeline(nlp, output, name=name, version=version)
    typer.echo(f"Saved {lang} pipeline {nlp.pipe_names} to {output}")


@app.command(
    "assemble-pipeline",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def assemble_pipeline_cli(
    ctx: typer.Context,
    config_path: Path = typer.Argument(..., exists=True, dir_okay=False, help="Assembly config, e.g. configs/package/en_kx_demo.cfg."),
    output: Path = typer.Argument(..., help="Folder to write the pipeline to (then: spacy package)."),
    name: str = typer.Option("kx_demo", help="Package name (spacy package prefixes the language)."),
    version: str = typer.Option("0.1.0", help="Package version."),
):
    """Put trained components (sourced) and new ones together over ONE transformer, checked.
    Config overrides as in spaCy: --paths.textcat training/sst2_cpu/model-best."""
    from spacy.cli._util import parse_config_overrides

    from ..errors import KxError
    from ..pipeline_builder import assemble_and_save

    overrides = parse_config_overrides(ctx.args)
    try:
        assemble_and_save(config_path, output, name=name, version=version, overrides=overrides)
    except KxError as err:
        typer.echo(f"✘ {type(err).__name__}: {err}", err=True)
        raise typer.Exit(1)
    import srsly

    meta = srsly.read_json(output / "meta.json")
    typer.echo(f"Saved {meta['lang']}_{meta['name']} {meta['pipeline']} to {output} (sourced: {meta['kx_sources']})")
