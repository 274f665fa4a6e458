"""Linear-attention commands: bench-attention (and the LM / clipping runs, see project.yml)."""
from pathlib import Path
from typing import Optional

import typer

from . import app


def _ints(text: Optional[str]):
    return None if not text else [int(x) for x in text.split(",") if x.strip()]


@app.command("bench-attention")
def bench_attention_cli(
    output_dir: Path = typer.Option(Path("metrics"), help="Folder for the JSON, table and PNG."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    max_t: int = typer.Option(0, help="Longest sequence length (0: 8192 on CPU, 65536 on GPU)."),
    min_t: int = typer.Option(0, help="Shortest sequence length (0: 128 on CPU, 512 on GPU)."),
    lengths: Optional[str] = typer.Option(None, help="Comma-separated lengths (overrides min/max)."),
    dtype: Optional[str] = typer.Option(None, help="float32 / bfloat16 / float16 (default fp32 CPU, bf16 GPU)."),
    chunk_size: int = typer.Option(64, help="Chunk length of the causal form."),
    threads: int = typer.Option(1, help="torch CPU threads (1 on a shared machine: OpenMP threads stall under load)."),
    memory: bool = typer.Option(True, help="Measure peak memory (CPU: a subprocess per point)."),
    decode_positions: Optional[str] = typer.Option(None, help="Comma-separated decoding positions ('' or 0: skip)."),
    decode_max: int = typer.Option(8192, help="Last decoding position (the default positions up to it)."),
    budget: float = typer.Option(1.0, help="Seconds per timing (median of up to 5 calls)."),
    stem: str = typer.Option("", help="Output file stem (default bench_attention_<device>)."),
    method_max_t: str = typer.Option("", help="Longest T per method, e.g. 'sdpa_noncausal=4096,kx_causal_loop=2048'."),
    memory_max_t: int = typer.Option(0, help="Measure peak memory only up to this T (0: all)."),
    interleaved_t: int = typer.Option(0, help="CPU: instead, time kx causal and SDPA causal in turns at this T "
                                              "(CPU and wall seconds, --repeats rounds) into <stem>.json."),
    repeats: int = typer.Option(3, help="Rounds of --interleaved-t."),
):
    """Time kx linear attention (causal, non-causal) against torch SDPA (and fla), fwd and fwd+bwd,
    with peak memory, and decoding latency of the recurrent form against a KV-cache softmax."""
    from ..models.attention_benchmark import (CPU_LENGTHS, DECODE_POSITIONS, GPU_LENGTHS, format_table,
                                              interleaved_ratio, run_attention_benchmark, save_benchmark)

    if interleaved_t:
        import json

        if device != "cpu":
            raise typer.BadParameter("--interleaved-t times the CPU (process clock) only", param_hint="--device")
        res = interleaved_ratio(interleaved_t, repeats, chunk_size=chunk_size, threads=threads, progress=typer.echo)
        output_dir.mkdir(parents=True, exist_ok=True)
        path = output_dir / f"{stem or f'bench_attention_interleaved_{interleaved_t}'}.json"
        path.write_text(json.dumps(res, indent=1))
        for key, value in res["sdpa_over_kx"].items():
            typer.echo(f"SDPA / kx {key}: {value:.2f}")
        typer.echo(f"json: {path}")
        return

    ts = _ints(lengths)
    if ts is None:
        base = GPU_LENGTHS if device == "cuda" else CPU_LENGTHS
        hi = max_t or base[-1]
        lo = min_t or base[0]
        ts = [t for t in base if lo <= t <= hi] or [hi]
    if decode_positions is not None:
        positions = [p for p in _ints(decode_positions) or [] if p > 0]
    else:
        positions = [p for p in DECODE_POSITIONS if p <= decode_max]
    import json

    limits = {k.strip(): int(v) for k, v in (p.split("=") for p in method_max_t.split(",") if p.strip())}
    stem = stem or f"bench_attention_{device}"
    output_dir.mkdir(parents=True, exist_ok=True)
    partial = output_dir / f"{stem}.partial.json"
    result = run_attention_benchmark(
        device, ts, dtype=dtype, chunk_size=chunk_size, threads=threads, memory=memory,
        decode_positions=positions, budget_s=budget, progress=typer.echo, method_max_t=limits,
        memory_max_t=memory_max_t, checkpoint=lambda r: partial.write_text(json.dumps(r, indent=1)),
    )
    paths = save_benchmark(result, output_dir, stem)
    partial.unlink(missing_ok=True)
    typer.echo("")
    typer.echo(format_table(result))
    for kind, path in paths.items():
        typer.echo(f"{kind}: {path}")


def _overrides(ctx: typer.Context):
    from spacy.cli._util import parse_config_overrides

    return parse_config_overrides(ctx.args)


@app.command("train-linear-attention-lm",
             context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train_linear_attention_lm_cli(
    ctx: typer.Context,
    config: Path = typer.Argument(..., help="configs/linear_attention/lm_{cpu,gpu}.cfg"),
    output_dir: Path = typer.Argument(..., help="The engine's folder (checkpoint, metrics.jsonl)."),
    metrics: Path = typer.Option(None, help="Summary JSON (validation loss, bits/char)."),
    data_dir: Optional[Path] = typer.Option(None, help="Data folder: reads <data_dir>/tinyshakespeare/input.txt."),
    resume: bool = typer.Option(False, help="Continue from the checkpoint in output_dir."),
):
    """Train the causal character LM (linear attention or, with --model.attention softmax, its twin)."""
    from ..lm.char_lm import load_lm_config, train_char_lm

    overrides = _overrides(ctx)
    if data_dir is not None:
        overrides.setdefault("paths.text", str(data_dir / "tinyshakespeare" / "input.txt"))
    cfg = load_lm_config(config, overrides)
    s = train_char_lm(cfg, output_dir, metrics, resume=resume)
    typer.echo(f"{s['attention']}: val loss {s['val_loss']:.4f}  bits/char {s['val_bits_per_char']:.4f}  "
               f"steps {s['steps']}  {s['elapsed_s']:.0f} s ({s['stopped_by']})")


@app.command("bench-clipping", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench_clipping_cli(
    ctx: typer.Context,
    config: Path = typer.Argument(..., help="configs/linear_attention/clipping_cpu.cfg"),
    output_dir: Path = typer.Argument(..., help="Engine folders, one per mode, below this."),
    metrics_dir: Path = typer.Option(Path("metrics"), help="Folder for bench_clipping.{json,txt,png}."),
    data_dir: Optional[Path] = typer.Option(None, help="Data folder: reads <data_dir>/tinyshakespeare/input.txt."),
    modes: str = typer.Option("none,per_array,global_norm,smooth", help="Comma-separated clipping modes."),
    target_loss: float = typer.Option(3.2, help="Validation loss whose first reaching step is reported."),
):
    """No clipping / per-array / global-norm / smooth clipping at a large LR, same seed and budget."""
    from ..lm.char_lm import load_lm_config
    from ..lm.clipping_bench import format_clipping_table, run_clipping_bench, save_clipping

    overrides = _overrides(ctx)
    if data_dir is not None:
        overrides.setdefault("paths.text", str(data_dir / "tinyshakespeare" / "input.txt"))
    cfg = load_lm_config(config, overrides)
    result = run_clipping_bench(cfg, output_dir, modes=[m for m in modes.split(",") if m], target_loss=target_loss)
    paths = save_clipping(result, metrics_dir)
    typer.echo(format_clipping_table(result))
    for p in paths:
        typer.echo(str(p))
