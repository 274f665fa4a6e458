"""NVAE commands: train-nvae, evaluate-nvae, sample-nvae (the work is in
kx_spacy.models.nvae.experiment)."""
import json
from pathlib import Path
from typing import Optional

import typer

from . import app


def _fail(err: Exception) -> None:
    typer.echo(f"✘ {type(err).__name__}: {err}", err=True)
    raise typer.Exit(1)


@app.command("train-nvae", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train_nvae_cli(
    ctx: typer.Context,
    config_path: Path = typer.Argument(..., help="NVAE config, e.g. configs/nvae/cpu.cfg or configs/nvae/gpu.cfg."),
    output_dir: Path = typer.Argument(..., help="Checkpoints, nvae/model.pt, baseline/model.pt, pictures/."),
    data_dir: str = typer.Option("../shared/data", "--data-dir", help="Folder holding mnist/."),
    metrics: Optional[Path] = typer.Option(None, "--metrics", help="Write the metrics JSON here (metrics/...)."),
    minutes: Optional[float] = typer.Option(None, "--minutes", help="Override the time budget (each model)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the checkpoints in OUTPUT_DIR."),
):
    """Train the NVAE and then the MLP VAE baseline for the same time, evaluate both at the
    same training times (IW bound) and draw samples. Overrides: --training.seed 1."""
    from spacy.cli._util import parse_config_overrides

    from ..errors import KxError
    from ..models.nvae.experiment import load_config, run_experiment

    try:
        cfg = load_config(config_path, parse_config_overrides(ctx.args))
        result = run_experiment(cfg, data_dir, output_dir, metrics, resume=resume, minutes=minutes,
                                log=typer.echo)
    except KxError as err:
        _fail(err)
    typer.echo(f"binarisation: {result['binarisation']}")
    typer.echo(f"training time: the {result['clock']} clock (train s below; 'process': CPU seconds)")
    typer.echo(f"{'model':<9}{'train s':>9}{'steps':>8}{'K':>6}{'images':>8}{'NLL nats':>10}")
    for r in result["rows"]:
        typer.echo(f"{r['model']:<9}{r['train_seconds']:>9.1f}{r['step']:>8}{r['k']:>6}{r['num_images']:>8}{r['nll']:>10.2f}")
    for p in result.get("pictures", []):
        typer.echo(f"picture: {p}")


@app.command("evaluate-nvae")
def evaluate_nvae_cli(
    model: Path = typer.Argument(..., help="A model.pt written by train-nvae (NVAE or baseline)."),
    data_dir: str = typer.Option("../shared/data", "--data-dir", help="Folder holding mnist/."),
    k: int = typer.Option(1000, "--k", help="Importance samples per image."),
    limit: int = typer.Option(2000, "--limit", help="First N test images (0: all 10,000)."),
    batch_size: int = typer.Option(2000, "--batch-size", help="Rows per forward pass."),
    test_seed: int = typer.Option(0, "--test-seed", help="Seed of the one-time test binarisation."),
    threads: int = typer.Option(1, "--threads", help="torch threads on a CPU (0: default)."),
    output: Optional[Path] = typer.Option(None, "--output", help="Write the metrics JSON here."),
):
    """Test NLL (nats) by the importance-weighted bound with K samples."""
    from ..errors import KxError
    from ..models.nvae.experiment import evaluate_model

    try:
        res = evaluate_model(model, data_dir, k=k, num_images=limit or 10_000, batch_size=batch_size,
                             test_seed=test_seed, num_threads=threads)
    except KxError as err:
        _fail(err)
    typer.echo(f"{model}: IW-{res['k']} NLL {res['nll']:.2f} nats (−ELBO {res['elbo_nll']:.2f}) "
               f"on {res['num_images']} test images; {res['binarisation']}")
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(res, indent=2))


@app.command("sample-nvae")
def sample_nvae_cli(
    model: Path = typer.Argument(..., help="A model.pt written by train-nvae."),
    output_dir: Path = typer.Argument(..., help="Folder for the PNG grids."),
    temperatures: str = typer.Option("0.6,0.8,1.0", "--temperatures", help="Comma-separated, each > 0."),
    num_samples: int = typer.Option(64, "--n", help="Images per grid."),
    readjust_bn: bool = typer.Option(True, "--readjust-bn/--no-readjust-bn", help="Re-estimate BN statistics at each temperature (guarded)."),
    seed: int = typer.Option(0, "--seed"),
):
    """PNG grids of samples at several temperatures."""
    from ..errors import KxError
    from ..models.nvae.experiment import sample_model

    try:
        temps = [float(t) for t in temperatures.split(",") if t.strip()]
    except ValueError:
        _fail(ValueError(f"--temperatures must be numbers separated by commas, got {temperatures!r}"))
    try:
        for p in sample_model(model, output_dir, temps, num_samples, readjust_bn, seed):
            typer.echo(f"picture: {p}")
    except KxError as err:
        _fail(err)
