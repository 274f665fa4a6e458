"""`kx_spacy link-data`: the offline stand-in for `spacy project assets` (see kx_spacy/data_links.py)."""
import json
from pathlib import Path
from typing import Optional

import typer

from . import app


@app.command("link-data")
def link_data_cli(
    src: Path = typer.Argument(..., help="A local copy of the data folder (same layout as the assets)."),
    dest: Path = typer.Argument(..., help="Where the assets land: the project's vars.data_dir."),
    project: Path = typer.Option(Path("project.yml"), help="The project file whose assets are linked."),
    copy: bool = typer.Option(False, help="Copy the files instead of symlinking them."),
    output: Optional[Path] = typer.Option(None, help="Also write the report as JSON here."),
):
    """Link every data asset of project.yml from SRC into DEST, checking md5 checksums."""
    from ..data_links import data_assets, link_data

    assets = data_assets(project)
    report = link_data(src, dest, assets, copy=copy)
    verb = "copied" if copy else "linked"
    typer.echo(f"{len(assets)} data assets: {len(report.linked)} {verb}, {len(report.present)} already in {dest}, "
               f"{len(report.missing)} missing, {len(report.differs)} differ")
    for path in report.missing:
        typer.echo(f"  missing: {path} (not in {src})", err=True)
    for path, why in report.differs.items():
        typer.echo(f"  differs: {path}: {why}", err=True)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf8")
    if not report.ok:
        raise typer.Exit(1)
