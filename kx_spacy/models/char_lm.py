"""A causal character language model around AttentionStack (pure torch, nanoGPT-shaped)."""
from typing import Optional

import torch
from torch import Tensor, nn

from .linear_attention import AttentionStack


class CharLM(nn.Module):
    """Token embeddings (+ positions), a causal AttentionStack, a tied output layer.

    vocab_size (int): number of characters.
    context (int): longest input (the size of the position table with positions = "learned").
    d_model, n_layers, n_heads (int): the stack's shape.
    attention (str): "linear" or "softmax".
    dropout (float): embedding and block dropout.
    mlp_ratio (float): MLP width / d_model.
    positions (str): "learned" (a table of ``context`` rows, as nanoGPT), "sinusoidal" (the
        stack's, no length limit) or "none" (NoPE: causal attention infers position).
    short_conv (int): 0 or the kernel of each block's causal depthwise convolution (token shift).
    short_conv_at (str): "input" (the block's input) or "attention" (the attention's input).
    **attention_kwargs: feature_map, chunk_size, output_norm, ... (linear attention only).
    """

    def __init__(self, vocab_size: int, context: int, d_model: int = 128, n_layers: int = 4, n_heads: int = 4,
                 *, attention: str = "linear", dropout: float = 0.0, mlp_ratio: float = 4.0,
                 positions: str = "learned", short_conv: int = 0, short_conv_at: str = "input", **attention_kwargs):
        super().__init__()
        if positions not in ("learned", "sinusoidal", "none"):
            raise ValueError(f"positions must be 'learned', 'sinusoidal' or 'none', not {positions!r}")
        if attention == "softmax":
            for key in ("feature_map", "chunk_size", "output_norm", "kernel", "eps", "normalize"):
                attention_kwargs.pop(key, None)
        self.context = context
        self.tok = nn.Embedding(vocab_size, d_model)
        self.positions = positions
        self.pos = nn.Embedding(context, d_model) if positions == "learned" else None
        self.drop = nn.Dropout(dropout)
        self.stack = AttentionStack(n_layers, d_model, n_heads, attention=attention, causal=True,
                                    mlp_ratio=mlp_ratio, dropout=dropout,
                                    positions="sinusoidal" if positions == "sinusoidal" else "none",
                                    short_conv=short_conv, short_conv_at=short_conv_at, **attention_kwargs)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.head.weight = self.tok.weight
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def forward(self, idx: Tensor, targets: Optional[Tensor] = None):
        """idx (Tensor): (B, T) int64, T ≤ context. RETURNS: logits (B, T, V), or the mean
        cross-entropy when ``targets`` (B, T) are given."""
        x = self.tok(idx)
        if self.pos is not None:
            x = x + self.pos(torch.arange(idx.shape[1], device=idx.device))
        x = self.drop(x)
        logits = self.head(self.stack(x))
        if targets is None:
            return logits
        return nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))
