"""The shared-encoder adapter: one object every kx component uses to reach the pipeline's
transformer, without ever loading a second copy of it.

``Backbone.from_nlp(nlp, "transformer")`` wraps the torch module and tokenizer that a
spacy-transformers ``transformer`` pipe owns. It gives:

* the module, tokenizer, device, dtype and special-token ids (``require_mask()`` fails
  clearly when the tokenizer has no mask token);
* ``tokenize_words`` (word list -> content word pieces with per-word spans) and
  ``doc_wordpieces`` (the pieces and alignment stored in ``doc._.trf_data``);
* ``hidden_states``: a batched forward of many id sequences at once, sorted by length,
  split in two and retried whenever the device runs out of memory, with sequences longer
  than the encoder's window handled by overlapping windows (below);
* ``encode``: one padded batch, from ids or ``inputs_embeds``, optionally differentiable.

Every forward runs in ``eval()`` and restores the module's previous mode, runs under
``torch.inference_mode()`` unless gradients are asked for, and when they are, freezes the
shared parameters for the forward so that ``torch.autograd.grad`` with respect to the inputs
is the only gradient computed: nothing is ever accumulated on the shared parameters.

Long sequences (``hidden_states``): a sequence whose content is longer than the window
(``max_content_length`` = the model's maximum positions minus its special tokens) is cut into
windows of that size that overlap by half a window. Each window is run with its own special
tokens, and each content position takes its vector from the window in which it lies furthest
from an edge, so every position sees at least a quarter window of context on each side
wherever the sequence allows. The leading special token's vector comes from the first window,
the trailing one's from the last.

Only spacy-transformers' ``Transformer`` pipe is driven today. spacy-curated-transformers
keeps its module elsewhere; supporting it means adding a branch to ``_resolve_pipe`` that
returns the same (module, tokenizer) pair, nothing else changes.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy

from .errors import (
    MissingTransformerError,
    MissingTrfDataError,
    NoMaskTokenError,
    TransformerNotInitializedError,
    UnsupportedTransformerError,
    KxError,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from spacy.language import Language
    from spacy.tokens import Doc

Layers = Union[int, Sequence[int]]


@dataclass(frozen=True)
class SpecialIds:
    """Ids of the tokenizer's special tokens (None where the tokenizer has none)."""

    cls: Optional[int]
    sep: Optional[int]
    pad: int
    mask: Optional[int]
    unk: Optional[int]


@dataclass
class WordPieces:
    """Content word pieces of a word sequence (no special tokens).

    ids (List[int]): the piece ids, in order.
    spans (List[Tuple[int, int]]): per word, the [start, end) range of its pieces in ``ids``;
        ``start == end`` for a word the tokenizer drops (e.g. a lone control character).
    """

    ids: List[int]
    spans: List[Tuple[int, int]]


@dataclass
class DocWordpieces:
    """The inputs the transformer pipe ran for one Doc, read from ``doc._.trf_data``.

    input_ids / attention_mask / token_type_ids: arrays of shape (n_spans, L).
    token_rows: per spaCy token, the indices of its pieces in the flattened (n_spans * L) rows.
    """

    input_ids: numpy.ndarray
    attention_mask: numpy.ndarray
    token_type_ids: Optional[numpy.ndarray]
    token_rows: List[numpy.ndarray]


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is a device out-of-memory error (torch's, or a RuntimeError saying so)."""
    import torch

    if isinstance(err, getattr(torch, "OutOfMemoryError", ())):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def _resolve_pipe(nlp: "Language", pipe_name: str):
    """Return the (torch module, tokenizer) that the named pipe owns."""
    if pipe_name not in nlp.component_names:
        available = ", ".join(nlp.component_names) or "none"
        raise MissingTransformerError(
            f"kx_spacy needs a transformer pipe named '{pipe_name}', but the pipeline has "
            f"none (its pipes: {available}). Add one with nlp.add_pipe('transformer', "
            f"config=...) or set the component's 'transformer' setting to its name."
        )
    pipe = nlp.get_pipe(pipe_name)
    from spacy_transformers import Transformer

    if not isinstance(pipe, Transformer):
        raise UnsupportedTransformerError(
            f"The pipe '{pipe_name}' is a {type(pipe).__name__}; kx_spacy drives "
            f"spacy-transformers' Transformer pipe (factory 'transformer')."
        )
    module = pipe.model.transformer
    if module is None:
        raise TransformerNotInitializedError(
            f"The transformer pipe '{pipe_name}' has no model loaded yet: call "
            f"nlp.initialize() (or load a saved pipeline) before running kx components."
        )
    return module, pipe.model.tokenizer


class Backbone:
    """Access to the pipeline's one shared encoder. See the module docstring."""

    def __init__(self, module: "torch.nn.Module", tokenizer, pipe_name: str = "transformer"):
        self.module = module
        self.tokenizer = tokenizer
        self.pipe_name = pipe_name
        self._batch_cap: Optional[int] = None  # lowered after an out-of-memory split

    @classmethod
    def from_nlp(cls, nlp: "Language", pipe_name: str = "transformer") -> "Backbone":
        """Wrap the encoder of ``nlp``'s transformer pipe ``pipe_name``.

        nlp (Language): the pipeline.
        pipe_name (str): name of the spacy-transformers pipe.
        RETURNS (Backbone): the adapter. Cheap: make one per call, do not cache across loads.
        """
        module, tokenizer = _resolve_pipe(nlp, pipe_name)
        return cls(module, tokenizer, pipe_name)

    # ----------------------------------------------------------------- properties
    @property
    def device(self) -> "torch.device":
        return next(self.module.parameters()).device

    @property
    def dtype(self) -> "torch.dtype":
        return next(self.module.parameters()).dtype

    @property
    def config(self):
        return self.module.config

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @property
    def num_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    @property
    def special_ids(self) -> SpecialIds:
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        return SpecialIds(
            cls=tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id,
            sep=tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id,
            pad=pad,
            mask=tok.mask_token_id,
            unk=tok.unk_token_id,
        )

    def require_mask(self) -> int:
        """The mask token id, or a clear error when the tokenizer has none."""
        mask = self.special_ids.mask
        if mask is None:
            name = getattr(self.config, "_name_or_path", "") or type(self.module).__name__
            raise NoMaskTokenError(
                f"The encoder '{name}' of pipe '{self.pipe_name}' has no mask token, so "
                f"perturbed masking cannot run on it. Use a masked language model "
                f"(BERT, RoBERTa, ELECTRA, ...) or one pretrained with `kx_spacy pretrain-mlm`."
            )
        return int(mask)

    @property
    def max_positions(self) -> int:
        """Longest input (special tokens included) the encoder accepts."""
        limit = int(getattr(self.config, "max_position_embeddings", 512))
        if getattr(self.config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
            limit -= int(self.config.pad_token_id) + 1  # positions start after padding_idx
        tok_max = getattr(self.tokenizer, "model_max_length", None)
        if tok_max and tok_max < 1_000_000:
            limit = min(limit, int(tok_max))
        return limit

    def _specials(self) -> Tuple[List[int], List[int]]:
        ids = self.special_ids
        prefix = [ids.cls] if ids.cls is not None else []
        suffix = [ids.sep] if ids.sep is not None else []
        return prefix, suffix

    @property
    def max_content_length(self) -> int:
        prefix, suffix = self._specials()
        return self.max_positions - len(prefix) - len(suffix)

    @property
    def content_offset(self) -> int:
        """Position of the first content piece in an input (1 after [CLS])."""
        return len(self._specials()[0])

    def with_specials(self, content_ids: Sequence[int]) -> List[int]:
        prefix, suffix = self._specials()
        return prefix + list(content_ids) + suffix

    # ---------------------------------------------------------------- tokenising
    def tokenize_words(self, words: Sequence[str]) -> WordPieces:
        """Word pieces of a pre-split word sequence, with each word's span.

        Uses the tokenizer's own pre-split handling where it has one (fast tokenizers), so
        the pieces equal what the tokenizer gives for the words; words that produce no
        piece get an empty span.
        """
        words = list(words)
        if not words:
            return WordPieces([], [])
        tok = self.tokenizer
        if getattr(tok, "is_fast", False):
            enc = tok(words, is_split_into_words=True, add_special_tokens=False)
            ids = list(enc["input_ids"])
            word_ids = enc.word_ids()
            starts = [-1] * len(words)
            ends = [-1] * len(words)
            for pos, w in enumerate(word_ids):
                if w is None:
                    continue
                if starts[w] < 0:
                    starts[w] = pos
                ends[w] = pos + 1
            spans = []
            cursor = 0
            for s, e in zip(starts, ends):
                if s < 0:
                    spans.append((cursor, cursor))
                else:
                    spans.append((s, e))
                    cursor = e
            return WordPieces(ids, spans)
        ids: List[int] = []
        spans = []
        for word in words:
            piece_ids = tok(word, add_special_tokens=False)["input_ids"]
            spans.append((len(ids), len(ids) + len(piece_ids)))
            ids.extend(piece_ids)
        return WordPieces(ids, spans)

    def doc_wordpieces(self, doc: "Doc") -> DocWordpieces:
        """The pieces, masks and token alignment the transformer pipe stored on ``doc``."""
        trf = doc._.trf_data if doc.has_extension("trf_data") else None
        if trf is None or getattr(trf, "wordpieces", None) is None:
            raise MissingTrfDataError(
                f"The Doc has no transformer output (doc._.trf_data): run the pipe "
                f"'{self.pipe_name}' before this component."
            )
        from thinc.api import get_array_module

        wp = trf.wordpieces

        def to_numpy(arr):
            if arr is None:
                return None
            xp = get_array_module(arr)
            return arr.get() if xp is not numpy else numpy.asarray(arr)

        input_ids = to_numpy(wp.input_ids)
        attention_mask = to_numpy(wp.attention_mask)
        token_type_ids = to_numpy(getattr(wp, "token_type_ids", None))
        lengths = to_numpy(trf.align.lengths).astype("int64")
        data = to_numpy(trf.align.dataXd).reshape(-1).astype("int64")
        bounds = numpy.concatenate([[0], numpy.cumsum(lengths)])
        token_rows = [data[bounds[i] : bounds[i + 1]] for i in range(len(lengths))]
        return DocWordpieces(input_ids, attention_mask, token_type_ids, token_rows)

    # ------------------------------------------------------------------ running
    @contextlib.contextmanager
    def eval_mode(self) -> Iterator[None]:
        """Put the shared module in eval mode, restoring its previous mode on exit."""
        was_training = self.module.training
        self.module.eval()
        try:
            yield
        finally:
            self.module.train(was_training)

    @contextlib.contextmanager
    def _frozen_parameters(self) -> Iterator[None]:
        params = list(self.module.parameters())
        flags = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p, flag in zip(params, flags):
                p.requires_grad_(flag)

    def input_embeddings(self, input_ids: "torch.Tensor") -> "torch.Tensor":
        """Word embeddings of ``input_ids`` (position / type embeddings are added by the
        encoder when these are passed back as ``inputs_embeds``). No gradient to parameters."""
        import torch

        with torch.no_grad():
            return self.module.get_input_embeddings()(input_ids.to(self.device)).detach()

    def encode(
        self,
        input_ids: Optional["torch.Tensor"] = None,
        attention_mask: Optional["torch.Tensor"] = None,
        *,
        token_type_ids: Optional["torch.Tensor"] = None,
        inputs_embeds: Optional["torch.Tensor"] = None,
        layers: Layers = -1,
        grad: bool = False,
    ) -> "torch.Tensor":
        """Run one padded batch through the encoder.

        input_ids (Tensor[B, L] or None): piece ids, special tokens included.
        attention_mask (Tensor[B, L] or None): 1 for real pieces; all ones if None.
        token_type_ids (Tensor[B, L] or None): segment ids, if the model uses them.
        inputs_embeds (Tensor[B, L, H] or None): word embeddings instead of ids.
        layers (int or Sequence[int]): hidden-state index (0 = embeddings, -1 = last) or
            several, averaged.
        grad (bool): build a graph to ``inputs_embeds`` (parameters stay frozen); use
            ``torch.autograd.grad`` on the result, never ``.backward()``.
        RETURNS (Tensor[B, L, H]): the hidden states.
        """
        import torch

        if (input_ids is None) == (inputs_embeds is None):
            raise KxError("encode() takes exactly one of input_ids and inputs_embeds.")
        device = self.device
        ref = input_ids if input_ids is not None else inputs_embeds[..., 0]
        if attention_mask is None:
            attention_mask = torch.ones(ref.shape, dtype=torch.long, device=device)
        kwargs = {"attention_mask": attention_mask.to(device)}
        if input_ids is not None:
            kwargs["input_ids"] = input_ids.to(device)
        else:
            kwargs["inputs_embeds"] = inputs_embeds.to(device=device, dtype=self.dtype)
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids.to(device)
        layer_list = [layers] if isinstance(layers, int) else list(layers)
        want_all = layer_list != [-1]
        grad_ctx = self._frozen_parameters() if grad else torch.inference_mode()
        with self.eval_mode(), grad_ctx:
            out = self.module(**kwargs, output_hidden_states=want_all, return_dict=True)
            if not want_all:
                return out.last_hidden_state
            states = out.hidden_states
            picked = [states[i] for i in layer_list]
            return picked[0] if len(picked) == 1 else torch.stack(picked, 0).mean(0)

    def _windows(self, n: int) -> Tuple[List[Tuple[int, int]], numpy.ndarray]:
        """Content windows for a sequence of n pieces, and which window owns each position."""
        width = self.max_content_length
        if width <= 0:
            raise KxError(f"The encoder's window ({self.max_positions}) leaves no room for content.")
        if n <= width:
            return [(0, n)], numpy.zeros(n, dtype="int64")
        stride = max(1, width // 2)
        starts = list(range(0, n - width, stride)) + [n - width]
        windows = [(s, s + width) for s in starts]
        owner = numpy.zeros(n, dtype="int64")
        best = numpy.full(n, -1, dtype="int64")
        for w, (s, e) in enumerate(windows):
            pos = numpy.arange(s, e)
            # context missing on each side; a sequence edge is not a window edge
            left = pos - s if s > 0 else numpy.full(e - s, n)
            right = e - 1 - pos if e < n else numpy.full(e - s, n)
            margin = numpy.minimum(left, right)
            better = margin > best[s:e]
            owner[s:e][better] = w
            best[s:e][better] = margin[better]
        return windows, owner

    def hidden_states(
        self,
        sequences: Sequence[Sequence[int]],
        *,
        positions: Optional[Sequence[Sequence[int]]] = None,
        layers: Layers = -1,
        batch_size: int = 64,
        max_batch_tokens: int = 16384,
        progress: Optional[Callable[[int], None]] = None,
    ) -> List["torch.Tensor"]:
        """Hidden states of many content sequences, batched together.

        sequences (Sequence[Sequence[int]]): content piece ids, special tokens excluded.
        positions (Sequence[Sequence[int]] or None): per sequence, the rows wanted, indexed in
            the full input (0 = leading special token, ``content_offset + k`` = content piece
            k, ``content_offset + n`` = trailing special token). None: all rows.
        layers (int or Sequence[int]): see ``encode``.
        batch_size (int): most sequences (windows) per forward.
        max_batch_tokens (int): most padded pieces per forward.
        progress (callable or None): called with the number of windows finished per batch.
        RETURNS (List[Tensor[n_rows, H]]): float32, on the encoder's device, one per sequence.
        """
        import torch

        n_seq = len(sequences)
        if n_seq == 0:
            return []
        offset = self.content_offset
        prefix, suffix = self._specials()
        full_lengths = [len(s) + len(prefix) + len(suffix) for s in sequences]
        if positions is None:
            positions = [range(length) for length in full_lengths]
        # Plan the windows and where each wanted row comes from.
        chunks: List[Tuple[int, int, int]] = []  # (sequence, start, end) in content
        row_sources: List[List[Tuple[int, int, int]]] = []  # per chunk: (seq, out_row, chunk_row)
        outputs: List[Optional[torch.Tensor]] = []
        for si, (seq, pos) in enumerate(zip(sequences, positions)):
            n = len(seq)
            windows, owner = self._windows(n)
            first_chunk = len(chunks)
            for s, e in windows:
                chunks.append((si, s, e))
                row_sources.append([])
            for out_row, p in enumerate(pos):
                p = int(p)
                if p < 0 or p >= full_lengths[si]:
                    raise KxError(f"Position {p} is outside sequence {si} (length {full_lengths[si]}).")
                k = p - offset
                if k < 0:  # leading special
                    ci, crow = first_chunk, p
                elif k >= n:  # trailing special
                    ci = first_chunk + len(windows) - 1
                    s, e = windows[-1]
                    crow = offset + (e - s) + (k - n)
                else:
                    w = int(owner[k])
                    ci = first_chunk + w
                    crow = offset + k - windows[w][0]
                row_sources[ci].append((si, out_row, crow))
            outputs.append(None)
        n_rows = [len(p) for p in positions]
        hidden = self.hidden_size
        device = self.device
        for si in range(n_seq):
            outputs[si] = torch.empty((n_rows[si], hidden), dtype=torch.float32, device=device)
        # Longest first: an out-of-memory error shows up on the first batch.
        order = sorted(range(len(chunks)), key=lambda c: -(chunks[c][2] - chunks[c][1]))
        pad = self.special_ids.pad

        def run(batch: List[int]) -> None:
            lengths = [chunks[c][2] - chunks[c][1] + len(prefix) + len(suffix) for c in batch]
            width = max(lengths)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for b, c in enumerate(batch):
                si, s, e = chunks[c]
                row = prefix + list(sequences[si][s:e]) + suffix
                ids[b, : len(row)] = torch.as_tensor(row, dtype=torch.long)
                mask[b, : len(row)] = 1
            states = self.encode(ids, mask, layers=layers)
            for b, c in enumerate(batch):
                src = row_sources[c]
                if not src:
                    continue
                seq_ids = {si for si, _, _ in src}
                for si in seq_ids:
                    out_rows = [o for s_, o, _ in src if s_ == si]
                    chunk_rows = [r for s_, _, r in src if s_ == si]
                    outputs[si][out_rows] = states[b, chunk_rows].float()

        def run_splitting(batch: List[int]) -> None:
            try:
                run(batch)
            except Exception as err:  # noqa: BLE001 - only out-of-memory is handled
                if not is_out_of_memory(err):
                    raise
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                if len(batch) == 1:
                    raise KxError(
                        f"Out of memory on a single input of {max(chunks[batch[0]][2] - chunks[batch[0]][1], 1)} "
                        f"pieces on {device}; free memory or use a smaller encoder."
                    ) from err
                half = len(batch) // 2
                self._batch_cap = half if self._batch_cap is None else min(self._batch_cap, half)
                run_splitting(batch[:half])
                run_splitting(batch[half:])

        start = 0
        while start < len(order):
            cap = batch_size if self._batch_cap is None else min(batch_size, self._batch_cap)
            width = chunks[order[start]][2] - chunks[order[start]][1] + len(prefix) + len(suffix)
            size = max(1, min(cap, max_batch_tokens // max(width, 1)))
            batch = order[start : start + size]
            run_splitting(batch)
            if progress is not None:
                progress(len(batch))
            start += size
        return outputs  # type: ignore[return-value]
