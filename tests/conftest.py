"""Shared fixtures: tiny offline models, built once per test session."""
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_mlm_dir(tmp_path_factory):
    """A tiny random BertForMaskedLM + tokenizer folder (window 64 pieces)."""
    from kx_spacy.testing import make_tiny_mlm

    return make_tiny_mlm(tmp_path_factory.mktemp("tiny_mlm"))


@pytest.fixture(scope="session")
def tiny_nomask_dir(tmp_path_factory):
    """Like tiny_mlm_dir, but its tokenizer has no mask token."""
    from kx_spacy.testing import make_tiny_mlm

    return make_tiny_mlm(tmp_path_factory.mktemp("tiny_nomask"), with_mask_token=False)


@pytest.fixture
def en_nlp(tiny_mlm_dir):
    """A fresh English pipeline: blank('en') + transformer on the tiny model."""
    from kx_spacy.testing import make_pipeline

    return make_pipeline("en", tiny_mlm_dir)


@pytest.fixture
def zh_nlp(tiny_mlm_dir):
    """A fresh Chinese pipeline: blank('zh') (character tokens) + transformer."""
    from kx_spacy.testing import make_pipeline

    return make_pipeline("zh", tiny_mlm_dir)


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
