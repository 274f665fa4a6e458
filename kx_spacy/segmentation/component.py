"""``kx_self_trained_segmenter``: the self-trained student as a spaCy pipe.

A sibling of ``kx_segmenter`` rather than a ``method`` of it: ``kx_segmenter`` has no state
and borrows the transformer's encoder at every call, while this pipe needs no encoder at all
and carries a trained model (weights, corpus counts, threshold) that must be loaded,
serialised and versioned. One factory with both would give each method settings that mean
nothing to the other and a ``to_disk`` that is empty half the time.

Use::

    nlp = spacy.blank("zh")
    nlp.add_pipe("kx_self_trained_segmenter", config={"student_path": "training/zh_student"})
    nlp.initialize()                     # loads the student folder
    nlp.to_disk("zh_seg")                # the student travels inside the pipeline

The student comes from ``kx_spacy self-train-segmenter ... --save-model DIR`` (no gold data).
The pipe runs on ``spacy.blank("zh")`` character tokens (before any transformer) and merges
the tokens of each word with ``doc.retokenize()``. Whitespace always separates: each stretch
of tokens with no whitespace between them is segmented as one line. A doc's segmentation
never depends on its batch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional

from spacy.language import Language
from spacy.pipeline import Pipe
from spacy.tokens import Doc
from spacy.util import minibatch

from ..errors import KxError
from .merge import joined_spans, merge_spans
from .student import SegmenterStudent, StudentFormatError

STUDENT_DIR = "student"


class StudentNotLoadedError(KxError):
    """kx_self_trained_segmenter is used before a student was loaded."""


@Language.factory(
    "kx_self_trained_segmenter",
    default_config={"student_path": None},
    assigns=["token.text"],
)
def make_self_trained_segmenter(nlp: Language, name: str, student_path: Optional[str]) -> "SelfTrainedSegmenter":
    """Build the pipe; the student is loaded by ``initialize`` (or ``from_disk``).

    student_path (Optional[str]): the student folder ``initialize`` loads when it is given
        none (``[initialize.components.NAME] student_path`` also works).
    RETURNS (SelfTrainedSegmenter): the pipe.
    """
    return SelfTrainedSegmenter(nlp, name, student_path=student_path)


class SelfTrainedSegmenter(Pipe):
    """Word segmentation by a student self-trained on teachers' confident pairs. See the module."""

    def __init__(self, nlp: Language, name: str = "kx_self_trained_segmenter", *,
                 student_path: Optional[str] = None) -> None:
        self.nlp = nlp
        self.name = name
        self.student_path = student_path
        self.student: Optional[SegmenterStudent] = None

    # spaCy calls these -----------------------------------------------------------
    def initialize(self, get_examples: Optional[Callable] = None, *, nlp: Optional[Language] = None,
                   student_path: Optional[str] = None) -> None:
        """Load the student folder (``student_path``, else the factory's).

        student_path (Optional[str]): a folder written by ``self-train-segmenter --save-model``.
        """
        path = student_path or self.student_path
        if path is None:
            if self.student is not None:
                return  # loaded by from_disk / from_bytes / set_student
            raise StudentNotLoadedError(
                f"{self.name}: no student to load. Pass student_path (factory config, "
                "[initialize.components] or initialize(student_path=...)), a folder from "
                "`kx_spacy self-train-segmenter ... --save-model DIR`.")
        self.student = SegmenterStudent.from_disk(path)

    def set_student(self, student: SegmenterStudent) -> None:
        """Use ``student`` (e.g. one just trained in this process)."""
        self.student = student

    def __call__(self, doc: Doc) -> Doc:
        return next(self.pipe([doc]))

    def pipe(self, stream: Iterable[Doc], *, batch_size: int = 128) -> Iterator[Doc]:
        for docs in minibatch(stream, size=batch_size):
            for doc in docs:
                yield self._segment(doc)

    # the work ----------------------------------------------------------------------
    def _runs(self, doc: Doc) -> List[tuple]:
        """[start, end) token stretches with no whitespace inside."""
        runs, start = [], None
        for i, tok in enumerate(doc):
            if tok.is_space:
                if start is not None:
                    runs.append((start, i))
                start = None
                continue
            if start is None:
                start = i
            if tok.whitespace_:
                runs.append((start, i + 1))
                start = None
        if start is not None:
            runs.append((start, len(doc)))
        return runs

    def _segment(self, doc: Doc) -> Doc:
        if self.student is None:
            raise StudentNotLoadedError(
                f"{self.name} has no student: call nlp.initialize() with its student_path set, "
                "or load a pipeline saved after that.")
        spans = []
        for s, e in self._runs(doc):
            spans += joined_spans(self.student.joins([t.text for t in doc[s:e]]), s, e)
        return merge_spans(doc, spans)

    # serialisation -------------------------------------------------------------------
    def to_bytes(self, *, exclude=tuple()) -> bytes:
        import srsly

        return srsly.msgpack_dumps({"student": self.student.to_bytes() if self.student is not None else None})

    def from_bytes(self, bytes_data: bytes, *, exclude=tuple()) -> "SelfTrainedSegmenter":
        import srsly

        try:
            data = srsly.msgpack_loads(bytes_data)["student"]
        except Exception as err:
            raise StudentFormatError(f"{self.name}: not this pipe's bytes ({type(err).__name__}).") from None
        self.student = SegmenterStudent.from_bytes(data) if data is not None else None
        return self

    def to_disk(self, path, *, exclude=tuple()) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if self.student is not None:
            self.student.to_disk(path / STUDENT_DIR)

    def from_disk(self, path, *, exclude=tuple()) -> "SelfTrainedSegmenter":
        folder = Path(path) / STUDENT_DIR
        self.student = SegmenterStudent.from_disk(folder) if folder.exists() else None
        return self
