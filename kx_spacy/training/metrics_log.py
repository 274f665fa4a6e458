"""The metrics log: one JSON object per line (``"kind"``: "step", "eval", "bad_step", "end").

Written by rank 0 of every engine run (``<output_dir>/metrics.jsonl``); evaluation commands and
plots read it with :func:`read_metrics`.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

METRICS_FILE = "metrics.jsonl"


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "nan" / "inf": JSON has no such numbers
    return value


class MetricsLog:
    """Append records to a JSON-lines file (flushed on every write).

    path (Union[str, Path]): the file. enabled (bool): False makes every call a no-op (ranks > 0).
    """

    def __init__(self, path: Union[str, Path], enabled: bool = True):
        self.path, self.enabled = Path(path), enabled
        self._f = None

    def open(self, *, append: bool, keep_until_step: Optional[int] = None) -> "MetricsLog":
        """Start the log; on resume keep only the records up to ``keep_until_step``."""
        if not self.enabled:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if append and keep_until_step is not None and self.path.exists():
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= keep_until_step]
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept), encoding="utf-8")
            os.replace(tmp, self.path)
        self._f = self.path.open("a" if append else "w", encoding="utf-8")
        return self

    def write(self, kind: str, **fields: Any) -> None:
        """Append one record ``{"kind": kind, **fields}``."""
        if self._f is None:
            return
        record = {"kind": kind, **{k: _clean(v) for k, v in fields.items()}}
        self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def read_metrics(path: Union[str, Path], kind: Optional[str] = None) -> List[Dict[str, Any]]:
    """The records of a metrics log, in order (a torn last line of a killed run is skipped).

    path (Union[str, Path]): the ``metrics.jsonl`` file, or the run's output folder.
    kind (Optional[str]): keep only records of this kind ("step", "eval", "bad_step", "end").
    RETURNS (List[Dict[str, Any]]): the records.
    """
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if kind is None or record.get("kind") == kind:
            out.append(record)
    return out
