"""Every shipped config parses and validates, the GPU ones included (they cannot run here)."""
from pathlib import Path

import pytest
from spacy.language import Language
from spacy.util import load_config

from kx_spacy.pretraining.config import load_config as load_pretrain_config
from kx_spacy.pretraining.config import validate_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "pretrain").glob("*.cfg")), ids=lambda p: p.name)
def test_pretraining_configs_validate(path):
    cfg = load_pretrain_config(path, {"paths.data_dir": "/nonexistent"})
    validate_config(cfg)
    assert cfg["model"]["hidden_size"] % cfg["model"]["num_heads"] == 0


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "textcat").glob("*.cfg")), ids=lambda p: p.name)
def test_textcat_configs_name_known_factories(path):
    import spacy

    spacy.blank("en")  # loads the factories' entry points (transformer, kx_*)
    cfg = load_config(path, interpolate=False)
    pipeline = cfg["nlp"]["pipeline"]
    assert pipeline and set(pipeline) <= set(cfg["components"])
    for name in pipeline:
        component = cfg["components"][name]
        factory = component.get("factory")
        if factory is not None:  # sourced components come from a saved pipeline
            assert Language.has_factory(factory), (name, factory)
        else:
            assert "source" in component, name
