"""Build the small pipelines that the workflow saves and packages (`kx_spacy build-pipeline`)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable, Optional, Union


def build_pipeline(
    lang: str,
    encoder: str,
    components: Iterable[str] = (),
    *,
    configs: Optional[Dict[str, dict]] = None,
    window: int = 128,
    stride: int = 96,
):
    """A blank ``lang`` pipeline: the shared transformer on ``encoder`` plus kx components.

    lang (str): spaCy language code ("en", "zh", ...).
    encoder (str): HF name or path of the encoder ("minilm" = the packaged MiniLM).
    components (Iterable[str]): factories to add, in order. ``kx_segmenter`` goes before the
        transformer (it borrows its module but runs on characters first); the rest after.
    configs (Dict[str, dict]): per-factory config overrides.
    RETURNS (Language): the initialised pipeline.
    """
    import spacy

    from .encoders import english_encoder_path
    from .testing import transformer_config

    configs = configs or {}
    name = english_encoder_path(encoder) if lang == "en" else str(encoder)
    nlp = spacy.blank(lang)
    components = list(components)
    for factory in components:
        if factory == "kx_segmenter":
            nlp.add_pipe(factory, config=configs.get(factory, {}))
    nlp.add_pipe("transformer", config=transformer_config(name, window=window, stride=stride))
    for factory in components:
        if factory != "kx_segmenter":
            nlp.add_pipe(factory, config=configs.get(factory, {}))
    nlp.initialize()
    return nlp


def save_pipeline(nlp, output: Union[str, Path], *, name: str, version: str = "0.1.0") -> Path:
    """Save ``nlp`` with package metadata that ``spacy package`` reads."""
    from . import __version__

    nlp.meta["name"] = name
    nlp.meta["version"] = version
    nlp.meta["description"] = f"kx_spacy pipeline ({', '.join(nlp.pipe_names)})"
    nlp.meta.setdefault("requirements", [])
    output = Path(output)
    nlp.to_disk(output)
    return output
