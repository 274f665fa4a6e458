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
            + (f"  held-out MLM loss {fin['heldout_loss']:.4f}  accuracy {fin['heldout_acc']:.4f} "
               f"({fin['heldout_tokens']} masked tokens)" if fin["heldout_tokens"] else
               f"  no held-out loss: {manifest['heldout'].get('note', 'no held-out text')}")
        )
