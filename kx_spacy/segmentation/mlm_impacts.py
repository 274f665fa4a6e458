"""The MLM-impacts teacher: Su's adjacent-pair perturbed-masking impacts of a character MLM,
scored through the shared-encoder engine (:func:`kx_spacy.perturbed.segmenter.adjacent_impacts`)
and cached per line text, keyed by the model's weights.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy

from .self_training import _rules


def mlm_scores(teach: Sequence[str], encoder: str, *, cache: Optional[Path] = None,
               progress: bool = False, batch_lines: int = 8) -> List[numpy.ndarray]:
    """Su's adjacent-pair impacts of a character MLM (``encoder``: HF name or path).

    cache (Path): an .npz file of impacts per line text for this encoder (its weights, for a
        local folder): lines already there are not scored again, new ones are added, so runs
        over overlapping lines share the work.
    """
    key = _encoder_key(encoder)
    known = _load_cache(cache, key) if cache is not None else {}
    todo = list(dict.fromkeys(t for t in teach if t not in known))
    if todo:
        from tqdm import tqdm

        from ..backbone import Backbone
        from ..perturbed.segmenter import adjacent_impacts
        from ..pipeline_builder import build_pipeline

        nlp = build_pipeline("zh", encoder, [])
        backbone = Backbone.from_nlp(nlp, "transformer")
        for i in tqdm(range(0, len(todo), batch_lines), desc="mlm teacher", unit="batch", disable=not progress):
            chunk = todo[i:i + batch_lines]
            pairs = [[r is None for r in _rules(t)] for t in chunk]
            known.update(zip(chunk, adjacent_impacts(backbone, [list(t) for t in chunk], pairs=pairs)))
        if cache is not None:
            _save_cache(cache, key, known)
    return [known[t] for t in teach]


def _encoder_key(encoder: str) -> str:
    """A local model folder: a digest of its files (a retrained model is another key);
    a hub name: the name."""
    import hashlib

    folder = Path(encoder)
    if not folder.is_dir():
        return encoder
    h = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        if f.is_file() and (f.suffix in (".json", ".txt", ".safetensors", ".bin")):
            h.update(f.name.encode("utf-8"))
            h.update(f.read_bytes())
    return "sha256:" + h.hexdigest()[:32]


def _load_cache(path: Path, encoder: str) -> Dict[str, numpy.ndarray]:
    if not path.exists():
        return {}
    data = numpy.load(path, allow_pickle=False)
    if "lines" not in data.files or str(data["encoder"]) != encoder:
        return {}  # another encoder, or an older cache format: score again
    flat, offs = data["flat"], data["offsets"]
    return {str(t): flat[offs[i]:offs[i + 1]] for i, t in enumerate(data["lines"])}


def _save_cache(path: Path, encoder: str, known: Dict[str, numpy.ndarray]) -> None:
    lines = list(known)
    offs = numpy.cumsum([0] + [len(known[t]) for t in lines])
    flat = numpy.concatenate([known[t] for t in lines]) if lines else numpy.zeros(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    numpy.savez(tmp, flat=flat, offsets=offs, lines=numpy.array(lines, dtype=str), encoder=encoder)
    tmp.replace(path)
