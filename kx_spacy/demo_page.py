"""One self-contained HTML page of what the demo computed (`kx_spacy demo --html PAGE`).

The demo's sections print as they always did; a :class:`DemoPage` also keeps each section's
printed text (escaped, in a ``<pre>``) and any rich fragments a section adds: displaCy SVGs,
the attribution renderer's HTML, PNG figures (embedded as data URIs, so the page is one file).
"""
from __future__ import annotations

import base64
import html
import io
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional, Tuple, Union

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
pre{background:#f6f8fa;padding:.8em;overflow-x:auto;font-size:.85em;line-height:1.35}
figure{margin:1em 0;overflow-x:auto}figcaption{color:#555;font-size:.9em}
img{max-width:100%;border:1px solid #eee}
"""


class _Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self):
        for s in self.streams:
            s.flush()


class DemoPage:
    """Sections of text and fragments, written as one HTML page."""

    def __init__(self, title: str = "kx_spacy demo"):
        self.title = title
        self.sections: List[Tuple[str, str, List[str]]] = []

    @contextmanager
    def section(self, title: str):
        """Capture what the block prints (it still reaches stdout) as a section of the page."""
        buf = io.StringIO()
        self.sections.append((title, "", []))
        old = sys.stdout
        sys.stdout = _Tee(old, buf)
        try:
            yield self
        finally:
            sys.stdout = old
            t, _, frags = self.sections[-1]
            self.sections[-1] = (t, buf.getvalue(), frags)

    def add_html(self, fragment: str, caption: Optional[str] = None) -> None:
        """Add trusted HTML (made by displaCy or kx_spacy's renderers) to the current section."""
        if not self.sections:
            self.sections.append(("", "", []))
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self.sections[-1][2].append(f"<figure>{fragment}{cap}</figure>")

    def add_image(self, png: Union[str, Path, bytes], caption: Optional[str] = None) -> None:
        """Embed a PNG (a path or its bytes) in the current section."""
        data = png if isinstance(png, bytes) else Path(png).read_bytes()
        uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        self.add_html(f'<img src="{uri}" alt="{html.escape(caption or "figure")}">', caption)

    def render(self) -> str:
        parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>",
                 f"<style>{_STYLE}</style></head><body><h1>{html.escape(self.title)}</h1>"]
        for title, text, frags in self.sections:
            if title:
                parts.append(f"<h2>{html.escape(title)}</h2>")
            if text.strip():
                parts.append(f"<pre>{html.escape(text.strip())}</pre>")
            parts.extend(frags)
        parts.append("</body></html>")
        return "\n".join(parts)

    def write(self, path: Union[str, Path]) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.render(), encoding="utf8")
        return path


# The page of the running demo (None when no page was asked for): sections add to it through
# add_html / add_image below, which do nothing without a page.
_CURRENT: Optional[DemoPage] = None


def set_current(page: Optional[DemoPage]) -> None:
    global _CURRENT
    _CURRENT = page


def add_html(fragment: str, caption: Optional[str] = None) -> None:
    if _CURRENT is not None:
        _CURRENT.add_html(fragment, caption)


def add_image(png, caption: Optional[str] = None) -> None:
    if _CURRENT is not None:
        _CURRENT.add_image(png, caption)
