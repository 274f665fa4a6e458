"""Errors raised by kx_spacy components, with messages that say what to do."""


class KxError(ValueError):
    """Base class for every error kx_spacy raises on purpose."""


class MissingTransformerError(KxError):
    """The pipeline has no transformer pipe of the configured name."""


class TransformerNotInitializedError(KxError):
    """The transformer pipe exists but its torch module is not loaded yet."""


class UnsupportedTransformerError(KxError):
    """The named pipe is not a transformer implementation kx_spacy can drive."""


class NoMaskTokenError(KxError):
    """The encoder's tokenizer has no mask token, so masking methods cannot run."""


class MissingTrfDataError(KxError):
    """A Doc carries no transformer output: the transformer pipe has not run on it."""
