"""Corpus input and DocBin output in shards named by their input range.

A corpus is a text file: one document per line, either plain text or JSON lines (an object
with a text field; its other fields are kept in ``doc.user_data["kx_record"]``). It is cut into
shards of ``shard_size`` consecutive records; shard ``[start, end)`` is written to
``OUTPUT/<start>-<end>.spacy`` atomically (temporary file, then rename), so a shard file that
exists is complete, a rerun skips it, and a crashed writer leaves nothing behind that counts.
``index_corpus`` scans the file once for the byte offset of every shard, so any worker can
seek to its shard without reading the rest (the file must be reachable by every worker).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

from ..errors import KxError
from ..text import clean_text

SHARD_RE = re.compile(r"^(\d{9,})-(\d{9,})\.spacy$")
INDEX_NAME = "kx_annotate_index.json"


class AnnotateError(KxError):
    """The corpus, its shards or the annotation settings are not usable."""


@dataclass(frozen=True)
class Shard:
    """Records ``[start, end)`` of the corpus, beginning at byte ``offset``."""

    start: int
    end: int
    offset: int

    @property
    def name(self) -> str:
        return f"{self.start:09d}-{self.end:09d}.spacy"

    def to_dict(self) -> Dict:
        return {"start": self.start, "end": self.end, "offset": self.offset}


def detect_format(path: Path, fmt: str = "auto") -> str:
    """ "jsonl" or "text": ``fmt`` itself, or from the suffix (.jsonl / .json → jsonl)."""
    if fmt in ("jsonl", "text"):
        return fmt
    if fmt != "auto":
        raise AnnotateError(f"Unknown input format {fmt!r}: use auto, jsonl or text")
    return "jsonl" if Path(path).suffix.lower() in (".jsonl", ".json", ".ndjson") else "text"


def index_corpus(path: Path, shard_size: int) -> Tuple[List[Shard], int]:
    """Scan ``path`` once; RETURNS (the shards, the number of records).

    Every line is a record (an empty line is an empty document, so that record numbers are
    line numbers and docs in = docs out can be checked).
    """
    if shard_size < 1:
        raise AnnotateError(f"shard_size must be ≥ 1, got {shard_size}")
    path = Path(path)
    if not path.is_file():
        raise AnnotateError(f"Input corpus {path} does not exist")
    shards: List[Shard] = []
    n, offset, shard_start, shard_offset = 0, 0, 0, 0
    with path.open("rb") as f:
        for line in f:
            if n - shard_start == shard_size:
                shards.append(Shard(shard_start, n, shard_offset))
                shard_start, shard_offset = n, offset
            n += 1
            offset += len(line)
    if n > shard_start:
        shards.append(Shard(shard_start, n, shard_offset))
    return shards, n


def read_shard(path: Path, shard: Shard, fmt: str, text_key: str = "text",
               on_invalid: str = "error") -> Iterator[Tuple[str, Optional[Dict]]]:
    """Yield (text, record or None) for the records of ``shard``.

    Undecodable bytes are refused with the file and line that hold them; lone surrogates (which
    JSON escapes can carry and spaCy's tokenizer cannot take) are refused or, with
    ``on_invalid="replace"``, replaced by U+FFFD (:func:`kx_spacy.text.clean_text`).
    """
    with Path(path).open("rb") as f:
        f.seek(shard.offset)
        for i in range(shard.start, shard.end):
            raw = f.readline()
            lineno = i + 1
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise AnnotateError(f"{path}:{lineno}: not valid UTF-8 ({err.reason} at byte {err.start})") from err
            line = line.rstrip("\r\n")
            record = None
            if fmt == "jsonl":
                if not line.strip():
                    text = ""
                else:
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as err:
                        raise AnnotateError(f"{path}:{lineno}: not a JSON object ({err.msg})") from err
                    if not isinstance(record, dict) or not isinstance(record.get(text_key), str):
                        raise AnnotateError(f"{path}:{lineno}: expected an object with a string field {text_key!r}")
                    text = record.pop(text_key)
            else:
                text = line
            yield clean_text(text, where=str(path), line=lineno, on_invalid=on_invalid), record


def write_shard_atomic(docs, out_dir: Path, shard: Shard) -> Path:
    """Serialise ``docs`` (with user data) to ``out_dir/<shard.name>`` atomically."""
    from spacy.tokens import DocBin

    out_dir = Path(out_dir)
    db = DocBin(store_user_data=True, docs=docs)
    final = out_dir / shard.name
    tmp = out_dir / f".{shard.name}.{os.getpid()}.tmp"
    tmp.write_bytes(db.to_bytes())
    os.replace(tmp, final)
    return final


def finished_shards(out_dir: Path) -> Dict[Tuple[int, int], Path]:
    """The complete shard files in ``out_dir``, by (start, end)."""
    found = {}
    for p in Path(out_dir).glob("*.spacy"):
        m = SHARD_RE.match(p.name)
        if m:
            found[(int(m.group(1)), int(m.group(2)))] = p
    return found


def prepare_output(out_dir: Path, input_path: Path, shard_size: int, n_records: int, fmt: str) -> None:
    """Create ``out_dir`` and record what it holds; refuse to mix two corpora or shard sizes."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(".*.tmp"):
        stale.unlink(missing_ok=True)  # a writer that died before its rename
    identity = {"input": str(Path(input_path).resolve()), "input_bytes": Path(input_path).stat().st_size,
                "records": n_records, "shard_size": shard_size, "format": fmt}
    index = out_dir / INDEX_NAME
    if index.exists():
        saved = json.loads(index.read_text(encoding="utf8"))
        diffs = [f"{k}: {saved.get(k)!r} ≠ {v!r}" for k, v in identity.items() if saved.get(k) != v]
        if diffs:
            raise AnnotateError(f"{out_dir} holds shards of another run ({'; '.join(diffs)}): use a new output folder")
    else:
        tmp = index.with_name(index.name + ".tmp")
        tmp.write_text(json.dumps(identity, indent=2), encoding="utf8")
        os.replace(tmp, index)


def verify_output(out_dir: Path, shards: List[Shard]) -> int:
    """Check that the shards cover every record exactly once; RETURNS the number of docs.

    Raises AnnotateError naming the missing, unexpected or short shards.
    """
    from spacy.tokens import DocBin

    found = finished_shards(out_dir)
    expected = {(s.start, s.end) for s in shards}
    missing = sorted(expected - set(found))
    extra = sorted(set(found) - expected)
    if missing or extra:
        raise AnnotateError(f"Output {out_dir} is incomplete: missing shards {missing[:5]}, unexpected {extra[:5]}")
    total = 0
    for (start, end), path in sorted(found.items()):
        n = len(DocBin().from_bytes(path.read_bytes()))
        if n != end - start:
            raise AnnotateError(f"Shard {path.name} holds {n} docs, expected {end - start}")
        total += n
    return total
