"""HTML pictures of ``kx_attributor`` results: one block per doc and label, each token on a
diverging colour scale (red: pushes the label's score up, blue: pushes it down), with a
legend, the label, F(x), F(x'), the completeness error and the steps used.

Every piece of text that comes from a doc or a label is HTML-escaped (``html.escape`` with
quotes), so a doc containing markup renders as inert text.
"""
from __future__ import annotations

import html
from typing import Dict, Iterable, List, Optional, Sequence, Union

from spacy.tokens import Doc

from ..extensions import install_extensions

POSITIVE = (214, 39, 40)  # red
NEGATIVE = (31, 119, 180)  # blue

_STYLE = """
.kx-attr{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;line-height:2.1;max-width:60em;margin:1em}
.kx-attr .kx-doc{border:1px solid #ddd;border-radius:6px;padding:.6em .9em;margin:.8em 0}
.kx-attr .kx-head{font-size:.85em;color:#444;margin-bottom:.3em}
.kx-attr .kx-label{font-weight:600;color:#111}
.kx-attr .kx-tok{padding:.15em .25em;border-radius:3px;margin:0 .05em}
.kx-attr .kx-legend{display:flex;align-items:center;gap:.5em;font-size:.85em;color:#444}
.kx-attr .kx-bar{width:14em;height:.9em;border:1px solid #ccc;
  background:linear-gradient(to right,rgb(31,119,180),#fff,rgb(214,39,40))}
.kx-attr .kx-warn{color:#b00}
"""


def _colour(value: float, scale: float) -> str:
    """Background colour of a token with attribution ``value`` (|value| <= scale)."""
    if scale <= 0:
        return "rgba(255,255,255,0)"
    strength = max(-1.0, min(1.0, value / scale))
    r, g, b = POSITIVE if strength >= 0 else NEGATIVE
    return f"rgba({r},{g},{b},{abs(strength) * 0.85:.3f})"


def _records(doc: Doc, labels: Optional[Sequence[str]]) -> Dict[str, dict]:
    data = doc._.kx_attributions or {}
    if labels is None:
        return dict(data)
    return {label: data[label] for label in labels if label in data}


def render_attributions(
    docs: Union[Doc, Iterable[Doc]],
    *,
    labels: Optional[Sequence[str]] = None,
    page: bool = False,
    title: str = "Token attributions",
    scale: str = "doc",
) -> str:
    """Render the attributions ``kx_attributor`` stored on ``docs`` as HTML.

    docs (Doc or Iterable[Doc]): processed docs.
    labels (Sequence[str] or None): labels to show (default: every stored label).
    page (bool): a full HTML page (True) or a fragment to embed (False).
    title (str): page / fragment heading.
    scale (str): "doc": colours scaled to each block's largest |score|; "global": to the
        largest |score| over all blocks.
    RETURNS (str): the HTML.
    """
    install_extensions()
    if isinstance(docs, Doc):
        docs = [docs]
    docs = list(docs)
    if scale not in ("doc", "global"):
        raise ValueError(f"scale must be 'doc' or 'global', got {scale!r}.")
    blocks = [(doc, label, rec) for doc in docs for label, rec in _records(doc, labels).items()]
    global_max = max((abs(s) for _, _, rec in blocks for s in rec.get("scores", [])), default=0.0)
    esc = lambda text: html.escape(str(text), quote=True)  # noqa: E731
    parts: List[str] = [f'<div class="kx-attr"><h2>{esc(title)}</h2>']
    parts.append(
        '<div class="kx-legend"><span>pushes the label down</span><span class="kx-bar"></span>'
        "<span>pushes it up</span></div>"
    )
    if not blocks:
        parts.append('<p class="kx-warn">No attributions on these docs (is kx_attributor in the pipeline?).</p>')
    for doc, label, rec in blocks:
        scores = list(rec.get("scores", []))
        top = global_max if scale == "global" else max((abs(s) for s in scores), default=0.0)
        error = rec.get("error")
        kind = rec.get("error_kind", "relative")
        err_txt = "n/a" if error is None else (f"{error:.2%}" if kind == "relative" else f"{error:.2e} (absolute)")
        warn = "" if rec.get("converged", True) else ' <span class="kx-warn">(not converged)</span>'
        parts.append('<div class="kx-doc">')
        parts.append(
            f'<div class="kx-head">label <span class="kx-label">{esc(label)}</span> · '
            f"score F(x) = {rec.get('f_x', float('nan')):.4f} · baseline F(x′) = "
            f"{rec.get('f_baseline', float('nan')):.4f} · completeness error {esc(err_txt)} · "
            f"{int(rec.get('steps', 0))} steps{warn}</div><div>"
        )
        for token, value in zip(doc, scores):
            parts.append(
                f'<span class="kx-tok" style="background:{_colour(value, top)}" '
                f'title="{esc(token.text)}: {value:+.4f}">{esc(token.text)}</span>'
                f"{esc(token.whitespace_)}"
            )
        parts.append("</div></div>")
    parts.append("</div>")
    body = "".join(parts)
    if not page:
        return f"<style>{_STYLE}</style>{body}"
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f"<style>{_STYLE}</style></head><body>{body}</body></html>"
    )
