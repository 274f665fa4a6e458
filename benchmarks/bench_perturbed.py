"""Perturbed-masking speed benchmark: the kx impact engine vs the official-style loop.

A thin entry for `python benchmarks/bench_perturbed.py ...`; the code lives in
``kx_spacy.cli.bench_perturbed`` (the same as `python -m kx_spacy bench-perturbed ...`, which
project.yml runs as `spacy project run bench-perturbed`). Examples:

    python benchmarks/bench_perturbed.py ../shared/data/ud/UD_English-EWT/en_ewt-ud-test.conllu --limit 20
    python benchmarks/bench_perturbed.py --random-bert-base --bf16 --limit 64 -o metrics/bench_perturbed_gpu.json
"""
import typer

from kx_spacy.cli.bench_perturbed import bench_perturbed_cli

if __name__ == "__main__":
    typer.run(bench_perturbed_cli)
