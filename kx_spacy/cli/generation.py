"""Generator workflow commands: prepare-generator, evaluate-generator, bench-decode.

Training itself is ``python -m spacy train configs/generator/<config>.cfg`` with the corpora
and base pipeline that ``prepare-generator`` writes (see project.yml, "generation commands").
The work is in ``kx_spacy.generation.workflow``.
"""
import json
from pathlib import Path
from typing import Optional

import typer

from . import app


@app.command("prepare-generator")
def prepare_generator_cli(
    dataset: str = typer.Argument(..., help="couplets or agnews."),
    output_dir: Path = typer.Argument(..., help="Folder for <dataset>_{train,dev,test}.tsv."),
    base: Path = typer.Argument(..., help="Folder to save the transformer-only base pipeline to."),
    encoder: Optional[str] = typer.Option(None, help="Encoder path / HF name (default: the character MLM for couplets, MiniLM for agnews)."),
    data_dir: str = typer.Option("../shared/data", help="Data folder."),
    seed: int = typer.Option(0, help="Seed of the split."),
):
    """Write source<TAB>target corpora and the base pipeline the CPU configs source."""
    from ..encoders import chinese_encoder_path, english_encoder_path
    from ..generation.workflow import build_base_pipeline, prepare_agnews, prepare_couplets

    if dataset == "couplets":
        counts = prepare_couplets(data_dir, output_dir, seed=seed)
        lang, name = "zh", chinese_encoder_path(encoder)
    elif dataset == "agnews":
        counts = prepare_agnews(data_dir, output_dir, seed=seed)
        lang, name = "en", english_encoder_path(encoder)
    else:
        raise typer.BadParameter("dataset must be 'couplets' or 'agnews'")
    typer.echo(f"{dataset}: {counts} -> {output_dir}")
    build_base_pipeline(lang, name, base)
    typer.echo(f"base pipeline ({name}) -> {base}")


@app.command("evaluate-generator")
def evaluate_generator_cli(
    model: Path = typer.Argument(..., help="Trained pipeline (training/<run>/model-best)."),
    test: Path = typer.Argument(..., help="source<TAB>target test file."),
    train: Path = typer.Argument(..., help="source<TAB>target train file (unigram baseline)."),
    output: Path = typer.Option(Path("metrics/generator.json"), help="JSON file to write."),
    limit: int = typer.Option(500, help="Test pairs scored."),
    n_random: int = typer.Option(1000, help="Random-token sources for r_L."),
    rl_limit: int = typer.Option(200, help="Test sources for r_L."),
    seeds: int = typer.Option(10, help="Seeds per sampling mode."),
    max_l: int = typer.Option(1000, help="Largest L for r_L (the L list is 100, max_l and t*)."),
    bleu_tokenize: str = typer.Option("13a", help="sacrebleu BLEU tokenizer ('zh' for Chinese)."),
    prefix_length: int = typer.Option(10, help="Random target prefix length for r_L (0: none)."),
    threads: int = typer.Option(1, help="torch threads."),
):
    """Perplexity, chrF/BLEU vs baselines, and r_L for every decoding mode, to JSON."""
    import torch

    from ..generation.workflow import evaluate_generator, write_json

    torch.set_num_threads(threads)
    lengths = sorted({100, max_l}) if max_l >= 100 else [max_l]
    out = evaluate_generator(model, test, train, limit=limit, n_random=n_random, rl_limit=rl_limit,
                             seeds=seeds, lengths=lengths, bleu_tokenize=bleu_tokenize,
                             prefix_length=prefix_length)
    write_json(out, output)
    typer.echo(json.dumps({k: out[k] for k in ("output_layer", "t_star", "perplexity", "perplexity_counts", "greedy_test", "baselines")},
                          indent=1, ensure_ascii=False))
    for mode, rec in out["non_termination"].items():
        prefixed = rec.get("test_sources_random_prefix", {}).get("r")
        typer.echo(f"{mode:20s} test r_L {rec['test_sources']['r']}  random r_L {rec['random_sources']['r']}  "
                   f"random-prefix r_L {prefixed}  tok/s {rec['random_sources']['tokens_per_s']:.0f}")
    typer.echo(f"-> {output}")


@app.command("bench-decode")
def bench_decode_cli(
    output: Path = typer.Option(Path("metrics/bench_decode.json"), help="JSON file to write."),
    positions: str = typer.Option("64,256,1024,4096", help="Comma-separated positions."),
    d_model: int = typer.Option(256, help="Decoder width."),
    threads: int = typer.Option(1, help="torch threads."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
):
    """Per-token latency vs position: KV-cache softmax vs linear decoder; batched vs one-by-one."""
    import torch

    from ..generation.workflow import bench_batching, bench_decode, write_json

    torch.set_num_threads(threads)
    if device != "cpu":
        torch.set_default_device(device)
    pos = [int(p) for p in positions.split(",") if p.strip()]
    out = {"per_token_ms": bench_decode(positions=pos, d_model=d_model), "batching": bench_batching()}
    write_json(out, output)
    typer.echo(json.dumps(out, indent=1))


@app.command("export-generator")
def export_generator_cli(
    model: Path = typer.Argument(..., help="Trained pipeline (training/<run>/model-best)."),
    output: Path = typer.Argument(..., help="Folder to write (e.g. kx_spacy/assets/kx_gen_zh_couplets)."),
    command: str = typer.Option("", help="The project command that trained the pipeline (for the manifest)."),
    max_mb: float = typer.Option(5.0, help="Refuse to leave an export larger than this (MB)."),
):
    """A trained kx_generator as a small shippable folder (fp16 decoder, vocabulary, config)."""
    import shutil

    from ..generation.shipped import export_generator

    manifest = export_generator(model, output, source={"trained_by": command} if command else None)
    size = sum(manifest["bytes"].values()) / 1e6
    if size > max_mb:
        shutil.rmtree(output)
        raise typer.BadParameter(f"the export is {size:.2f} MB, over --max-mb {max_mb}: lower max_vocab or d_model")
    typer.echo(json.dumps(manifest, indent=1, ensure_ascii=False))
    typer.echo(f"{size:.2f} MB -> {output}")
