"""Errors of the training engine (all subclasses of :class:`kx_spacy.errors.KxError`)."""
from ..errors import KxError


class TrainingError(KxError):
    """Base class of every training-engine error (also: a task that yields no batch)."""


class PrecisionError(TrainingError):
    """A precision the device cannot run (fp16 on a CPU) or an unknown precision name."""


class NonFiniteLossError(TrainingError):
    """Too many optimizer steps in a row had a NaN / inf loss or gradient norm."""


class CheckpointMismatchError(TrainingError):
    """``resume`` found a checkpoint written under a different configuration identity."""


class NoCheckpointError(TrainingError):
    """``resume`` was asked for but the folder holds no complete checkpoint."""
