"""The ``kx_spacy`` command line (also ``python -m kx_spacy``), called by project.yml.

Each command lives in its own module below and registers itself on ``app``; heavy
imports happen inside the command functions.
"""
import typer

app = typer.Typer(
    name="kx_spacy",
    help="kx_spacy commands: demo, pretraining, evaluation, benchmarks.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _group() -> None:
    """kx_spacy: research components for spaCy over one shared transformer."""


# Command modules: importing one registers its commands on ``app``.
from . import demo  # noqa: E402,F401
from . import pretrain  # noqa: E402,F401
from . import segment  # noqa: E402,F401
from . import pipelines  # noqa: E402,F401
from . import evaluate_perturbed  # noqa: E402,F401
from . import bench_perturbed  # noqa: E402,F401
from . import attribution  # noqa: E402,F401
from . import linear_attention  # noqa: E402,F401
from . import annotate  # noqa: E402,F401
from . import mgs  # noqa: E402,F401
from . import nvae  # noqa: E402,F401
from . import generation  # noqa: E402,F401
from . import data  # noqa: E402,F401


def main() -> None:
    app()
