"""``kx_attributor``: integrated-gradient attributions for a spaCy text classifier.

Place it after the transformer and the ``textcat`` / ``textcat_multilabel`` pipe it
explains. For each doc it writes

* ``doc._.kx_attributions``: ``{label: record}``, each record a plain dict (see
  ``Attribution.to_dict``): ``scores`` (one float per token), ``f_x``, ``f_baseline``,
  ``error``, ``error_kind``, ``steps``, ``converged``, ``baseline``, ``quadrature``;
* ``token._.kx_attribution``: the token's score for the first explained label.

Empty docs get ``{}`` and no token scores. ``get_attributions(doc)`` returns the records as
``Attribution`` objects.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, Iterator, List, Optional

from spacy.language import Language
from spacy.tokens import Doc
from spacy.util import minibatch

from ..extensions import install_extensions
from .integrated_gradients import Attribution, BaselineFn, Quadrature, integrated_gradients

DEFAULT_CONFIG_STR = """
[kx_attributor]
transformer = "transformer"
classifier = "textcat"
labels = null
tolerance = 0.01
max_steps = 64
batch_size = 64
pipe_batch_size = 32

[kx_attributor.baseline]
@misc = "kx_spacy.PadBaseline.v1"

[kx_attributor.quadrature]
@misc = "kx_spacy.AdaptiveSimpson.v1"
min_steps = 1
split = 1.0
"""


def _default_config() -> Dict:
    from thinc.api import Config

    return Config().from_str(DEFAULT_CONFIG_STR)["kx_attributor"]


@Language.factory(
    "kx_attributor",
    default_config=_default_config(),
    assigns=["doc._.kx_attributions", "token._.kx_attribution"],
    requires=["doc._.trf_data"],
)
def make_attributor(
    nlp: Language,
    name: str,
    transformer: str,
    classifier: str,
    labels: Optional[List[str]],
    baseline: BaselineFn,
    quadrature: Quadrature,
    tolerance: float,
    max_steps: int,
    batch_size: int,
    pipe_batch_size: int,
) -> "Attributor":
    """Create a kx_attributor pipe.

    transformer (str): name of the transformer pipe (the shared encoder).
    classifier (str): name of the textcat / textcat_multilabel pipe to explain.
    labels (List[str] or None): labels to explain; None: each doc's top label.
    baseline (Callable): baseline function (``kx_spacy.PadBaseline.v1`` ...).
    quadrature (Quadrature): rule (default ``kx_spacy.AdaptiveSimpson.v1``; also
        ``kx_spacy.GaussLegendre.v1``, ``kx_spacy.RiemannTrapezoid.v1``,
        ``kx_spacy.AdaptiveTrapezoid.v1``).
    tolerance (float): relative completeness error to reach per doc.
    max_steps (int): gradient evaluations of the finest rule (the step cap).
    batch_size (int): most sequences per encoder forward.
    pipe_batch_size (int): docs explained together by ``pipe``.
    RETURNS (Attributor): the pipe.
    """
    return Attributor(
        nlp,
        name,
        transformer=transformer,
        classifier=classifier,
        labels=labels,
        baseline=baseline,
        quadrature=quadrature,
        tolerance=tolerance,
        max_steps=max_steps,
        batch_size=batch_size,
        pipe_batch_size=pipe_batch_size,
    )


class Attributor:
    """The kx_attributor pipe (see the module docstring)."""

    def __init__(
        self,
        nlp: Language,
        name: str = "kx_attributor",
        *,
        transformer: str = "transformer",
        classifier: str = "textcat",
        labels: Optional[List[str]] = None,
        baseline: Optional[BaselineFn] = None,
        quadrature: Optional[Quadrature] = None,
        tolerance: float = 0.01,
        max_steps: int = 64,
        batch_size: int = 64,
        pipe_batch_size: int = 32,
    ):
        from ..errors import AttributionConfigError
        from .integrated_gradients import AdaptiveSimpson, make_pad_baseline

        install_extensions()
        if not tolerance >= 0:
            raise AttributionConfigError(f"kx_attributor: tolerance must be >= 0, got {tolerance}.")
        self.nlp = nlp
        self.name = name
        self.transformer = transformer
        self.classifier = classifier
        # a list, never None: spaCy's nlp.meta lists every pipe's .labels (saving would fail)
        self.labels = list(labels) if labels else []
        self.baseline = baseline or make_pad_baseline()
        self.quadrature = quadrature or AdaptiveSimpson()
        self.quadrature.start(int(max_steps))  # validates max_steps against the rule
        self.tolerance = float(tolerance)
        self.max_steps = int(max_steps)
        self.batch_size = int(batch_size)
        self.pipe_batch_size = max(1, int(pipe_batch_size))

    def explain(self, docs: List[Doc]) -> List[Dict[str, Attribution]]:
        """Attributions for ``docs`` (which the transformer has run on), not stored."""
        from ..backbone import Backbone
        from .classifier_bridge import ClassifierBridge

        if not any(len(doc) for doc in docs):
            return [{} for _ in docs]
        bridge = ClassifierBridge(self.nlp, self.classifier, self.transformer)
        backbone = Backbone.from_nlp(self.nlp, self.transformer)
        return integrated_gradients(
            backbone,
            bridge,
            docs,
            labels=self.labels or None,  # none given: each doc's top label
            baseline=self.baseline,
            quadrature=self.quadrature,
            tolerance=self.tolerance,
            max_steps=self.max_steps,
            batch_size=self.batch_size,
        )

    def set_annotations(self, docs: List[Doc], results: List[Dict[str, Attribution]]) -> None:
        for doc, result in zip(docs, results):
            doc._.kx_attributions = {label: rec.to_dict() for label, rec in result.items()}
            if result:
                first = next(iter(result.values()))
                for token, score in zip(doc, first.scores):
                    token._.kx_attribution = float(score)

    def __call__(self, doc: Doc) -> Doc:
        install_extensions()
        self.set_annotations([doc], self.explain([doc]))
        return doc

    def pipe(self, stream: Iterable[Doc], *, batch_size: Optional[int] = None) -> Iterator[Doc]:
        install_extensions()
        for batch in minibatch(stream, size=batch_size or self.pipe_batch_size):
            docs = list(batch)
            self.set_annotations(docs, self.explain(docs))
            yield from docs

    def initialize(self, get_examples: Optional[Callable] = None, *, nlp: Optional[Language] = None) -> None:
        """Nothing to learn; checks the classifier exists when the pipeline is built."""
        from .classifier_bridge import resolve_classifier

        resolve_classifier(nlp or self.nlp, self.classifier)

    # No weights: the settings live in the pipeline's config, so nothing to serialise.
    def to_bytes(self, *, exclude=tuple()) -> bytes:
        return b""

    def from_bytes(self, bytes_data: bytes, *, exclude=tuple()) -> "Attributor":
        return self

    def to_disk(self, path, *, exclude=tuple()) -> None:
        return None

    def from_disk(self, path, *, exclude=tuple()) -> "Attributor":
        return self


def get_attributions(doc: Doc) -> Dict[str, Attribution]:
    """The records ``kx_attributor`` stored on ``doc``, as ``Attribution`` objects.

    doc (Doc): a processed doc.
    RETURNS (Dict[str, Attribution]): label -> attribution ({} if none).
    """
    install_extensions()
    data = doc._.kx_attributions or {}
    return {label: Attribution.from_dict(rec) for label, rec in data.items()}
