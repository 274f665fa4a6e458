"""Periodic training checkpoints, ``--resume``, and atomic writes of outputs."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, Optional

from .errors import CheckpointMismatchError

CHECKPOINT_FILE = "checkpoint.pt"
# Settings that decide the shape / meaning of the weights: a checkpoint made under other values
# cannot be resumed. Training settings (steps, learning rate…) may change between runs.
IDENTITY_SECTIONS = ("model", "vocab")
IDENTITY_TRAINING_KEYS = ("max_length",)


def config_identity(config: Dict) -> Dict:
    """The part of a pretraining config that a checkpoint must match to be resumed."""
    ident = {k: config.get(k, {}) for k in IDENTITY_SECTIONS}
    ident["training"] = {k: config.get("training", {}).get(k) for k in IDENTITY_TRAINING_KEYS}
    ident["corpus_sources"] = config.get("corpus", {}).get("sources", {})
    return json.loads(json.dumps(ident, sort_keys=True, default=str))


def identity_hash(identity: Dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def _diff(a: Any, b: Any, prefix: str = "") -> list:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if a == b else [f"{prefix}: checkpoint {a!r} ≠ config {b!r}"]


def check_identity(saved: Dict, current: Dict, path: Path) -> None:
    """Raise CheckpointMismatchError listing the settings that differ."""
    diffs = _diff(saved, current)
    if diffs:
        raise CheckpointMismatchError(
            f"Cannot resume from {path}: it was written under a different configuration:\n  "
            + "\n  ".join(diffs[:20])
            + "\nUse the original config, or start afresh in a new output / checkpoint folder."
        )


def save_checkpoint(ckpt_dir: Path, state: Dict) -> Path:
    """Write ``state`` to ``ckpt_dir/checkpoint.pt`` atomically (temp file + rename)."""
    import torch

    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / CHECKPOINT_FILE
    tmp = ckpt_dir / (CHECKPOINT_FILE + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, final)
    return final


def load_checkpoint(ckpt_dir: Path) -> Optional[Dict]:
    """The saved state, or None when there is no checkpoint."""
    import torch

    path = Path(ckpt_dir) / CHECKPOINT_FILE
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


def replace_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Move a finished ``tmp_dir`` to ``final_dir``, replacing an older folder there."""
    final_dir = Path(final_dir)
    old = None
    if final_dir.exists():
        old = final_dir.with_name(final_dir.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final_dir, old)
    os.replace(tmp_dir, final_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
