"""Build the pipelines that the workflow saves and packages.

``build_pipeline`` makes a blank pipeline around one transformer (`kx_spacy build-pipeline`).
``assemble_pipeline`` puts trained components from several trained pipelines together into one
pipeline with ONE transformer (`kx_spacy assemble-pipeline`, what the package commands run):
spaCy's ``source`` mechanism (a config whose components say ``source = <pipeline>``), and two
checks that make sourcing safe: every listening component is attached to the new pipeline's
transformer, and that transformer is the one each sourced listener was trained on (same
weights, same span and tokenizer settings: the training configs freeze the encoder, so a
component's encoder is its base pipeline's).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable, List, Optional, Union


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


def listener_upstreams(proc) -> List[str]:
    """Names of the transformers a component's listeners name as upstream ("*" = any)."""
    from spacy_transformers.layers import TransformerListener

    model = getattr(proc, "model", None)
    if model is None or not hasattr(model, "walk"):
        return []
    return [node.upstream_name for node in model.walk() if isinstance(node, TransformerListener)]


def check_listeners(nlp) -> Dict[str, str]:
    """Every listening component is attached to a transformer pipe before it.

    RETURNS (Dict[str, str]): listening component -> the transformer it listens to.
    Raises PipelineAssemblyError for a listener attached to none, or to more than one.
    """
    from spacy_transformers import Transformer
    from spacy_transformers.layers import TransformerListener

    from .errors import PipelineAssemblyError

    attached: Dict[str, str] = {}
    for name, proc in nlp.pipeline:
        if not listener_upstreams(proc):
            continue
        owners = []
        for node in proc.model.walk():
            if isinstance(node, TransformerListener):
                owners = [t for t, pipe in nlp.pipeline if isinstance(pipe, Transformer)
                          and any(node is listener for listener in pipe.listener_map.get(name, []))]
                if len(owners) != 1:
                    raise PipelineAssemblyError(
                        f"The listener of '{name}' is attached to {len(owners)} transformer pipes "
                        f"({owners or 'none'}); it needs exactly one before it in the pipeline."
                    )
        attached[name] = owners[0]
    return attached


def _transformer_signature(nlp, name: str) -> dict:
    """What a listener's outputs depend on: settings (but the model's name or path) and weights."""
    config = nlp.config.interpolate()["components"][name]
    model = {k: v for k, v in config["model"].items() if k != "name"}
    # the pooler never reaches a listener (it reads the last hidden states) and is freshly
    # initialised whenever the checkpoint has none (an MLM's): not part of the signature
    state = {k: v for k, v in nlp.get_pipe(name).model.transformer.state_dict().items() if not k.startswith("pooler.")}
    return {"config": model, "state": state, "vocab": nlp.get_pipe(name).model.tokenizer.get_vocab()}


def _same_transformer(a: dict, b: dict) -> Optional[str]:
    """None if the two signatures agree, else what differs."""
    import torch

    if a["config"] != b["config"]:
        return f"settings {a['config']} vs {b['config']}"
    if a["vocab"] != b["vocab"]:
        return "tokenizer vocabularies"
    if a["state"].keys() != b["state"].keys():
        return "parameter names"
    for key, value in a["state"].items():
        if not torch.equal(value, b["state"][key]):
            return f"weights ({key})"
    return None


def assemble_pipeline(config_path: Union[str, Path], overrides: Optional[Dict[str, object]] = None):
    """Build a pipeline from an assembly config (``spacy assemble`` semantics), checked.

    Sourced components keep their trained weights; the others are initialised. Then every
    listener must be attached to the pipeline's transformer, and each sourced listening
    component's source pipeline must hold the same transformer (settings, vocabulary, weights)
    as the new pipeline: else the component would read vectors it was not trained on.

    config_path (str / Path): the assembly config (e.g. configs/package/en_kx_demo.cfg).
    overrides (Dict[str, object]): config overrides, e.g. {"paths.textcat": "training/..."}.
    RETURNS (Language): the assembled pipeline.
    """
    import spacy
    from spacy import util

    from .errors import PipelineAssemblyError

    config = util.load_config(config_path, overrides=overrides or {}, interpolate=False)
    resolved = config.interpolate()
    sourced = util.get_sourced_components(resolved)
    for name, settings in sourced.items():
        source = Path(str(settings["source"]))
        if not (source / "config.cfg").exists():
            raise PipelineAssemblyError(
                f"Component '{name}' is sourced from {source}, which is not a saved pipeline "
                f"(no config.cfg): train it first or point the config's paths at one."
            )
    nlp = util.load_model_from_config(config, auto_fill=True)
    with nlp.select_pipes(disable=list(sourced)):
        nlp.initialize()
    nlp._link_components()  # as `spacy assemble` does: initialize linked the enabled pipes only
    attached = check_listeners(nlp)
    for name, trf in attached.items():
        if name not in sourced:
            continue
        source = str(sourced[name]["source"])
        source_trf = sourced[name].get("component", name)
        if str(sourced.get(trf, {}).get("source")) == source:
            continue  # the transformer comes from the same trained pipeline (then its listener is this one's)
        src = spacy.load(source)
        upstream = [t for t, pipe in src.pipeline if source_trf in getattr(pipe, "listening_components", [])]
        if len(upstream) != 1:
            raise PipelineAssemblyError(f"'{source_trf}' in {source} listens to {upstream or 'no transformer'}.")
        diff = _same_transformer(_transformer_signature(nlp, trf), _transformer_signature(src, upstream[0]))
        if diff is not None:
            raise PipelineAssemblyError(
                f"'{name}' (from {source}) was trained on a different encoder than this pipeline's "
                f"'{trf}' ({diff} differ): source the transformer from the same trained pipeline, "
                f"train every component on a frozen copy of one base pipeline, or give the component "
                f"its own encoder (replace_listeners in the config)."
            )
    return nlp


def assemble_and_save(
    config_path: Union[str, Path],
    output: Union[str, Path],
    *,
    name: str,
    version: str = "0.1.0",
    overrides: Optional[Dict[str, object]] = None,
) -> Path:
    """``assemble_pipeline`` then ``save_pipeline`` (meta: name, version, where each part came from)."""
    from spacy import util

    nlp = assemble_pipeline(config_path, overrides)
    config = util.load_config(config_path, overrides=overrides or {}, interpolate=True)
    nlp.meta["kx_sources"] = {k: str(v["source"]) for k, v in util.get_sourced_components(config).items()}
    return save_pipeline(nlp, output, name=name, version=version)
