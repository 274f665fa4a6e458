"""Errors of the pretraining workflow (all subclasses of :class:`kx_spacy.errors.KxError`)."""
from ..errors import KxError


class PretrainError(KxError):
    """Base class of every pretraining error."""


class CorpusError(PretrainError):
    """A corpus source is missing, matches no file, is empty or cannot be read."""


class InvalidUTF8Error(CorpusError):
    """A corpus file has bytes that are not UTF-8 (raised with ``--on-invalid fail``)."""


class VocabSizeError(PretrainError):
    """The requested vocabulary is larger than the training text supports."""


class CheckpointMismatchError(PretrainError):
    """``--resume`` found a checkpoint written under a different configuration."""


class PretrainConfigError(PretrainError):
    """A setting in the pretraining config is missing or invalid."""
