"""Benchmark kx_attributor: speed vs Captum, completeness vs steps, deletion curves (AOPC).

Same as ``python -m kx_spacy bench-attribution MODEL``; see kx_spacy/attribution/benchmark.py.
Example: python benchmarks/bench_attribution.py training/sst2_cpu/model-best --n-time 32
"""
from kx_spacy.cli import app

if __name__ == "__main__":
    import sys

    app(["bench-attribution", *sys.argv[1:]])
