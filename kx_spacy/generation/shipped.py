"""Small trained generators shipped with the package, and how to add one to a pipeline.

Two generators live under ``kx_spacy/assets/`` (each a folder, fp16 weights):

* ``"zh_couplets"`` (``kx_gen_zh_couplets``): couplets, upper line -> lower line, over the
  shipped character MLM (``kx_spacy/assets/zh_char_mlm``); made by ``spacy project run
  train-generator`` then ``ship-generator-zh``.
* ``"en_titles"`` (``kx_gen_en_titles``): AG News description -> title, over the packaged
  MiniLM (``kx_spacy.encoders.minilm_path()``); made by ``train-generator-agnews`` then
  ``ship-generator-en``.

API:

* :func:`add_shipped_generator` ``(nlp, "zh_couplets" | "en_titles", *, transformer="transformer",
  name="kx_generator", path=None) -> Generator``: adds a ``kx_generator`` pipe after the
  pipeline's transformer pipe and loads the shipped weights. The transformer must be the one
  the generator was trained over (checked: hidden size and tokenizer vocabulary size); the
  encoder runs once, the generator reads ``doc._.trf_data``.
* :func:`export_generator` ``(model_path, output, ...)``: writes such a folder from a trained
  pipeline (``spacy train`` output): ``config.json`` (the pipe's config block), ``cfg.json``
  (target vocabulary and settings), ``decoder.safetensors`` (the decoder's weights in fp16)
  and ``manifest.json`` (encoder checks, sizes, where it came from).

A folder holds only the decoder and its vocabulary; the encoder is the pipeline's own.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

from ..errors import GeneratorConfigError, GeneratorVocabError, MissingTransformerError

ASSETS = Path(__file__).resolve().parent.parent / "assets"
SHIPPED = {
    "zh_couplets": {"folder": "kx_gen_zh_couplets", "lang": "zh", "made_by": "train-generator, ship-generator-zh"},
    "en_titles": {"folder": "kx_gen_en_titles", "lang": "en", "made_by": "train-generator-agnews, ship-generator-en"},
}
FILES = ("config.json", "cfg.json", "decoder.safetensors", "manifest.json")


def shipped_path(name: str) -> Path:
    """The asset folder of a shipped generator ("zh_couplets" or "en_titles")."""
    if name not in SHIPPED:
        raise GeneratorConfigError(f"Unknown shipped generator {name!r}; expected one of {sorted(SHIPPED)}.")
    return ASSETS / SHIPPED[name]["folder"]


def _encoder_facts(nlp, transformer: str) -> dict:
    from ..backbone import Backbone

    if transformer not in nlp.pipe_names:
        raise MissingTransformerError(
            f"The pipeline has no '{transformer}' pipe (pipes: {nlp.pipe_names}): a shipped generator reads "
            f"the states of the transformer it was trained over, so add that transformer first.")
    backbone = Backbone.from_nlp(nlp, transformer)
    return {"hidden_size": int(backbone.hidden_size), "tokenizer_size": int(len(backbone.tokenizer))}


def export_generator(model_path: Union[str, Path], output: Union[str, Path], *, name: str = "kx_generator",
                     transformer: str = "transformer", source: Optional[dict] = None) -> dict:
    """Write the shippable folder of the trained ``name`` pipe of the pipeline at ``model_path``.

    source (dict or None): extra facts for the manifest (e.g. the command that trained it).
    RETURNS (dict): the manifest (sizes included).
    """
    import spacy
    import torch
    from safetensors.torch import save_file

    nlp = spacy.load(model_path)
    if name not in nlp.pipe_names:
        raise GeneratorConfigError(f"{model_path} has no '{name}' pipe (pipes: {nlp.pipe_names}).")
    pipe = nlp.get_pipe(name)
    pipe._require_ready()
    config = dict(nlp.config.interpolate()["components"][name])
    config.pop("factory", None)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in pipe.decoder.state_dict().items()}
    save_file(state, str(output / "decoder.safetensors"))
    (output / "config.json").write_text(json.dumps(config, indent=1, ensure_ascii=False), encoding="utf8")
    (output / "cfg.json").write_text(json.dumps(pipe.cfg, ensure_ascii=False), encoding="utf8")
    bound = pipe.termination_bound()
    manifest = {
        "lang": nlp.lang,
        "encoder": {**_encoder_facts(nlp, transformer),
                    "name": Path(str(nlp.config["components"][transformer]["model"]["name"])).name},
        "output_layer": pipe.model.attrs["output_kind"], "epsilon": pipe.model.attrs["epsilon"],
        "t_star": bound.t_star, "attention": pipe.model.attrs["attention"],
        "target_vocab_size": len(pipe.target_vocab), "target_tokenizer": pipe.cfg["target_tokenizer"],
        "n_params": int(sum(v.numel() for v in state.values())), "dtype": "float16",
        "trained_pipeline": str(model_path), **(source or {}),
    }
    (output / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False), encoding="utf8")
    manifest["bytes"] = {f: (output / f).stat().st_size for f in FILES}
    return manifest


def add_shipped_generator(nlp, generator: str = "zh_couplets", *, transformer: str = "transformer",
                          name: str = "kx_generator", path: Union[str, Path, None] = None):
    """Add a shipped (or exported) kx_generator to ``nlp`` after its transformer pipe.

    nlp (Language): a pipeline holding the transformer the generator was trained over.
    generator (str): "zh_couplets" or "en_titles" (ignored when ``path`` is given).
    transformer (str): the transformer pipe's name.
    name (str): the new pipe's name.
    path (str, Path or None): a folder written by :func:`export_generator` instead of a
        shipped one.
    RETURNS (Generator): the added pipe, ready to generate.
    """
    import torch
    from safetensors.torch import load_file

    folder = Path(path) if path is not None else shipped_path(generator)
    missing = [f for f in FILES if not (folder / f).exists()]
    if missing:
        raise GeneratorVocabError(
            f"{folder} is not a kx_generator export (missing {missing}); remake it with "
            f"`spacy project run {SHIPPED.get(generator, {}).get('made_by', 'ship-generator-zh')}`.")
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf8"))
    if manifest.get("lang") and manifest["lang"] != nlp.lang:
        raise GeneratorConfigError(f"The generator in {folder} is for language {manifest['lang']!r}, the pipeline is {nlp.lang!r}.")
    facts = _encoder_facts(nlp, transformer)
    want = manifest["encoder"]
    for key in ("hidden_size", "tokenizer_size"):
        if facts[key] != want[key]:
            raise GeneratorConfigError(
                f"The '{transformer}' pipe does not match the encoder the generator in {folder} was trained over "
                f"({want.get('name')}): {key} {facts[key]} != {want[key]}.")
    if name in nlp.pipe_names:
        raise GeneratorConfigError(f"The pipeline already has a '{name}' pipe.")
    config = json.loads((folder / "config.json").read_text(encoding="utf8"))
    config["transformer"] = transformer
    pipe = nlp.add_pipe("kx_generator", name=name, config=config, after=transformer)
    pipe._load_cfg(json.loads((folder / "cfg.json").read_text(encoding="utf8")))
    state = {k: v.to(torch.float32) for k, v in load_file(str(folder / "decoder.safetensors")).items()}
    pipe.decoder.load_state_dict(state)
    pipe.decoder.eval()
    return pipe
