"""Sequence-level fine-tuning commands (issue 13): mgs-toy and finetune-generator-mgs."""
import json
from pathlib import Path
from typing import List, Optional

import typer

from . import app


TABLE_KEYS = ["task_loss", "delta_task_loss", "perplexity", "perplexity_change", "chrf", "repetition",
              "non_termination", "cost_wall_seconds", "cost_decodes"]
GENERATOR_KEYS = ["task_loss", "delta_task_loss", "chrf", "bleu", "r_L", "repetition", "perplexity",
                  "perplexity_change"]
GENERATOR_COST_KEYS = ["cost_updates", "cost_wall_per_update", "cost_decodes", "cost_passes", "cost_model_copies",
                       "cost_peak_rss_mb", "cost_wall_seconds"]


def _table(summary, keys) -> str:
    """mean ± sd per method (rows) and figure (columns); columns as wide as their names."""
    widths = [max(20, len(k) + 2) for k in keys]
    lines = [f"{'method':<8}" + "".join(f"{k:>{w}}" for k, w in zip(keys, widths))]
    for method, stats in summary.items():
        cells = []
        for k, w in zip(keys, widths):
            if k in stats:
                mean, sd = stats[k]
                cells.append(f"{mean:.4f} ± {sd:<6.4f}".rjust(w))
            else:
                cells.append(f"{'-':>{w}}")
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


@app.command("mgs-summary")
def mgs_summary_cli(
    inputs: List[Path] = typer.Argument(..., help="mgs-toy / finetune-generator-mgs --compare JSON outputs "
                                        "(e.g. one per seed)."),
    output: Path = typer.Option(..., help="Write the merged runs and summary here."),
):
    """Merge comparison runs (seeds run in separate processes) and print mean ± sd per method."""
    from ..generation.mgs_toy import summarize

    runs, settings = [], None
    for path in inputs:
        data = json.loads(path.read_text(encoding="utf-8"))
        runs.extend(data["runs"])
        settings = settings or data.get("settings")
    summary = summarize(runs)
    settings = dict(settings or {})
    settings["seeds"] = sorted({r["seed"] for r in runs if r["method"] != "start"})
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"settings": settings, "runs": runs, "summary": summary}, indent=1),
                      encoding="utf-8")
    if any("edit" in r for r in runs):
        typer.echo(_table(summary, TABLE_KEYS))
    else:
        typer.echo(_generator_tables(summary))
    typer.echo(f"{len({r['seed'] for r in runs if r['method'] != 'start'})} seeds -> {output}")


def _generator_tables(summary) -> str:
    """The held-out figures, then the cost per run (mean ± sd over the seeds)."""
    return _table(summary, GENERATOR_KEYS) + "\n" + _table(summary, GENERATOR_COST_KEYS)


def _overrides(num_candidates, beta, candidate_scale, mle_mix, parameters, zero_candidate,
               candidate_batch, noise=1.0) -> dict:
    return {"num_candidates": num_candidates, "beta": beta, "candidate_scale": candidate_scale, "noise": noise,
            "mle_mix": mle_mix, "parameters": [p for p in parameters.split(",") if p.strip()],
            "zero_candidate": zero_candidate, "candidate_batch": candidate_batch}


@app.command("finetune-generator-mgs")
def finetune_generator_mgs_cli(
    model: Path = typer.Argument(..., help="A trained kx_generator pipeline (the train-generator output)."),
    train: Path = typer.Argument(..., help="Training pairs (source<TAB>target per line)."),
    output_dir: Path = typer.Argument(..., help="Run folder (checkpoint, metrics.jsonl; the model goes to model/)."),
    method: str = typer.Option("mgs", help="mgs, pg, mrt or mle."),
    task_loss: str = typer.Option("chrf", help="chrf, edit, nonterm, repeat or a registered kx_spacy.*Loss.v1 name."),
    dev: Optional[Path] = typer.Option(None, help="Held-out pairs for the engine's evaluations."),
    test: Optional[Path] = typer.Option(None, help="With --compare: the pairs the comparison is scored on."),
    compare: bool = typer.Option(False, help="Fine-tune every --methods × --seeds from the same start and "
                                 "write the comparison (mean ± sd) instead of one run."),
    methods: str = typer.Option("mle,mgs,pg,mrt", help="With --compare: the methods."),
    seeds: str = typer.Option("0,1,2,3,4", help="With --compare: the seeds."),
    steps: int = typer.Option(100, help="Updates (equal for every method)."),
    lr: float = typer.Option(1e-4, help="Learning rate."),
    optimizer: str = typer.Option("adam", help="adam or sgd (plain SGD: the update's direction without Adam's "
                                  "per-weight rescaling)."),
    batch_size: int = typer.Option(32, help="Pairs per update."),
    num_candidates: int = typer.Option(4, help="K (PG / MRT draw K + 1 samples per input)."),
    beta: float = typer.Option(100.0, help="MGS β."),
    candidate_scale: float = typer.Option(1.0, help="MGS candidate step scale c (1.0 = reference)."),
    noise: float = typer.Option(1.0, help="MGS noise multiplier: σ_j = noise × mean |g_j| per tensor (1.0 = "
                                "reference)."),
    mle_mix: float = typer.Option(0.0, help="α: probability of an MLE update."),
    parameters: str = typer.Option("", help="Parameter name patterns to train, comma-separated (empty: all)."),
    zero_candidate: bool = typer.Option(False, help="Add the current model (ε = 0) to MGS's candidates."),
    candidate_batch: int = typer.Option(0, help="MGS candidates decoded together in one pass when the subset "
                                        "is in the output layer (0: all K; 1: one at a time, in place). Extra "
                                        "memory: that many copies of the subset."),
    train_limit: int = typer.Option(2000, help="First N training pairs (0: all)."),
    eval_limit: int = typer.Option(300, help="First N dev / test pairs (0: all)."),
    seed: int = typer.Option(0, help="Seed of a single run."),
    resume: bool = typer.Option(False, help="Continue an interrupted single run from its checkpoint."),
    max_minutes: Optional[float] = typer.Option(None, help="Time budget of a run (with --compare: of every "
                                                "run, equal wall-clock; --steps is then only a cap)."),
    clock: str = typer.Option("wall", help="What --max-minutes counts: wall, or process (CPU seconds of this "
                              "process: equal compute on a loaded machine)."),
    threads: int = typer.Option(2, help="torch threads on a CPU."),
    output: Optional[Path] = typer.Option(None, help="Write the result JSON here (metrics/...)."),
):
    """Fine-tune a kx_generator decoder on a sequence-level task loss (MGS, PG, MRT or MLE)."""
    import torch

    from ..generation.corpus import read_pairs
    from ..generation.mgs import MGSConfig

    torch.set_num_threads(threads)
    train_pairs = read_pairs(train, limit=train_limit)
    overrides = _overrides(num_candidates, beta, candidate_scale, mle_mix, parameters, zero_candidate,
                           candidate_batch, noise)
    if compare:
        from ..generation.mgs_generator import compare_generator_methods

        if test is None:
            raise typer.BadParameter("--compare needs --test pairs")

        def show(row):
            cost = (f" | {row['cost_updates']:.0f} updates, {row['cost_wall_per_update']:.2f} s/update, "
                    f"{row['cost_passes']:.1f} passes, {row['cost_model_copies']:.2f} copies"
                    if "cost_updates" in row else "")
            typer.echo(f"{row['method']:<6} seed {row['seed']:>2} task_loss {row['task_loss']:.4f} "
                       f"chrF {row.get('chrf', float('nan')):.4f} ppl {row['perplexity']:.3f} r_L {row['r_L']:.3f}"
                       + cost)

        result = compare_generator_methods(
            model, train_pairs, read_pairs(test, limit=eval_limit), output_dir,
            methods=[m for m in methods.split(",") if m.strip()], seeds=[int(s) for s in seeds.split(",")],
            task_loss=task_loss, steps=steps, max_minutes=max_minutes, clock=clock, lr=lr, optimizer=optimizer,
            batch_size=batch_size,
            config_overrides=overrides, progress=show,
        )
        typer.echo(_generator_tables(result["summary"]))
    else:
        from ..generation.mgs_generator import finetune_generator

        result = finetune_generator(
            model, train_pairs, output_dir, config=MGSConfig(method=method, seed=seed, **overrides),
            task_loss=task_loss, dev_pairs=read_pairs(dev, limit=eval_limit) if dev else None, steps=steps,
            lr=lr, optimizer=optimizer, batch_size=batch_size, seed=seed, resume=resume, max_minutes=max_minutes, clock=clock,
            eval_every=max(1, steps // 4) if dev else 0,
        )
        cost = result["cost"]
        typer.echo(f"{result['updates']} updates in {result['wall_seconds']:.1f}s; per update: "
                   f"{cost['decodes']:.1f} decodes in {cost['passes']:.1f} decoder passes, "
                   f"{cost['wall_per_update']:.3f}s; extra memory {result['extra_bytes_per_update'] / 1e6:.2f} MB "
                   f"({cost['model_copies']:.2f} decoder copies held), peak RSS {cost['peak_rss_mb']:.0f} MB "
                   f"-> {result['model']}")
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")
        typer.echo(f"-> {output}")
