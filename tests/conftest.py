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


@pytest.fixture(scope="session")
def all_cpu_run(tmp_path_factory, tiny_mlm_dir):
    """The all-cpu workflow, run once at CI size (tests/workflow_data.py): its outputs are
    checked by test_all_cpu_workflow.py and its two wheels by test_package.py."""
    from workflow_data import run_all_cpu_workflow

    return run_all_cpu_workflow(tmp_path_factory.mktemp("all_cpu"), tiny_mlm_dir)


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


# The all-cpu workflow run (fixture all_cpu_run) serves both modules: under pytest-xdist they are
# one work unit, first in line, since it is the longest one (~6 minutes on one core).
ALL_CPU_MODULES = ("test_all_cpu_workflow.py", "test_package.py")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`./run.sh test` (-n 2): a test module is one work unit, as with --dist loadfile, so module
    and session fixtures are built once per worker that needs them; the two all-cpu modules
    form one unit. (xdist's own loadgroup marks do not reach its scheduler under pytest 9.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "all_cpu" if module.rsplit("/", 1)[-1] in ALL_CPU_MODULES else module

    return ModuleScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    import torch

    items.sort(key=lambda item: item.path.name not in ALL_CPU_MODULES)  # stable: the rest keeps its order
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
