"""Building the ``BertForMaskedLM`` that the workflow trains from scratch."""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict

from .errors import PretrainConfigError

if TYPE_CHECKING:  # pragma: no cover
    from transformers import BertForMaskedLM


def build_mlm(model_cfg: Dict, *, vocab_size: int, pad_id: int, seed: int = 0) -> "BertForMaskedLM":
    """A randomly initialised BertForMaskedLM.

    model_cfg (Dict): hidden_size, num_layers, num_heads, intermediate_size, max_position,
        dropout (all optional but hidden_size/num_heads must divide).
    vocab_size (int): the tokenizer's vocabulary size.
    pad_id (int): the [PAD] id.
    seed (int): initialisation seed.
    RETURNS (BertForMaskedLM): the model (fp32, CPU).
    """
    import torch
    from transformers import BertConfig, BertForMaskedLM

    hidden = int(model_cfg.get("hidden_size", 256))
    heads = int(model_cfg.get("num_heads", 4))
    if hidden % heads:
        raise PretrainConfigError(f"hidden_size {hidden} is not a multiple of num_heads {heads}")
    dropout = float(model_cfg.get("dropout", 0.1))
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=int(model_cfg.get("num_layers", 4)),
        num_attention_heads=heads,
        intermediate_size=int(model_cfg.get("intermediate_size", 4 * hidden)),
        max_position_embeddings=int(model_cfg.get("max_position", 512)),
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        pad_token_id=pad_id,
        type_vocab_size=2,
    )
    torch.manual_seed(seed)
    return BertForMaskedLM(config)
