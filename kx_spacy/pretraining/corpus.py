"""Streaming raw-text corpora for MLM pretraining.

A corpus is a list of *sources*: a path or glob plus a reader that knows the file's format
(plain lines, a TSV/CSV text column, both sides of a couplet, CoNLL-U ``# text =`` lines).
Files are read line by line and never loaded whole. Every line is accounted for in a
:class:`CorpusStats`, which the manifest records.
"""
from __future__ import annotations

import csv
import glob
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from .errors import CorpusError, InvalidUTF8Error, PretrainConfigError

ON_INVALID = ("skip", "fail")


@dataclass
class FileStats:
    """What one file contributed: lines read, texts yielded, characters, bad lines."""

    path: str
    reader: str
    lines: int = 0
    texts: int = 0
    chars: int = 0
    invalid_lines: List[int] = field(default_factory=list)

    def to_dict(self) -> Dict:
        return {
            "path": self.path,
            "reader": self.reader,
            "lines": self.lines,
            "texts": self.texts,
            "chars": self.chars,
            "invalid_utf8_lines": len(self.invalid_lines),
            "first_invalid_lines": self.invalid_lines[:20],
        }


@dataclass
class CorpusStats:
    """Per-file statistics of one pass over a corpus."""

    files: Dict[str, FileStats] = field(default_factory=dict)

    def file(self, path: str, reader: str) -> FileStats:
        if path not in self.files:
            self.files[path] = FileStats(path, reader)
        return self.files[path]

    @property
    def chars(self) -> int:
        return sum(f.chars for f in self.files.values())

    @property
    def texts(self) -> int:
        return sum(f.texts for f in self.files.values())

    def to_dict(self) -> Dict:
        return {
            "files": [f.to_dict() for f in self.files.values()],
            "total_chars": self.chars,
            "total_texts": self.texts,
            "total_lines": sum(f.lines for f in self.files.values()),
        }


def _decoded_lines(path: Path, on_invalid: str, stats: FileStats) -> Iterator[Tuple[int, str]]:
    """Yield (1-based line number, text without newline), decoding each line separately."""
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            stats.lines += 1
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                if on_invalid == "fail":
                    from ..text import describe_bad_bytes

                    raise InvalidUTF8Error(
                        f"{path}:{lineno}: {describe_bad_bytes(raw, err).replace('line 1, ', '', 1)} "
                        "Or pass --on-invalid skip."
                    ) from None
                stats.invalid_lines.append(lineno)
                continue
            if lineno == 1 and text.startswith("\ufeff"):
                text = text[1:]
            yield lineno, text.rstrip("\r\n")


# ---- readers: (lines, options) -> texts ------------------------------------------------------

def _read_lines(lines: Iterable[Tuple[int, str]], opts: Dict) -> Iterator[str]:
    for _, line in lines:
        yield line


def _read_delimited(delimiter: str) -> Callable:
    def reader(lines: Iterable[Tuple[int, str]], opts: Dict) -> Iterator[str]:
        columns = opts.get("columns")
        if columns is None:
            raise PretrainConfigError(
                "A 'tsv'/'csv' source needs 'columns': the names or 0-based indexes of the text columns"
            )
        if isinstance(columns, (str, int)):
            columns = [columns]
        header = bool(opts.get("header", True))
        idx: Optional[List[int]] = None
        for i, (_, line) in enumerate(lines):
            row = line.split(delimiter)
            if i == 0 and header:
                try:
                    idx = [c if isinstance(c, int) else row.index(c) for c in columns]
                except ValueError:
                    raise PretrainConfigError(
                        f"Columns {columns} not all in the header {row}"
                    ) from None
                continue
            if idx is None:
                if not all(isinstance(c, int) for c in columns):
                    raise PretrainConfigError("Column names need header = true")
                idx = list(columns)
            for j in idx:
                if j < len(row):
                    yield row[j]
    return reader


def _read_conllu_text(lines: Iterable[Tuple[int, str]], opts: Dict) -> Iterator[str]:
    for _, line in lines:
        if line.startswith("# text ="):
            yield line[len("# text ="):].strip()


def _csv_rows(lines: Iterable[Tuple[int, str]]) -> Iterator[str]:
    # CSV fields may hold newlines: rebuild logical records from physical lines.
    for _, line in lines:
        yield line + "\n"


def _read_csv(lines: Iterable[Tuple[int, str]], opts: Dict) -> Iterator[str]:
    columns = opts.get("columns")
    if columns is None:
        raise PretrainConfigError("A 'csv' source needs 'columns'")
    if isinstance(columns, (str, int)):
        columns = [columns]
    header = bool(opts.get("header", True))
    idx = None
    for i, row in enumerate(csv.reader(_csv_rows(lines))):
        if i == 0 and header:
            try:
                idx = [c if isinstance(c, int) else row.index(c) for c in columns]
            except ValueError:
                raise PretrainConfigError(f"Columns {columns} not all in the header {row}") from None
            continue
        if idx is None:
            idx = [int(c) for c in columns]
        for j in idx:
            if j < len(row):
                yield row[j]


READERS: Dict[str, Callable] = {
    "lines": _read_lines,
    "tsv": _read_delimited("\t"),
    "csv": _read_csv,
    "conllu_text": _read_conllu_text,
}


@dataclass
class Source:
    """One corpus source: ``path`` (file or glob), ``reader`` and its options."""

    path: str
    reader: str = "lines"
    options: Dict = field(default_factory=dict)

    @classmethod
    def from_any(cls, spec) -> "Source":
        """Build from a dict (config section) or a string ``path`` / ``reader:path``."""
        if isinstance(spec, Source):
            return spec
        if isinstance(spec, str):
            reader, sep, path = spec.partition(":")
            if sep and reader in READERS:
                return cls(path=path, reader=reader)
            return cls(path=spec)
        if isinstance(spec, dict):
            spec = dict(spec)
            if "path" not in spec:
                raise PretrainConfigError(f"Corpus source {spec} has no 'path'")
            path = str(spec.pop("path"))
            reader = spec.pop("reader", "lines")
            return cls(path=path, reader=reader, options=spec)
        raise PretrainConfigError(f"Cannot read a corpus source from {spec!r}")

    def files(self) -> List[Path]:
        if self.reader not in READERS:
            raise PretrainConfigError(
                f"Unknown reader {self.reader!r} for {self.path}; known: {sorted(READERS)}"
            )
        if any(ch in self.path for ch in "*?["):
            found = sorted(Path(p) for p in glob.glob(self.path, recursive=True))
            found = [p for p in found if p.is_file()]
            if not found:
                raise CorpusError(f"The pattern {self.path!r} matches no file")
            return found
        p = Path(self.path)
        if not p.is_file():
            raise CorpusError(f"Corpus file {self.path!r} does not exist")
        return [p]


class Corpus:
    """A re-iterable stream of non-empty texts from several sources.

    sources (Sequence): :class:`Source` objects, config dicts or path strings.
    on_invalid (str): "skip" (count and skip lines with invalid UTF-8) or "fail".
    min_chars (int): texts shorter than this (after stripping) are dropped.
    """

    def __init__(self, sources: Sequence, *, on_invalid: str = "skip", min_chars: int = 1):
        if on_invalid not in ON_INVALID:
            raise PretrainConfigError(f"on_invalid must be one of {ON_INVALID}, got {on_invalid!r}")
        self.sources = [Source.from_any(s) for s in sources]
        if not self.sources:
            raise CorpusError("The corpus has no sources")
        self.on_invalid = on_invalid
        self.min_chars = max(1, int(min_chars))
        self.stats = CorpusStats()

    def check(self) -> None:
        """Fail early: every source must name existing, non-empty files."""
        for src in self.sources:
            for path in src.files():
                if path.stat().st_size == 0:
                    raise CorpusError(f"Corpus file {path} is empty")

    def iter_texts(self, stats: Optional[CorpusStats] = None) -> Iterator[str]:
        """Yield every text of every source, in order; statistics go to ``stats``."""
        stats = stats if stats is not None else CorpusStats()
        self.stats = stats
        for src in self.sources:
            for path in src.files():
                fstats = stats.file(str(path), src.reader)
                fstats.texts = fstats.chars = fstats.lines = 0
                fstats.invalid_lines = []
                lines = _decoded_lines(path, self.on_invalid, fstats)
                for text in READERS[src.reader](lines, src.options):
                    text = text.strip()
                    if len(text) < self.min_chars:
                        continue
                    fstats.texts += 1
                    fstats.chars += len(text)
                    yield text
                if fstats.texts == 0:
                    raise CorpusError(
                        f"Corpus file {path} (reader {src.reader!r}) gave no text"
                        + (f" ({len(fstats.invalid_lines)} lines of invalid UTF-8 skipped)"
                           if fstats.invalid_lines else "")
                    )

    def __iter__(self) -> Iterator[str]:
        return self.iter_texts()


def is_heldout(text: str, every: int) -> bool:
    """Deterministic held-out split: a stable hash of the text, 1 in ``every`` texts."""
    if every <= 0:
        return False
    return zlib.crc32(text.encode("utf-8")) % every == 0
