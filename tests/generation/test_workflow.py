"""The generator's workflow functions and shipped configs, on tiny data (no shared data needed)."""
from pathlib import Path

import pytest
import spacy
import torch
from spacy.util import load_config

from kx_spacy.generation.corpus import pair_to_example, read_pairs
from kx_spacy.generation.workflow import (
    MODES,
    baselines,
    bench_batching,
    bench_decode,
    evaluate_generator,
    prepare_agnews,
    prepare_couplets,
)
from kx_spacy.testing import transformer_config

ROOT = Path(__file__).resolve().parents[2]
PAIRS = [("春天来了", "秋月明"), ("山水美丽", "花鸟快乐"), ("今天天气很好", "我爱中国"), ("北京", "南开")]


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "generator").glob("*.cfg")), ids=lambda p: p.name)
def test_generator_configs_build(path):
    cfg = load_config(path, interpolate=False)
    assert cfg["nlp"]["pipeline"] == ["transformer", "kx_generator"]
    assert cfg["components"]["transformer"]["source"] == "${paths.base}"
    nlp = spacy.blank(cfg["nlp"]["lang"])
    settings = {k: v for k, v in cfg["components"]["kx_generator"].items() if k != "factory"}
    settings["seed"] = 0
    pipe = nlp.add_pipe("kx_generator", config=settings)
    assert pipe.termination_bound().t_star == 693
    assert set(cfg["training"]["score_weights"]) == {"gen_chrf", "gen_bleu", "gen_exact", "gen_nonterm"}
    gpu = "gpu" in path.name
    assert (cfg["training"]["frozen_components"] == []) == gpu


def test_prepare_splits(tmp_path):
    data = tmp_path / "data"
    (data / "couplets").mkdir(parents=True)
    (data / "couplets" / "train_60k.tsv").write_text("".join(f"上{i}\t下{i}\n" for i in range(30)), encoding="utf8")
    (data / "couplets" / "test.tsv").write_text("风\t雨\n", encoding="utf8")
    counts = prepare_couplets(data, tmp_path / "out", n_dev=5)
    assert counts == {"train": 25, "dev": 5, "test": 1}
    train = read_pairs(tmp_path / "out" / "couplets_train.tsv")
    dev = read_pairs(tmp_path / "out" / "couplets_dev.tsv")
    assert not set(train) & set(dev)
    (data / "ag_news_test").mkdir()
    rows = "".join(f'"1","Title {i}","Some description\\number {i}."\n' for i in range(40)) + '"2","","empty"\n'
    (data / "ag_news_test" / "test.csv").write_text(rows, encoding="utf8")
    counts = prepare_agnews(data, tmp_path / "out")
    assert sum(counts.values()) == 40 and counts["test"] == 6
    source, target = read_pairs(tmp_path / "out" / "agnews_train.tsv")[0]
    assert target.startswith("Title") and "\\" not in source


def test_baselines():
    out = baselines([("a", "花花花"), ("b", "花草")], [("秋月", "秋月明")], target_tokenizer="char", bleu_tokenize="zh")
    assert out["copy_source"]["chrf"] > out["unigram"]["chrf"] == 0.0
    assert out["copy_source"]["exact"] == 0.0


def test_bench_decode_and_batching_run():
    out = bench_decode(positions=(4, 16), d_model=16, n_layers=1, n_heads=2, vocab=30, repeats=2)
    assert set(out["softmax"]) == set(out["linear"]) == {4, 16}
    batch = bench_batching(n=6, max_length=6, d_model=16, vocab=30)
    assert batch["ms_per_seq_batched"] > 0


@pytest.mark.slow
def test_evaluate_generator_end_to_end(tiny_mlm_dir, tmp_path):
    from thinc.api import Adam

    torch.manual_seed(0)
    nlp = spacy.blank("zh")
    nlp.add_pipe("transformer", config=transformer_config(str(tiny_mlm_dir)))
    nlp.add_pipe("kx_generator", config={
        "model": {"d_model": 32, "n_heads": 2, "n_layers": 1, "dropout": 0.0,
                  "output_layer": {"@misc": "kx_spacy.NonMonotonicSelfTerminatingOutput.v1", "epsilon": 0.3}},
        "max_length": 12})
    examples = [pair_to_example(nlp, s, t) for s, t in PAIRS]
    nlp.initialize(lambda: examples)
    opt = Adam(0.01)
    for _ in range(20):
        nlp.update(examples, sgd=opt)
    nlp.to_disk(tmp_path / "model")
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("".join(f"{s}\t{t}\n" for s, t in PAIRS), encoding="utf8")
    out = evaluate_generator(tmp_path / "model", pairs, pairs, limit=4, n_random=3, random_length=4, seeds=2,
                             lengths=(5, 10), rl_limit=4, bleu_tokenize="zh")
    assert out["t_star"] == 2 and out["perplexity"] > 1.0
    assert set(out["non_termination"]) == set(MODES)
    for mode, rec in out["non_termination"].items():
        for where in ("test_sources", "random_sources"):
            if mode in ("greedy", "beam4"):
                assert rec[where]["r"][2] == 0.0  # greedy / beam with NMST stop by t*
            assert rec[where]["r"][10] <= rec[where]["r"][5]
