"""Tiny corpora and configs for the pretraining tests (no shared data, no network)."""
import random

import pytest

SENTS = [
    "我爱北京天安门", "今天天气很好", "服务态度非常好", "房间干净价格便宜", "外卖送餐速度很快",
    "电影非常精彩", "我们喜欢吃苹果", "中国人民银行", "南开大学研究生", "春风花鸟山水",
]


def write_corpus(path, n_lines=200, seed=0):
    rng = random.Random(seed)
    lines = ["".join(rng.sample(SENTS, 3)) for _ in range(n_lines)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def zh_corpus(tmp_path):
    return write_corpus(tmp_path / "zh.txt")


def tiny_config(**training):
    from kx_spacy.pretraining.config import load_config

    overrides = {
        "model.hidden_size": 32, "model.num_layers": 2, "model.num_heads": 2,
        "model.intermediate_size": 64, "model.max_position": 64,
        "training.max_length": 32, "training.batch_size": 8, "training.max_steps": 6,
        "training.warmup_steps": 2, "training.eval_every": 3, "training.eval_sequences": 8,
        "training.checkpoint_every": 3, "training.shuffle_buffer": 16, "training.lr": 0.003,
        "corpus.heldout_every": 10, "vocab.min_count": 1,
    }
    overrides.update({f"training.{k}": v for k, v in training.items()})
    return load_config(None, overrides)
