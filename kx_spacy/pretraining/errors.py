"""Errors of the pretraining workflow (all subclasses of :class:`kx_spacy.errors.KxError`)."""
from ..errors import KxError
from ..training.errors import CheckpointMismatchError  # noqa: F401  (one class for every kx loop)


class PretrainError(KxError):
    """Base class of every pretraining error."""


class CorpusError(PretrainError):
    """A corpus source is missing, matches no file, is empty or cannot be read."""


class InvalidUTF8Error(CorpusError):
    """A corpus file has bytes that are not UTF-8 (raised with ``--on-invalid fail``)."""


class VocabSizeError(PretrainError):
    """The requested vocabulary is larger than the training text supports."""




class PretrainConfigError(PretrainError):
    """A setting in the pretraining config is missing or invalid."""
