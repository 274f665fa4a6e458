"""A transformer decoder over encoder states, for teacher forcing and step decoding.

Pure torch (no spaCy, no thinc). Each layer is pre-norm: causal self-attention, cross-attention
to the encoder states (``memory``, with a padding mask), an MLP. The self-attention is either
softmax attention with a KV cache or causal linear attention with its O(1) recurrent state
(``attention="softmax" | "linear"``, both from ``models/linear_attention.py``, which share
their parameters). Positions are sinusoidal, so decoding has no length limit of its own.
The output layer is injected (softmax, self-terminating or non-monotonic self-terminating,
see ``generation/output_layers.py``); it turns the final hidden states into log-probabilities.

API:

* ``forward(tgt_in, memory, memory_mask)``: teacher forcing, (B, T) ids -> (B, T, V) log-probs.
* ``init_state(memory, memory_mask)``, ``step(tokens, state)``, ``reorder_state(state,
  index)``: incremental decoding (the *step model* the decoding strategies drive); the
  cross-attention keys / values are computed once per decode.
* ``decode(memory, memory_mask, strategy, max_length=..., seed=None)``: runs a strategy
  (``generation/decoding.py``) for the whole batch.
* ``sequence_nll(log_probs, targets, pad_id, label_smoothing, ignore_ids)`` (module
  function): the teacher-forcing loss.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sinusoid(positions: Tensor, d_model: int) -> Tensor:
    """Sinusoidal encodings of integer ``positions`` (any shape) -> (..., d_model)."""
    half = (d_model + 1) // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, device=positions.device, dtype=torch.float32) / half)
    angles = positions.float().unsqueeze(-1) * freq
    enc = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    return enc[..., :d_model]


class CrossAttention(nn.Module):
    """Multi-head attention from decoder positions to the encoder states."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.kv_proj = nn.Linear(d_model, 2 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def memory_kv(self, memory: Tensor):
        b, s, _ = memory.shape
        k, v = self.kv_proj(memory).view(b, s, 2, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return k, v  # (B, h, S, d)

    def attend(self, x: Tensor, k: Tensor, v: Tensor, memory_mask: Tensor) -> Tensor:
        """x (B, T, d_model) -> (B, T, d_model); memory_mask (B, S) bool (True = real)."""
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        allowed = memory_mask[:, None, None, :]
        allowed = allowed | ~allowed.any(-1, keepdim=True)  # an all-padding row attends anywhere
        o = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=allowed)
        return self.out_proj(o.transpose(1, 2).reshape(b, t, -1))


class DecoderLayer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, attention: str, mlp_ratio: float, dropout: float,
                 attention_kwargs: Optional[dict] = None):
        super().__init__()
        from .linear_attention import make_attention

        self.ln_self = nn.LayerNorm(d_model)
        self.self_attn = make_attention(attention, d_model, n_heads, causal=True, **(attention_kwargs or {}))
        self.ln_cross = nn.LayerNorm(d_model)
        self.cross = CrossAttention(d_model, n_heads)
        self.ln_mlp = nn.LayerNorm(d_model)
        hidden = max(1, int(round(mlp_ratio * d_model)))
        self.mlp = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, x, tgt_mask, mem_k, mem_v, memory_mask):
        x = x + self.drop(self.self_attn(self.ln_self(x), tgt_mask))
        x = x + self.drop(self.cross.attend(self.ln_cross(x), mem_k, mem_v, memory_mask))
        return x + self.drop(self.mlp(self.ln_mlp(x)))

    def step(self, x_t, self_state, mem_k, mem_v, memory_mask):
        a, self_state = self.self_attn.step(self.ln_self(x_t), self_state)
        x_t = x_t + a
        x_t = x_t + self.cross.attend(self.ln_cross(x_t).unsqueeze(1), mem_k, mem_v, memory_mask).squeeze(1)
        return x_t + self.mlp(self.ln_mlp(x_t)), self_state


@dataclass
class DecoderState:
    """Everything a decoding step needs, one row per sequence (``reorder_state`` indexes rows).

    self_states (List): per layer, the KV cache or linear-attention state.
    memory_kv (List): per layer, the cross-attention (keys, values), (B, h, S, d) each.
    memory_mask (Tensor): (B, S) bool.
    out_state (Tensor): (B,) the output layer's running state.
    position (int): tokens consumed so far.
    """

    self_states: List
    memory_kv: List
    memory_mask: Tensor
    out_state: Tensor
    position: int = 0

    @property
    def device(self) -> torch.device:
        return self.memory_mask.device


class Seq2SeqDecoder(nn.Module):
    """Transformer decoder with cross-attention and an injected output layer.

    vocab_size (int): size of the target vocabulary.
    memory_width (int): width of the encoder states.
    output_layer (nn.Module): maps (…, d_model) hidden states to log-probs; has ``step`` and
        ``initial_state`` (see generation/output_layers.py).
    d_model, n_layers, n_heads (int): decoder size.
    mlp_ratio (float): MLP hidden width / d_model.
    dropout (float): dropout on the embeddings and the residual branches (training only).
    attention (str): "softmax" (KV cache) or "linear" (recurrent state) self-attention.
    attention_kwargs (dict or None): passed to the attention module (e.g. feature_map).
    pad_id (int): the padding id (its embedding stays zero).
    """

    def __init__(self, vocab_size: int, memory_width: int, output_layer: nn.Module, *, d_model: int = 256,
                 n_layers: int = 2, n_heads: int = 4, mlp_ratio: float = 4.0, dropout: float = 0.1,
                 attention: str = "softmax", attention_kwargs: Optional[dict] = None, pad_id: int = 0):
        super().__init__()
        if attention not in ("softmax", "linear"):
            raise ValueError(f"attention must be 'softmax' or 'linear', not {attention!r}")
        self.vocab_size, self.d_model, self.pad_id, self.attention = vocab_size, d_model, pad_id, attention
        self.embed = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
        self.memory_proj = nn.Linear(memory_width, d_model)
        self.layers = nn.ModuleList(
            DecoderLayer(d_model, n_heads, attention, mlp_ratio, dropout, attention_kwargs) for _ in range(n_layers)
        )
        self.ln_out = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)
        self.output = output_layer
        self.scale = math.sqrt(d_model)

    # ------------------------------------------------------------ teacher forcing
    def _memory(self, memory: Tensor, memory_mask: Tensor):
        mem = self.memory_proj(memory.to(self.memory_proj.weight.dtype))
        return [layer.cross.memory_kv(mem) for layer in self.layers], memory_mask.bool()

    def hidden(self, tgt_in: Tensor, memory: Tensor, memory_mask: Tensor, tgt_mask: Optional[Tensor] = None) -> Tensor:
        """Final hidden states (B, T, d_model) under teacher forcing."""
        kvs, mmask = self._memory(memory, memory_mask)
        pos = torch.arange(tgt_in.shape[1], device=tgt_in.device)
        x = self.embed(tgt_in) * self.scale + sinusoid(pos, self.d_model).to(self.embed.weight.dtype)
        x = self.drop(x)
        if tgt_mask is None:
            tgt_mask = tgt_in != self.pad_id
            tgt_mask[:, 0] = True
        for layer, (k, v) in zip(self.layers, kvs):
            x = layer(x, tgt_mask, k, v, mmask)
        return self.ln_out(x)

    def forward(self, tgt_in: Tensor, memory: Tensor, memory_mask: Tensor, tgt_mask: Optional[Tensor] = None) -> Tensor:
        """Teacher forcing: log-probs (B, T, V) of the next token after each input position.

        tgt_in (Tensor): (B, T) ids, BOS first, right-padded with pad_id.
        memory (Tensor): (B, S, memory_width) encoder states. memory_mask (Tensor): (B, S) bool.
        """
        return self.output(self.hidden(tgt_in, memory, memory_mask, tgt_mask))

    # ------------------------------------------------------------ step decoding
    def init_state(self, memory: Tensor, memory_mask: Tensor) -> DecoderState:
        """The decoding state before the first step, for a batch of encoder states."""
        kvs, mmask = self._memory(memory, memory_mask)
        b = memory.shape[0]
        self_states = [layer.self_attn.init_state(b, device=memory.device) for layer in self.layers]
        return DecoderState(self_states, kvs, mmask, self.output.initial_state(b, memory.device), 0)

    def step(self, tokens: Tensor, state: DecoderState):
        """One step: previous tokens (B,) -> (log-probs (B, V), new state)."""
        pos = torch.full((tokens.shape[0],), state.position, device=tokens.device)
        x = self.embed(tokens) * self.scale + sinusoid(pos, self.d_model).to(self.embed.weight.dtype)
        new_states = []
        for layer, s, (k, v) in zip(self.layers, state.self_states, state.memory_kv):
            x, s = layer.step(x, s, k, v, state.memory_mask)
            new_states.append(s)
        log_probs, out_state = self.output.step(self.ln_out(x), state.out_state)
        return log_probs, DecoderState(new_states, state.memory_kv, state.memory_mask, out_state, state.position + 1)

    def reorder_state(self, state: DecoderState, index: Tensor) -> DecoderState:
        """Keep / repeat the rows ``index`` of every part of the state."""
        index = index.to(state.memory_mask.device)
        return DecoderState(
            [s.index_select(index) for s in state.self_states],
            [(k.index_select(0, index), v.index_select(0, index)) for k, v in state.memory_kv],
            state.memory_mask.index_select(0, index),
            state.out_state.index_select(0, index),
            state.position,
        )

    @torch.no_grad()
    def decode(self, memory: Tensor, memory_mask: Tensor, strategy, *, bos_id: int, eos_id: int,
               max_length: int, seed: Optional[int] = None):
        """Decode the whole batch with ``strategy`` (a generation.decoding strategy).

        RETURNS (List[Hypothesis]): one per row of ``memory``.
        """
        was_training = self.training
        self.eval()
        try:
            state = self.init_state(memory, memory_mask)
            return strategy.decode(self, state, memory.shape[0], bos_id=bos_id, eos_id=eos_id,
                                   max_length=max_length, seed=seed)
        finally:
            self.train(was_training)


def sequence_nll(log_probs: Tensor, targets: Tensor, pad_id: int, label_smoothing: float = 0.0,
                 ignore_ids: Sequence[int] = ()):
    """Teacher-forcing loss: (sum of per-token losses, number of target tokens counted).

    log_probs (Tensor): (B, T, V). targets (Tensor): (B, T) ids, pad_id where there is none.
    label_smoothing (float): mix the NLL with the mean −log p over the tokens the layer can
        produce (those with a finite log-prob), weight ``label_smoothing``.
    ignore_ids (Sequence[int]): further target ids left out (neither summed nor counted),
        e.g. UNK, which the output layers never produce (its log-prob is −inf).
    """
    mask = targets != pad_id
    for i in ignore_ids:
        mask &= targets != int(i)
    nll = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    if label_smoothing > 0.0:
        finite = torch.isfinite(log_probs)
        smooth = -(log_probs.masked_fill(~finite, 0.0).sum(-1)) / finite.sum(-1).clamp(min=1)
        nll = (1.0 - label_smoothing) * nll + label_smoothing * smooth
    nll = nll.masked_fill(~mask, 0.0)
    return nll.sum(), mask.sum()
