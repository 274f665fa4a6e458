__title__ = "kx_spacy"
__version__ = "0.1.0"
