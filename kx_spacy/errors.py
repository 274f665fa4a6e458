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


class InvalidScoresError(KxError):
    """Arc scores, a root index or a sentence length given to a tree decoder are invalid."""


class DataFormatError(KxError):
    """An input file (CoNLL-U, SIGHAN bakeoff) is malformed or does not match its gold."""


# --- attribution (issue 5) ---
class MissingClassifierError(KxError):
    """kx_attributor: the pipeline has no text classifier pipe of the configured name."""


class UnsupportedClassifierError(KxError):
    """kx_attributor: the named pipe is not a textcat / textcat_multilabel pipe."""


class ClassifierNotListeningError(KxError):
    """kx_attributor: the classifier does not listen to the transformer (no gradient path)."""


class UnknownLabelError(KxError):
    """kx_attributor: a label to explain is not one of the classifier's labels."""


class AttributionConfigError(KxError):
    """kx_attributor: an invalid setting (tolerance, steps, quadrature, baseline)."""


# --- linear attention (issue 10) ---
class AttentionShapeError(KxError):
    """Linear / softmax attention: inputs of inconsistent shapes (head dims, lengths, masks)."""


class FeatureMapError(KxError):
    """Linear attention: an unknown feature map, or one that cannot be used causally."""


class AttentionKernelError(KxError):
    """Linear attention: an unknown kernel, or the fla kernel asked for where it cannot run."""


# --- generation (issue 11) ---
class GeneratorConfigError(KxError):
    """kx_generator: an invalid setting (ε, max_length, top-k, top-p, beam width, layer kind)."""


class GeneratorVocabError(KxError):
    """kx_generator: a target vocabulary without its special tokens, or no training targets."""


class SourceTooLongError(KxError):
    """kx_generator: a source document longer than the generator's source window."""


class GeneratorNotInitializedError(KxError):
    """kx_generator: the pipe is used before ``nlp.initialize()`` built its vocabulary."""


# --- packaging (issue 15) ---
class PipelineAssemblyError(KxError):
    """A pipeline assembled from trained ones would not annotate as its sources did."""
