"""``kx_generator``: stop-safe seq2seq generation over the pipeline's shared transformer.

A trainable pipe placed after the ``transformer`` pipe. Its model
(``kx_spacy.Seq2SeqGenerator.v1``) reads the encoder states through a transformer listener
(one mean-pooled vector per token: in training the transformer's outputs, with gradients
flowing back into it; at inference ``doc._.trf_data``, so the encoder never runs twice) and
decodes with a transformer decoder whose output layer is softmax, self-terminating (ST) or
non-monotonic self-terminating (NMST). Its target vocabulary is built in ``initialize`` from
the training targets (``kx_spacy.Seq2SeqCorpus.v1`` puts them on the reference docs) and is
saved with the pipe.

Writes ``doc._.kx_generation``, a plain dict (see :class:`Generation`): ``text``,
``token_ids``, ``log_prob`` (the model's log-probability of the generated sequence, EOS
included), ``n_steps`` and ``stopped_by`` ("eos", "max_length", or "empty" for an empty doc,
which is not decoded). ``pipe.termination_bound(L)`` gives the stopping guarantee of the
configured output layer.

This module imports neither torch nor transformers at import time (spaCy imports every
factory's module when a pipeline is made).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, List, Optional

import srsly
from spacy.language import Language
from spacy.pipeline import TrainablePipe
from spacy.training import validate_examples, validate_get_examples
from spacy.util import ensure_path
from thinc.api import Config, Model

from ..errors import (
    GeneratorConfigError,
    GeneratorNotInitializedError,
    GeneratorVocabError,
    MissingTrfDataError,
    SourceTooLongError,
)
from ..extensions import install_extensions
from .corpus import example_target
from .scoring import score_generation

DEFAULT_CONFIG_STR = """
[kx_generator]
transformer = "transformer"
target_tokenizer = "char"
max_vocab = 8000
min_freq = 1
max_length = 64
max_source_tokens = 512
label_smoothing = 0.0
batch_size = 64
seed = 0

[kx_generator.decoding]
@misc = "kx_spacy.GreedyDecoding.v1"

[kx_generator.scorer]
@scorers = "kx_spacy.GenerationScorer.v1"
bleu_tokenize = "13a"

[kx_generator.model]
@architectures = "kx_spacy.Seq2SeqGenerator.v1"
d_model = 256
n_layers = 2
n_heads = 4
mlp_ratio = 4.0
dropout = 0.1
attention = "softmax"
feature_map = "elu"

[kx_generator.model.output_layer]
@misc = "kx_spacy.NonMonotonicSelfTerminatingOutput.v1"
epsilon = 0.001

[kx_generator.model.tok2vec]
@architectures = "spacy-transformers.TransformerListener.v1"
grad_factor = 1.0
upstream = "*"

[kx_generator.model.tok2vec.pooling]
@layers = "reduce_mean.v1"
"""


def _default_config():
    return Config().from_str(DEFAULT_CONFIG_STR)["kx_generator"]


@dataclass
class Generation:
    """What kx_generator writes on a doc (stored as the dict of ``to_dict``).

    text (str): the generated text.
    token_ids (List[int]): its target-vocabulary ids (EOS not included).
    log_prob (float): the model's log-probability of the generated steps (EOS included).
    n_steps (int): decoding steps (EOS included).
    stopped_by (str): "eos", "max_length" or "empty" (empty source, nothing decoded).
    """

    text: str
    token_ids: List[int] = field(default_factory=list)
    log_prob: float = 0.0
    n_steps: int = 0
    stopped_by: str = "eos"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Generation":
        """From ``to_dict``'s output (msgpack may have turned the id list into a tuple)."""
        data = dict(data)
        data["token_ids"] = [int(i) for i in data.get("token_ids", [])]
        return cls(**data)


@Language.factory(
    "kx_generator",
    default_config=_default_config(),
    assigns=["doc._.kx_generation"],
    requires=["doc._.trf_data"],
    default_score_weights={"gen_chrf": 1.0, "gen_bleu": 0.0, "gen_exact": 0.0, "gen_nonterm": None},
)
def make_generator(
    nlp: Language,
    name: str,
    model: Model,
    transformer: str,
    decoding,
    target_tokenizer: str,
    max_vocab: int,
    min_freq: int,
    max_length: int,
    max_source_tokens: int,
    label_smoothing: float,
    batch_size: int,
    seed: int,
    scorer: Optional[Callable],
) -> "Generator":
    """Build the kx_generator pipe (see the module docstring).

    model (Model): kx_spacy.Seq2SeqGenerator.v1 (listener + decoder + output layer).
    transformer (str): name of the transformer pipe the listener listens to.
    decoding (DecodingStrategy): kx_spacy.GreedyDecoding.v1, BeamSearch.v1,
        AncestralSampling.v1, TopKSampling.v1 or NucleusSampling.v1.
    target_tokenizer (str): "char", "whitespace" or "encoder" (the transformer's tokenizer).
    max_vocab (int): target vocabulary size, specials included (0 = all tokens seen).
    min_freq (int): minimum count of a target token.
    max_length (int): decoding safety net, steps (EOS included) > 0.
    max_source_tokens (int): longest source doc accepted (spaCy tokens).
    label_smoothing (float): in [0, 1).
    batch_size (int): docs decoded together.
    seed (int): seed of the sampling strategies.
    scorer (Optional[Callable]): kx_spacy.GenerationScorer.v1.
    RETURNS (Generator): the pipe.
    """
    return Generator(
        nlp, model, name, transformer=transformer, decoding=decoding, target_tokenizer=target_tokenizer,
        max_vocab=max_vocab, min_freq=min_freq, max_length=max_length, max_source_tokens=max_source_tokens,
        label_smoothing=label_smoothing, batch_size=batch_size, seed=seed, scorer=scorer,
    )


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise GeneratorConfigError(f"{name} must be a positive integer, got {value!r}.")
    return value


class Generator(TrainablePipe):
    """The kx_generator pipe. See the module docstring."""

    def __init__(self, nlp: Language, model: Model, name: str = "kx_generator", *, transformer: str = "transformer",
                 decoding=None, target_tokenizer: str = "char", max_vocab: int = 8000, min_freq: int = 1,
                 max_length: int = 64, max_source_tokens: int = 512, label_smoothing: float = 0.0,
                 batch_size: int = 64, seed: int = 0, scorer: Optional[Callable] = score_generation):
        from .vocab import TOKENIZERS

        install_extensions()
        if target_tokenizer not in TOKENIZERS:
            raise GeneratorConfigError(f"target_tokenizer must be one of {TOKENIZERS}, got {target_tokenizer!r}.")
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise GeneratorConfigError(f"label_smoothing must lie in [0, 1), got {label_smoothing!r}.")
        if decoding is None or not hasattr(decoding, "decode"):
            raise GeneratorConfigError("decoding must be a registered kx_spacy decoding strategy.")
        self.vocab = nlp.vocab
        self.model = model
        self.name = name
        self._nlp = nlp
        self.decoding = decoding
        self.scorer = scorer
        self.cfg = {
            "transformer": transformer,
            "target_tokenizer": target_tokenizer,
            "max_vocab": int(max_vocab),
            "min_freq": int(min_freq),
            "max_length": _positive_int("max_length", max_length),
            "max_source_tokens": _positive_int("max_source_tokens", max_source_tokens),
            "label_smoothing": float(label_smoothing),
            "batch_size": _positive_int("batch_size", batch_size),
            "seed": int(seed),
            "target_vocab": None,
            "memory_width": None,
        }
        self._target_vocab = None
        self._tokenizers = None

    # ------------------------------------------------------------------ helpers
    @property
    def target_vocab(self):
        """The TargetVocab (None before initialize / load)."""
        if self._target_vocab is None and self.cfg.get("target_vocab"):
            from .vocab import TargetVocab

            self._target_vocab = TargetVocab(self.cfg["target_vocab"])
        return self._target_vocab

    @property
    def decoder(self):
        """The torch decoder module (None before initialize / load)."""
        from .architecture import get_decoder

        return get_decoder(self.model)

    def _hf_tokenizer(self, nlp: Optional[Language] = None):
        from ..backbone import Backbone

        return Backbone.from_nlp(nlp or self._nlp, self.cfg["transformer"]).tokenizer

    def _target_tokenizers(self, nlp: Optional[Language] = None):
        if self._tokenizers is None:
            from .vocab import make_target_tokenizer

            kind = self.cfg["target_tokenizer"]
            self._tokenizers = make_target_tokenizer(kind, self._hf_tokenizer(nlp) if kind == "encoder" else None)
        return self._tokenizers

    def _build(self) -> None:
        from .architecture import build_decoder

        vocab = self.target_vocab
        build_decoder(self.model, vocab_size=len(vocab), memory_width=int(self.cfg["memory_width"]),
                      pad_id=vocab.pad_id, eos_id=vocab.eos_id, never_ids=vocab.never_ids)

    def _require_ready(self) -> None:
        if self.target_vocab is None or self.decoder is None:
            raise GeneratorNotInitializedError(
                f"The '{self.name}' pipe has no target vocabulary or decoder yet: call "
                f"nlp.initialize(get_examples) with source/target examples (kx_spacy.Seq2SeqCorpus.v1), "
                f"or load a trained pipeline."
            )

    def termination_bound(self, length: Optional[int] = None):
        """The stopping guarantee of the output layer: t*(ε) for greedy / beam search and
        P(length > L) ≤ (1 − ε)^{L(L+1)/2} for sampling (no guarantee for softmax).

        length (int or None): L.
        RETURNS (TerminationBound): ``t_star``, ``sampling_tail``, ``epsilon``.
        """
        from .output_layers import termination_bound

        a = self.model.attrs
        return termination_bound(a["epsilon"] if a["output_kind"] != "softmax" else None, length)

    def _check_sources(self, docs) -> None:
        limit = self.cfg["max_source_tokens"]
        for doc in docs:
            if len(doc) > limit:
                raise SourceTooLongError(
                    f"A source doc has {len(doc)} tokens, more than the generator's window of "
                    f"max_source_tokens={limit} ({doc.text[:40]!r}...). Split the text or raise "
                    f"max_source_tokens."
                )
            if doc.has_extension("trf_data") and doc._.trf_data is None:
                raise MissingTrfDataError(
                    f"A doc reached '{self.name}' without transformer output: the pipeline needs the "
                    f"transformer pipe '{self.cfg['transformer']}' before the generator."
                )

    def _memory(self, vectors):
        """Pad per-doc token vectors into (B, S, W) memory and a (B, S) mask on the decoder's device."""
        import torch
        from thinc.api import xp2torch

        dec = self.decoder
        device = next(dec.parameters()).device
        width = int(self.cfg["memory_width"])
        S = max(int(v.shape[0]) for v in vectors)
        memory = torch.zeros(len(vectors), S, width, device=device)
        mask = torch.zeros(len(vectors), S, dtype=torch.bool, device=device)
        for i, v in enumerate(vectors):
            n = int(v.shape[0])
            if n:
                memory[i, :n] = xp2torch(v).to(device=device, dtype=memory.dtype)
                mask[i, :n] = True
        return memory, mask

    # ------------------------------------------------------------------ inference
    def predict(self, docs: Iterable) -> List[Optional[Generation]]:
        """Generate for every doc (None where a doc is empty).

        docs (Iterable[Doc]): docs that went through the transformer pipe.
        RETURNS (List[Optional[Generation]]): one per doc.
        """
        docs = list(docs)
        self._require_ready()
        out: List[Optional[Generation]] = [None] * len(docs)
        keep = [i for i, d in enumerate(docs) if len(d)]
        if not keep:
            return out
        self._check_sources([docs[i] for i in keep])
        vectors = self.model.predict([docs[i] for i in keep])
        for i, gen in zip(keep, self.generate_from_vectors(vectors)):
            out[i] = gen
        return out

    def generate_from_vectors(self, vectors, decoding=None, *, seed: Optional[int] = None,
                              max_length: Optional[int] = None) -> List[Generation]:
        """Decode from per-doc token vectors (the listener's output), batched by length.

        vectors (List[Floats2d]): per doc, (n_tokens, width) encoder states.
        decoding (DecodingStrategy or None): overrides the configured strategy.
        seed (int or None): sampling seed (default: the configured one).
        max_length (int or None): overrides the configured safety net.
        RETURNS (List[Generation]): one per doc.
        """
        from .decoding import check_max_length

        self._require_ready()
        strategy = decoding or self.decoding
        max_len = check_max_length(max_length if max_length is not None else self.cfg["max_length"])
        vocab = self.target_vocab
        _, detok = self._target_tokenizers()
        order = sorted(range(len(vectors)), key=lambda i: int(vectors[i].shape[0]))
        bs = self.cfg["batch_size"]
        out: List[Optional[Generation]] = [None] * len(vectors)
        base_seed = self.cfg["seed"] if seed is None else seed
        for start in range(0, len(order), bs):
            idx = order[start:start + bs]
            memory, mask = self._memory([vectors[i] for i in idx])
            hyps = self.decoder.decode(memory, mask, strategy, bos_id=vocab.bos_id, eos_id=vocab.eos_id,
                                       max_length=max_len, seed=base_seed + start)
            for i, h in zip(idx, hyps):
                out[i] = Generation(detok(vocab.decode(h.token_ids)), list(h.token_ids), float(h.log_prob),
                                    int(h.n_steps), h.stopped_by)
        return out  # type: ignore[return-value]

    def set_annotations(self, docs: Iterable, generations: List[Optional[Generation]]) -> None:
        install_extensions()
        for doc, gen in zip(docs, generations):
            doc._.kx_generation = (gen or Generation("", stopped_by="empty")).to_dict()

    def __call__(self, doc):
        install_extensions()
        self.set_annotations([doc], self.predict([doc]))
        return doc

    def pipe(self, stream, *, batch_size: int = 128):
        from spacy.util import minibatch

        install_extensions()
        for docs in minibatch(stream, size=batch_size):
            docs = list(docs)
            self.set_annotations(docs, self.predict(docs))
            yield from docs

    # ------------------------------------------------------------------ training
    def _encode_targets(self, texts: List[Optional[str]]):
        tok, _ = self._target_tokenizers()
        vocab = self.target_vocab
        limit = self.cfg["max_length"] - 1
        return [None if t is None else vocab.encode(tok(t))[:limit] for t in texts]

    def update(self, examples: Iterable, *, drop: float = 0.0, sgd=None, losses: Optional[dict] = None) -> dict:
        """Teacher forcing on the examples' targets (label smoothing as configured). Target
        positions holding UNK (tokens outside the target vocabulary) are left out of the loss:
        UNK is fed as an input but never generated.

        The decoder's dropout is its model setting (``dropout``); ``drop`` is not used. Every
        doc of the batch gets a gradient (zero for empty docs and docs without a target), so
        the listener always hands one back to the transformer.

        RETURNS (dict): ``losses`` with this pipe's mean per-token loss added.
        """
        import torch
        from thinc.api import torch2xp

        if losses is None:
            losses = {}
        losses.setdefault(self.name, 0.0)
        examples = list(examples)
        validate_examples(examples, "Generator.update")
        if not examples:
            return losses
        self._require_ready()
        docs = [eg.predicted for eg in examples]
        vectors, backprop = self.model.begin_update(docs)
        targets = self._encode_targets([example_target(eg) for eg in examples])
        rows = [i for i, (d, t) in enumerate(zip(docs, targets)) if len(d) and t is not None]
        ops = self.model.ops
        d_vectors = [ops.alloc2f(*v.shape) for v in vectors]
        if rows:
            vocab = self.target_vocab
            dec = self.decoder
            dec.train()
            memory, mask = self._memory([vectors[i] for i in rows])
            memory.requires_grad_(True)
            T = max(len(targets[i]) for i in rows) + 1
            device = memory.device
            tgt_in = torch.full((len(rows), T), vocab.pad_id, dtype=torch.long, device=device)
            tgt_out = torch.full((len(rows), T), vocab.pad_id, dtype=torch.long, device=device)
            for r, i in enumerate(rows):
                ids = targets[i]
                tgt_in[r, 0] = vocab.bos_id
                if ids:
                    tgt_in[r, 1:len(ids) + 1] = torch.tensor(ids, device=device)
                    tgt_out[r, :len(ids)] = torch.tensor(ids, device=device)
                tgt_out[r, len(ids)] = vocab.eos_id
            from ..models.seq2seq_decoder import sequence_nll

            tgt_mask = torch.arange(T, device=device)[None, :] <= torch.tensor(
                [len(targets[i]) for i in rows], device=device)[:, None]
            log_probs = dec(tgt_in, memory, mask, tgt_mask)
            total, count = sequence_nll(log_probs, tgt_out, vocab.pad_id, self.cfg["label_smoothing"],
                                        ignore_ids=vocab.loss_ignore_ids)
            loss = total / count.clamp(min=1)
            loss.backward()
            grads = memory.grad
            for r, i in enumerate(rows):
                n = int(vectors[i].shape[0])
                d_vectors[i] = torch2xp(grads[r, :n].detach().contiguous()).astype("float32")
            losses[self.name] += loss.item()
        backprop(d_vectors)
        if sgd is not None:
            self.finish_update(sgd)
        return losses

    def get_loss(self, examples, scores):  # pragma: no cover - the loss lives in update()
        raise NotImplementedError("kx_generator computes its loss inside update().")

    def initialize(self, get_examples: Callable, *, nlp: Optional[Language] = None) -> None:
        """Build the target vocabulary from the examples' targets and create the decoder.

        get_examples (Callable[[], Iterable[Example]]): examples whose references carry targets.
        nlp (Language): the pipeline (its transformer pipe gives the encoder width).
        """
        from ..backbone import Backbone
        from .vocab import TargetVocab

        validate_get_examples(get_examples, "Generator.initialize")
        nlp = nlp or self._nlp
        backbone = Backbone.from_nlp(nlp, self.cfg["transformer"])
        self._tokenizers = None
        tok, _ = self._target_tokenizers(nlp)
        examples = list(get_examples())
        texts = [t for t in (example_target(eg) for eg in examples) if t is not None]
        vocab = TargetVocab.build((tok(t) for t in texts), max_size=self.cfg["max_vocab"],
                                  min_freq=self.cfg["min_freq"])
        self.cfg["target_vocab"] = vocab.tokens
        self.cfg["memory_width"] = backbone.hidden_size
        self._target_vocab = vocab
        self._build()
        sample = [eg.predicted for eg in examples[:10]]
        self.model.initialize(X=sample)

    # ------------------------------------------------------------------ serialisation
    def _load_cfg(self, cfg: dict) -> None:
        from .vocab import TargetVocab

        self.cfg.update(cfg)
        self._target_vocab = TargetVocab(self.cfg["target_vocab"]) if self.cfg.get("target_vocab") else None
        self._tokenizers = None
        if self._target_vocab is not None and self.cfg.get("memory_width"):
            self._build()

    def to_bytes(self, *, exclude=tuple()) -> bytes:
        return srsly.msgpack_dumps({"cfg": srsly.json_dumps(self.cfg), "model": self.model.to_bytes()})

    def from_bytes(self, bytes_data: bytes, *, exclude=tuple()) -> "Generator":
        msg = srsly.msgpack_loads(bytes_data)
        self._load_cfg(srsly.json_loads(msg["cfg"]))
        self.model.from_bytes(msg["model"])
        return self

    def to_disk(self, path, *, exclude=tuple()) -> None:
        path = ensure_path(path)
        path.mkdir(parents=True, exist_ok=True)
        srsly.write_json(path / "cfg", self.cfg)
        self.model.to_disk(path / "model")

    def from_disk(self, path, *, exclude=tuple()) -> "Generator":
        path = ensure_path(path)
        if not (path / "cfg").exists():
            raise GeneratorVocabError(f"{path} holds no kx_generator (no cfg file).")
        self._load_cfg(srsly.read_json(path / "cfg"))
        self.model.from_disk(path / "model")
        return self
