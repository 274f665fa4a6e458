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
):
    """Time kx linear attention (causal, non-causal) against torch SDPA (and fla), fwd and fwd+bwd,
    with peak memory, and decoding latency of the recurrent form against a KV-cache softmax."""
    from ..models.attention_benchmark import (CPU_LENGTHS, DECODE_POSITIONS, GPU_LENGTHS, format_table,
                                              run_attention_benchmark, save_benchmark)

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
    result = run_attention_benchmark(
        device, ts, dtype=dtype, chunk_size=chunk_size, threads=threads, memory=memory,
        decode_positions=positions, budget_s=budget, progress=typer.echo,
    )
    paths = save_benchmark(result, output_dir, stem or f"bench_attention_{device}")
    typer.echo("")
    typer.echo(format_table(result))
    for kind, path in paths.items():
        typer.echo(f"{kind}: {path}")
