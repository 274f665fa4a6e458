"""The self-trained segmenter's student as a standalone model: what ``self-train-segmenter``
learns and ``kx_self_trained_segmenter`` loads.

A student is the boundary classifier's weights (logistic regression over hashed character
n-gram features of a pair and its context, :func:`~.self_training.pair_features`), the
corpus counts its PMI / frequency features read, and the join threshold. It needs no encoder:
segmenting is feature hashing and a dot product per adjacent pair, so it segments any text,
not only the lines it was taught on. Characters it never saw get features with no weight
(and a PMI of "never seen together"): a defined result, decided by the bias and the features
of their neighbours. Punctuation, whitespace, digit and Latin-letter runs are decided by the
same rules as everywhere in kx_spacy (``kx_spacy.perturbed.segmenter._pair_rules``).

On disk a student is a folder with ``meta.json`` (format name and version, settings, training
statistics) and ``student.msgpack`` (weights as non-zero index/value pairs, counts,
threshold); ``to_bytes`` holds both.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy

from ..errors import KxError

STUDENT_FORMAT = "kx_spacy.segmenter_student"
STUDENT_VERSION = 2  # 2: feature set and decoder saved (a version-1 folder reads as "base" + threshold)
READABLE_VERSIONS = (1, 2)
META_FILE = "meta.json"
WEIGHTS_FILE = "student.msgpack"


class StudentFormatError(KxError):
    """A student folder or bytes that are missing, damaged or from another format version."""


class SegmenterStudent:
    """A trained boundary classifier plus what its features need.

    weights (numpy.ndarray): the dense hashed weight vector (float64).
    counts (CorpusCounts): unigram / bigram counts for the PMI features.
    threshold (float): join a pair whose probability is at least this.
    meta (Dict): settings and training statistics (saved with the student, not used).
    features (str): the feature set of :func:`~.self_training.pair_features` it was trained on.
    decoder (Optional[Dict]): how pair scores become words (:mod:`.decoding`; default: the
        threshold on each pair).
    """

    def __init__(self, weights: numpy.ndarray, counts, threshold: float, meta: Optional[Dict] = None,
                 features: str = "base", decoder: Optional[Dict] = None):
        from .decoding import DecoderError, check_decoder
        from .self_training import FEATURE_SETS

        self.weights = numpy.asarray(weights, dtype=numpy.float64)
        if self.weights.ndim != 1 or self.weights.size == 0:
            raise StudentFormatError("A student's weights are a non-empty vector.")
        if features not in FEATURE_SETS:
            raise StudentFormatError(f"Unknown student feature set {features!r} (known: {', '.join(FEATURE_SETS)}).")
        self.counts = counts
        self.threshold = float(threshold)
        self.features = features
        try:
            self.decoder = check_decoder(decoder)
        except DecoderError as err:
            raise StudentFormatError(str(err)) from None
        self.meta = dict(meta or {})

    @property
    def dim(self) -> int:
        return int(self.weights.size)

    # ------------------------------------------------------------------ segmenting
    def log_odds(self, units: Sequence[str]) -> numpy.ndarray:
        """The classifier's log-odds of a join for each adjacent pair of ``units``."""
        from .self_training import _hash, pair_features

        units = list(units)
        w = self.weights
        return numpy.array([w[_hash(pair_features(units, k, self.counts, self.features), self.dim)].sum()
                            for k in range(len(units) - 1)], dtype=numpy.float64)

    def probabilities(self, units: Sequence[str]) -> numpy.ndarray:
        """P(join) of each adjacent pair of ``units`` (characters, or a doc's tokens)."""
        return 1.0 / (1.0 + numpy.exp(-self.log_odds(units)))

    def joins(self, units: Sequence[str]) -> List[bool]:
        """Per adjacent pair: join (True) or cut (False); the rules decide where they apply."""
        from ..perturbed.segmenter import _pair_rules
        from .decoding import decode_joins

        units = list(units)
        if len(units) < 2:
            return []
        return decode_joins(self.log_odds(units), _pair_rules(units), self.threshold, self.decoder)

    def segment(self, text: str) -> List[str]:
        """The words of ``text`` (one line, no whitespace expected: each character a unit)."""
        from .self_training import words_from_joins

        return words_from_joins(text, self.joins(list(text))) if text else []

    # --------------------------------------------------------------- serialising
    def _payload(self) -> Dict:
        nz = numpy.flatnonzero(self.weights)
        return {"dim": self.dim, "threshold": self.threshold,
                "w_index": nz.astype(numpy.int64).tolist(), "w_value": self.weights[nz].tolist(),
                "unigrams": dict(self.counts.unigrams), "bigrams": dict(self.counts.bigrams),
                "total": int(self.counts.total), "features": self.features, "decoder": self.decoder}

    def _meta(self) -> Dict:
        return {"format": STUDENT_FORMAT, "version": STUDENT_VERSION, **self.meta}

    def to_bytes(self) -> bytes:
        import srsly

        return srsly.msgpack_dumps({"meta": self._meta(), "student": self._payload()})

    @classmethod
    def from_bytes(cls, data: bytes) -> "SegmenterStudent":
        import srsly

        try:
            msg = srsly.msgpack_loads(data)
            meta, payload = msg["meta"], msg["student"]
        except Exception as err:  # msgpack raises several types on damaged input
            raise StudentFormatError(f"Not a segmenter student's bytes ({type(err).__name__}: {err}).") from None
        return cls._from_parts(meta, payload, "the bytes")

    def to_disk(self, path: Union[str, Path]) -> None:
        """Write the student folder (``meta.json`` + ``student.msgpack``), replacing its files."""
        import srsly

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tmp = path / (WEIGHTS_FILE + ".tmp")
        tmp.write_bytes(srsly.msgpack_dumps(self._payload()))
        tmp.replace(path / WEIGHTS_FILE)
        (path / META_FILE).write_text(json.dumps(self._meta(), indent=2, ensure_ascii=False) + "\n", encoding="utf8")

    @classmethod
    def from_disk(cls, path: Union[str, Path]) -> "SegmenterStudent":
        import srsly

        path = Path(path)
        if not path.is_dir():
            raise StudentFormatError(f"No student folder at {path} (make one with "
                                     "`kx_spacy self-train-segmenter ... --save-model DIR`).")
        missing = [f for f in (META_FILE, WEIGHTS_FILE) if not (path / f).is_file()]
        if missing:
            raise StudentFormatError(f"The student folder {path} lacks {', '.join(missing)}: "
                                     "not a student, or an interrupted save. Train it again.")
        try:
            meta = json.loads((path / META_FILE).read_text(encoding="utf8"))
            payload = srsly.msgpack_loads((path / WEIGHTS_FILE).read_bytes())
        except Exception as err:
            raise StudentFormatError(f"The student folder {path} is damaged ({type(err).__name__}: {err}).") from None
        return cls._from_parts(meta, payload, str(path))

    @classmethod
    def _from_parts(cls, meta: Dict, payload: Dict, where: str) -> "SegmenterStudent":
        from .self_training import CorpusCounts

        if not isinstance(meta, dict) or meta.get("format") != STUDENT_FORMAT:
            raise StudentFormatError(f"{where} is not a kx_spacy segmenter student (format {meta.get('format') if isinstance(meta, dict) else None!r}).")
        if meta.get("version") not in READABLE_VERSIONS:
            raise StudentFormatError(
                f"{where} holds a student of format version {meta.get('version')!r}; this kx_spacy reads "
                f"versions {', '.join(map(str, READABLE_VERSIONS))}. Train it again with this version's self-train-segmenter.")
        try:
            dim = int(payload["dim"])
            w = numpy.zeros(dim, dtype=numpy.float64)
            w[numpy.asarray(payload["w_index"], dtype=numpy.int64)] = numpy.asarray(payload["w_value"], dtype=numpy.float64)
            counts = CorpusCounts(Counter(payload["unigrams"]), Counter(payload["bigrams"]), int(payload["total"]))
            threshold = float(payload["threshold"])
            features, decoder = payload.get("features", "base"), payload.get("decoder")
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise StudentFormatError(f"{where}: the student's data is incomplete ({type(err).__name__}: {err}).") from None
        extra = {k: v for k, v in meta.items() if k not in ("format", "version")}
        return cls(w, counts, threshold, meta=extra, features=features, decoder=decoder)
