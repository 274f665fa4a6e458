"""`kx_spacy demo`: build the English and Chinese demo pipelines and print what they compute."""
from pathlib import Path
from typing import Optional

import typer

from . import app


@app.command("demo")
def demo_cli(
    english_model: Optional[str] = typer.Option(None, help="HF name or path of the English encoder (default: the packaged MiniLM)."),
    chinese_model: Optional[str] = typer.Option(None, help="HF name or path of the Chinese encoder (default: the committed character MLM, else a tiny random one)."),
    html: Optional[Path] = typer.Option(None, "--html", help="Also write everything the demo shows as one HTML page here."),
):
    """Run every kx component on an English and a Chinese sentence."""
    from ..demo import run_demo

    run_demo(english_model=english_model, chinese_model=chinese_model, html_path=str(html) if html else None)
