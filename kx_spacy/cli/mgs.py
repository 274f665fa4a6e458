"""Sequence-level fine-tuning commands (issue 13): mgs-toy and finetune-generator-mgs."""
import json
from pathlib import Path
from typing import List, Optional

import typer

from . import app


TABLE_KEYS = ["task_loss", "perplexity", "chrf", "repetition", "non_termination", "cost_wall_seconds",
              "cost_decodes"]


def _table(summary, keys) -> str:
    lines = [f"{'method':<8}" + "".join(f"{k:>20}" for k in keys)]
    for method, stats in summary.items():
        cells = []
        for k in keys:
            if k in stats:
                mean, sd = stats[k]
                cells.append(f"{mean:>11.4f} ± {sd:<6.4f}")
            else:
                cells.append(f"{'-':>20}")
        lines.append(f"{method:<8}" + "".join(cells))
    return "\n".join(lines)


@app.command("mgs-toy")
def mgs_toy_cli(
    output: Path = typer.Option(Path("metrics/mgs_toy.json"), help="Write the runs and summary JSON here."),
    seeds: str = typer.Option("0,1,2,3,4", help="Seeds, comma-separated: each trains its own MLE start "
                              "(run seeds in separate processes and merge with mgs-toy-summary)."),
    methods: str = typer.Option("mle,mgs,pg,mrt", help="Fine-tune methods, comma-separated."),
    task_loss: str = typer.Option("edit", help="edit, nonterm, repeat or chrf."),
    mle_steps: int = typer.Option(300, help="MLE updates of the starting model."),
    finetune_steps: int = typer.Option(200, help="Updates of every fine-tune (equal for all methods)."),
    num_candidates: int = typer.Option(4, help="K: MGS candidates; PG / MRT draw K + 1 samples per input."),
    beta: float = typer.Option(100.0, help="MGS β."),
    candidate_scale: float = typer.Option(0.05, help="MGS candidate step scale c (1.0 = reference; see MGSConfig)."),
    lr: float = typer.Option(1e-3, help="Adam learning rate of the fine-tunes."),
    mle_mix: float = typer.Option(0.0, help="α: probability of an MLE update inside MGS / PG / MRT."),
    width: int = typer.Option(32, help="Toy model width."),
    min_len: int = typer.Option(4, help="Shortest source string."),
    max_len: int = typer.Option(14, help="Longest source string."),
    threads: int = typer.Option(1, help="torch threads."),
):
    """MLE → MLE / MGS / PG / MRT fine-tunes of a toy seq2seq (string reversal), held-out figures."""
    import torch

    from ..generation.mgs_toy import compare_methods

    torch.set_num_threads(threads)

    def show(row):
        typer.echo(f"seed {row['seed']} {row['method']:<6} task_loss {row['task_loss']:.4f} "
                   f"ppl {row['perplexity']:.4f} chrF {row['chrf']:.2f}"
                   + (f" wall {row['cost_wall_seconds']:.1f}s" if "cost_wall_seconds" in row else ""))

    result = compare_methods(
        seeds=[int(x) for x in seeds.split(",") if x.strip()], methods=[m.strip() for m in methods.split(",") if m.strip()],
        task_loss_name=task_loss, mle_steps=mle_steps, finetune_steps=finetune_steps,
        num_candidates=num_candidates, beta=beta, candidate_scale=candidate_scale, lr=lr, mle_mix=mle_mix,
        width=width, min_len=min_len, max_len=max_len, progress=show,
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=1, default=float), encoding="utf-8")
    typer.echo(_table(result["summary"], TABLE_KEYS))
    typer.echo(f"-> {output}")


@app.command("mgs-toy-summary")
def mgs_toy_summary_cli(
    inputs: List[Path] = typer.Argument(..., help="mgs-toy JSON outputs (e.g. one per seed)."),
    output: Path = typer.Option(Path("metrics/mgs_toy.json"), help="Write the merged runs and summary here."),
):
    """Merge mgs-toy runs (seeds run in separate processes) and print mean ± sd per method."""
    from ..generation.mgs_toy import summarize

    runs, settings = [], None
    for path in inputs:
        data = json.loads(path.read_text(encoding="utf-8"))
        runs.extend(data["runs"])
        settings = settings or data.get("settings")
    summary = summarize(runs)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"settings": settings, "runs": runs, "summary": summary}, indent=1),
                      encoding="utf-8")
    typer.echo(_table(summary, TABLE_KEYS))
    typer.echo(f"{len({r['seed'] for r in runs})} seeds -> {output}")
