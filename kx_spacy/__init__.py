"""kx_spacy: research components for spaCy over one shared transformer.

Importing this package is cheap: torch and transformers are imported only when a
component is built or a model function is called.
"""
from .about import __version__
from .extensions import install_extensions

__all__ = ["__version__", "install_extensions"]


def render_attributions(*args, **kwargs):
    """Render attribution records as HTML (see kx_spacy.attribution.render)."""
    from .attribution.render import render_attributions as _render

    return _render(*args, **kwargs)
