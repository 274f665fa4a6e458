"""Text sanitising shared by every kx command that reads text (one place, one message).

spaCy's tokenizer cannot take a lone surrogate (U+D800-U+DFFF, as made by decoding bytes
with ``errors="surrogateescape"`` or by JSON ``"\\udfff"`` escapes): it raises
``UnicodeEncodeError`` and takes a whole ``nlp.pipe`` call down with it, losing the other
docs. Bytes that are not UTF-8 (an encoded surrogate among them) stop a strict decode with
an offset but no line. The helpers here find both and say which file, line and column, and
either reject the text (``on_invalid="error"``, the default) or replace each bad character
or byte sequence with U+FFFD (``"replace"``).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Union

from .errors import DataFormatError

ON_INVALID = ("error", "replace")
REPLACEMENT = "\ufffd"
_SURROGATE = re.compile("[\ud800-\udfff]")


class InvalidTextError(DataFormatError):
    """Text with a lone surrogate, or bytes that are not UTF-8; the message names where."""


def _check_mode(on_invalid: str) -> None:
    if on_invalid not in ON_INVALID:
        raise DataFormatError(f"on_invalid must be one of {ON_INVALID}, got {on_invalid!r}")


def find_lone_surrogate(text: str) -> Optional[int]:
    """The index of the first lone surrogate in ``text``, or None."""
    m = _SURROGATE.search(text)
    return None if m is None else m.start()


def clean_text(text: str, *, where: str = "<text>", line: Optional[int] = None,
               on_invalid: str = "error") -> str:
    """``text`` with no lone surrogate: unchanged, or with each replaced by U+FFFD.

    text (str): one text (a line, a doc).
    where (str): its file or another name, for the message.
    line (Optional[int]): its 1-based line in ``where``, for the message.
    on_invalid (str): "error" (raise ``InvalidTextError``) or "replace".
    RETURNS (str): the clean text.
    """
    _check_mode(on_invalid)
    k = find_lone_surrogate(text)
    if k is None:
        return text
    if on_invalid == "replace":
        return _SURROGATE.sub(REPLACEMENT, text)
    loc = where if line is None else f"{where}:{line}"
    raise InvalidTextError(
        f"{loc}: column {k + 1}: a lone surrogate U+{ord(text[k]):04X} (text decoded with "
        "errors='surrogateescape', or a JSON \\u escape of half a character); spaCy's tokenizer "
        "cannot take it. Fix the text, or replace such characters (on_invalid='replace')."
    )


def clean_lines(lines: Iterable[str], *, where: str = "<text>", on_invalid: str = "error",
                first_line: int = 1) -> Iterator[str]:
    """``clean_text`` over lines, numbered from ``first_line`` for the messages."""
    for i, text in enumerate(lines, start=first_line):
        yield clean_text(text, where=where, line=i, on_invalid=on_invalid)


def decode_utf8(raw: bytes, *, where: str = "<bytes>", on_invalid: str = "error") -> str:
    """Decode ``raw`` as UTF-8 (a leading BOM dropped), naming the line and column of bad bytes.

    raw (bytes): the bytes (a whole file or one line).
    where (str): the file, for the message.
    on_invalid (str): "error" (raise ``InvalidTextError``) or "replace" (U+FFFD).
    RETURNS (str): the text.
    """
    _check_mode(on_invalid)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        if on_invalid == "replace":
            text = raw.decode("utf-8-sig", errors="replace")
        else:
            raise InvalidTextError(f"{where}: {describe_bad_bytes(raw, err)}") from None
    return text


def describe_bad_bytes(raw: bytes, err: UnicodeDecodeError) -> str:
    """'line L, column C: ...' for the first bad byte sequence of ``raw``."""
    line = raw.count(b"\n", 0, err.start) + 1
    start = raw.rfind(b"\n", 0, err.start) + 1
    column = len(raw[start:err.start].decode("utf-8", errors="replace")) + 1
    bad = raw[err.start:err.start + 3]
    what = "an encoded surrogate (WTF-8 / CESU-8, not UTF-8)" if bad[:1] == b"\xed" and len(bad) > 1 and bad[1] >= 0xA0 \
        else f"invalid UTF-8 ({err.reason})"
    return f"line {line}, column {column}: {what}, bytes {bad.hex(' ')}. Fix the file (e.g. re-encode it as UTF-8)."


def read_text_file(path: Union[str, Path], *, on_invalid: str = "error") -> str:
    """A UTF-8 text file's content, newlines normalised to "\\n", with no lone surrogate.

    path (str / Path): the file.
    on_invalid (str): "error" (raise ``InvalidTextError`` naming file, line and column) or
        "replace" (U+FFFD for each bad byte sequence).
    RETURNS (str): the text.
    """
    path = Path(path)
    if not path.exists():
        raise DataFormatError(f"No such file: {path}. Check the data_dir / KX_DATA setting.")
    if path.is_dir():
        raise DataFormatError(f"Expected a file, got the folder {path}.")
    text = decode_utf8(path.read_bytes(), where=str(path), on_invalid=on_invalid)
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_text_lines(path: Union[str, Path], *, on_invalid: str = "error") -> List[str]:
    """The lines of a UTF-8 text file (see ``read_text_file``); a final newline adds no line."""
    lines = read_text_file(path, on_invalid=on_invalid).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines
