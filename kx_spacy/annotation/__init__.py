"""Corpus-scale annotation: a pipeline over a corpus of any size into resumable DocBin shards.

``annotate(...)`` with ``engine="local"`` (spaCy's ``nlp.pipe`` with ``n_process``) or
``engine="ray"`` (Ray Data actors, locally or on a cluster); ``kx_spacy annotate`` is its CLI.
"""
from .shards import AnnotateError, Shard, index_corpus, verify_output  # noqa: F401


def annotate(*args, **kwargs):
    """See :func:`kx_spacy.annotation.engines.annotate`."""
    from .engines import annotate as _annotate

    return _annotate(*args, **kwargs)
