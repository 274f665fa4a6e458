"""Every custom attribute kx_spacy sets on Doc / Token, installed in one place.

Values stored on ``doc._`` must be plain data (dicts, lists, numbers, strings) or types
with a registered msgpack encoder, so that they survive ``doc.to_bytes()``, ``DocBin``
and ``nlp.pipe(n_process=2)``.
"""
from spacy.tokens import Doc, Token

# name -> default. Components document what they write in their own modules.
DOC_EXTENSIONS = {
    "kx_attributions": None,  # kx_attributor: label -> attribution record (dict)
    "kx_generation": None,  # kx_generator: generated text record (dict)
    "kx_parse": None,  # kx_parser: per-sentence decoding details (dict)
}
TOKEN_EXTENSIONS = {
    "kx_attribution": None,  # kx_attributor: token score for the first explained label
}


def install_extensions() -> None:
    """Register kx_spacy's Doc and Token extensions; safe to call any number of times."""
    for name, default in DOC_EXTENSIONS.items():
        if not Doc.has_extension(name):
            Doc.set_extension(name, default=default)
    for name, default in TOKEN_EXTENSIONS.items():
        if not Token.has_extension(name):
            Token.set_extension(name, default=default)
