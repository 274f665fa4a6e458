"""Atomic checkpoints, resume, and the configuration identity a resumed run must match.

A checkpoint is a folder ``<dir>/checkpoint/`` holding ``state.pt`` and ``identity.json``. It is
written to ``<dir>/.checkpoint.tmp/`` first and renamed into place, so a run killed at any
moment leaves either the previous complete checkpoint or the new one; the temporary folder of a
killed write is removed by the next save or load.

The identity is a JSON-able dict of what decides the meaning of the weights (model shape,
vocabulary, the training data). Describe files with :func:`file_identity` (resolved path, size
and SHA-256) so the same file given by a relative or an absolute path is the same identity.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from .errors import CheckpointMismatchError

CHECKPOINT_NAME = "checkpoint"
STATE_FILE = "state.pt"
IDENTITY_FILE = "identity.json"


def file_identity(path: Union[str, Path]) -> Dict[str, Any]:
    """What identifies a data file: its resolved path, size and SHA-256 digest.

    path (Union[str, Path]): the file (relative paths are resolved against the working folder).
    RETURNS (Dict[str, Any]): ``{"path": ..., "size": ..., "sha256": ...}``.
    """
    p = Path(path).expanduser().resolve()
    digest = hashlib.sha256()
    with p.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"path": str(p), "size": p.stat().st_size, "sha256": digest.hexdigest()}


def normalize_identity(identity: Dict) -> Dict:
    """``identity`` as plain JSON values (tuples → lists, paths → strings), keys sorted."""
    return json.loads(json.dumps(identity or {}, sort_keys=True, default=str))


def identity_diff(saved: Any, current: Any, prefix: str = "") -> List[str]:
    """The settings that differ, one ``key: checkpoint … ≠ now …`` line each."""
    if isinstance(saved, dict) and isinstance(current, dict):
        out: List[str] = []
        for k in sorted(set(saved) | set(current)):
            out += identity_diff(saved.get(k), current.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(saved, list) and isinstance(current, list) and len(saved) == len(current):
        return [d for i, (a, b) in enumerate(zip(saved, current)) for d in identity_diff(a, b, f"{prefix}.{i}")]
    return [] if saved == current else [f"{prefix or '(identity)'}: checkpoint {saved!r} ≠ now {current!r}"]


def check_identity(saved: Dict, current: Dict, where: Union[str, Path]) -> None:
    """Raise :class:`CheckpointMismatchError` naming every key where ``saved`` and ``current`` differ."""
    diffs = identity_diff(normalize_identity(saved), normalize_identity(current))
    if diffs:
        raise CheckpointMismatchError(
            f"Cannot resume from {where}: it was written under a different configuration:\n  "
            + "\n  ".join(diffs[:20])
            + ("\n  …" if len(diffs) > 20 else "")
            + "\nUse the original config and data, or start afresh in a new output / checkpoint folder."
        )


def _clean(ckpt_dir: Path) -> None:
    tmp = ckpt_dir / f".{CHECKPOINT_NAME}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    old = ckpt_dir / f".{CHECKPOINT_NAME}.old"
    if old.exists():
        if not (ckpt_dir / CHECKPOINT_NAME / STATE_FILE).exists():
            # killed between the two renames: the old one is the last complete checkpoint
            if (ckpt_dir / CHECKPOINT_NAME).exists():
                shutil.rmtree(ckpt_dir / CHECKPOINT_NAME)
            os.replace(old, ckpt_dir / CHECKPOINT_NAME)
        else:
            shutil.rmtree(old)


def save_checkpoint(ckpt_dir: Union[str, Path], state: Dict, identity: Optional[Dict] = None) -> Path:
    """Write ``state`` (anything ``torch.save`` takes) and ``identity`` as one atomic checkpoint.

    ckpt_dir (Union[str, Path]): the folder that holds the ``checkpoint/`` folder.
    state (Dict): the training state.
    identity (Optional[Dict]): the configuration identity (see the module docstring).
    RETURNS (Path): the checkpoint folder.
    """
    import torch

    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    _clean(ckpt_dir)
    tmp = ckpt_dir / f".{CHECKPOINT_NAME}.tmp"
    tmp.mkdir()
    torch.save(state, tmp / STATE_FILE)
    (tmp / IDENTITY_FILE).write_text(json.dumps(normalize_identity(identity), indent=1, ensure_ascii=False),
                                     encoding="utf-8")
    final, old = ckpt_dir / CHECKPOINT_NAME, ckpt_dir / f".{CHECKPOINT_NAME}.old"
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)
    return final


def has_checkpoint(ckpt_dir: Union[str, Path]) -> bool:
    """True when ``ckpt_dir`` holds a complete checkpoint (also one left mid-rename)."""
    ckpt_dir = Path(ckpt_dir)
    return any((ckpt_dir / name / STATE_FILE).exists() for name in (CHECKPOINT_NAME, f".{CHECKPOINT_NAME}.old"))


def load_checkpoint(ckpt_dir: Union[str, Path], identity: Optional[Dict] = None) -> Optional[Dict]:
    """The saved state, or None when there is no complete checkpoint.

    ckpt_dir (Union[str, Path]): the folder given to :func:`save_checkpoint`.
    identity (Optional[Dict]): when given, the saved identity must equal it
        (else :class:`CheckpointMismatchError` lists the differing keys).
    RETURNS (Optional[Dict]): the state.
    """
    import torch

    ckpt_dir = Path(ckpt_dir)
    if not has_checkpoint(ckpt_dir):
        return None
    _clean(ckpt_dir)
    final = ckpt_dir / CHECKPOINT_NAME
    if identity is not None:
        saved = json.loads((final / IDENTITY_FILE).read_text(encoding="utf-8"))
        check_identity(saved, identity, ckpt_dir)
    return torch.load(final / STATE_FILE, map_location="cpu", weights_only=False)


def remove_checkpoint(ckpt_dir: Union[str, Path]) -> None:
    """Delete the checkpoint folders (complete or not) in ``ckpt_dir``."""
    for name in (CHECKPOINT_NAME, f".{CHECKPOINT_NAME}.tmp", f".{CHECKPOINT_NAME}.old"):
        path = Path(ckpt_dir) / name
        if path.exists():
            shutil.rmtree(path)


def replace_dir(tmp_dir: Union[str, Path], final_dir: Union[str, Path]) -> None:
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
