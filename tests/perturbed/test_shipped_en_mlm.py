"""The shipped English MLM (kx_spacy/assets/en_wp_mlm, made by `pretrain-mlm-en`)."""
import json

import pytest

from kx_spacy.encoders import ASSETS, english_encoder_path

SHIPPED = ASSETS / "en_wp_mlm"
pytestmark = pytest.mark.skipif(not (SHIPPED / "config.json").exists(), reason="no shipped English MLM")


def test_it_is_small_named_and_has_its_manifest():
    assert english_encoder_path("en_wp_mlm") == str(SHIPPED)
    total = sum(p.stat().st_size for p in SHIPPED.iterdir())
    assert total <= 10_000_000  # shipped inside the wheel: at most 10 MB
    manifest = json.loads((SHIPPED / "kx_pretrain_manifest.json").read_text(encoding="utf-8"))
    assert manifest["history"] and 0.0 < manifest["final"]["heldout_acc"] < 1.0
    assert json.loads((SHIPPED / "config.json").read_text())["torch_dtype"] == "float16"


def test_kx_parser_runs_on_it():
    from kx_spacy.perturbed.trees import is_tree
    from kx_spacy.pipeline_builder import build_pipeline

    nlp = build_pipeline("en", english_encoder_path("en_wp_mlm"))
    nlp.add_pipe("kx_parser")
    doc = nlp("The quick brown fox jumps over the lazy dog .")
    local = [-1] + [0 if t.head.i == t.i else t.head.i + 1 for t in doc]
    assert is_tree(local)
    assert doc._.kx_parse["root_strategy"] == "lexical-en"  # the language-aware default, English weights
