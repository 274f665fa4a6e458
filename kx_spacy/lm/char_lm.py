"""Character language modelling on a plain-text file (tinyshakespeare), on the training engine.

``CharLMTask`` is the engine task (random windows of the 90 % training split; a fixed set of
windows of the last 10 % for validation, as nanoGPT's shakespeare_char); ``train_char_lm`` reads
a config (``configs/linear_attention/lm_*.cfg``), runs ``kx_spacy.training.Trainer`` and writes a
metrics JSON with the validation loss and bits per character.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Union

from ..errors import KxError


class CharLMDataError(KxError):
    """The character-LM text file is missing, empty or too short for the context."""


class CharVocab:
    """The sorted characters of a text, and encoding to int64 tensors."""

    def __init__(self, chars: List[str]):
        self.chars = list(chars)
        self.index = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> "CharVocab":
        return cls(sorted(set(text)))

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str):
        import torch

        unknown = set(text) - set(self.index)
        if unknown:
            raise CharLMDataError(f"characters outside the vocabulary: {sorted(unknown)[:10]}")
        return torch.tensor([self.index[c] for c in text], dtype=torch.long)


def load_text_splits(path: Union[str, Path], val_fraction: float = 0.1):
    """The text's vocabulary and its train / validation id tensors (the last ``val_fraction``)."""
    path = Path(path)
    if not path.exists():
        raise CharLMDataError(f"no text file at {path} (set data_dir / paths.text)")
    text = path.read_text(encoding="utf8")
    if len(text) < 100:
        raise CharLMDataError(f"{path} has {len(text)} characters: too short for a language model")
    vocab = CharVocab.from_text(text)
    ids = vocab.encode(text)
    n = int(len(ids) * (1.0 - val_fraction))
    return vocab, ids[:n], ids[n:]


class CharLMTask:
    """Engine task: next-character prediction over random windows.

    module (CharLM): the model. train_ids / val_ids (Tensor): the splits.
    batch_size (int): windows per batch. context (int): window length.
    batches_per_epoch (int): how many batches one "epoch" yields (windows are random).
    eval_batches (int): validation batches (fixed windows, the same for every evaluation).
    seed (int): the window sampler's seed.
    """

    def __init__(self, module, train_ids, val_ids, *, batch_size: int, context: int, batches_per_epoch: int = 1000,
                 eval_batches: int = 20, seed: int = 0):
        import torch

        for name, ids in (("training", train_ids), ("validation", val_ids)):
            if len(ids) <= context + 1:
                raise CharLMDataError(f"the {name} split ({len(ids)} chars) is shorter than context {context} + 1")
        self.module = module
        self.train_ids, self.val_ids = train_ids, val_ids
        self.batch_size, self.context = batch_size, context
        self.batches_per_epoch, self.eval_batches, self.seed = batches_per_epoch, eval_batches, seed
        g = torch.Generator().manual_seed(seed + 99991)
        starts = torch.randint(0, len(val_ids) - context - 1, (eval_batches, batch_size), generator=g)
        self._val_starts = starts

    def _windows(self, ids, starts):
        import torch

        offs = torch.arange(self.context + 1)
        w = ids[starts.reshape(-1, 1) + offs]
        return w[:, :-1].contiguous(), w[:, 1:].contiguous()

    def batches(self, epoch: int, rank: int, world: int) -> Iterator:
        import torch

        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch * 7919 + rank)
        for _ in range(self.batches_per_epoch):
            starts = torch.randint(0, len(self.train_ids) - self.context - 1, (self.batch_size,), generator=g)
            yield self._windows(self.train_ids, starts)

    def loss(self, module, batch):
        x, y = batch
        device = next(module.parameters()).device
        loss = module(x.to(device), y.to(device))
        return loss, {}

    def items(self, batch) -> int:
        return int(batch[0].numel())

    def evaluate(self, module) -> Dict[str, float]:
        import torch

        device = next(module.parameters()).device
        total = 0.0
        with torch.no_grad():
            for starts in self._val_starts:
                x, y = self._windows(self.val_ids, starts)
                total += float(module(x.to(device), y.to(device)))
        val = total / len(self._val_starts)
        return {"val_loss": val, "val_bits_per_char": val / math.log(2)}


def make_optimizer(name: str, groups, *, lr: float, beta2: float = 0.99, momentum: float = 0.9):
    """"adamw" (betas 0.9, beta2) or "sgd" (with momentum); clipping is the engine's clip_mode."""
    import torch

    if name == "adamw":
        cls, kwargs = torch.optim.AdamW, {"lr": lr, "betas": (0.9, beta2)}
    elif name == "sgd":
        cls, kwargs = torch.optim.SGD, {"lr": lr, "momentum": momentum}
    else:
        raise KxError(f"training.optimizer must be 'adamw' or 'sgd', not {name!r}")
    return cls(groups, **kwargs)


# ----------------------------------------------------------------------------- config + run
DEFAULTS: Dict[str, Dict[str, Any]] = {
    "paths": {"text": "../shared/data/tinyshakespeare/input.txt"},
    "model": {"attention": "linear", "d_model": 128, "n_layers": 4, "n_heads": 4, "context": 256,
              "dropout": 0.0, "mlp_ratio": 4.0, "feature_map": "elu", "chunk_size": 64, "output_norm": False,
              "positions": "learned", "short_conv": 0,
              "short_conv_at": "input"},
    "training": {"max_steps": 2000, "max_time_minutes": 5.0, "batch_size": 12, "lr": 1e-3, "min_lr_ratio": 0.1,
                 "warmup_steps": 100, "decay": "cosine", "weight_decay": 0.1, "optimizer": "adamw", "beta2": 0.99,
                 "momentum": 0.9,
                 "clip_mode": "global_norm", "clip_threshold": 1.0, "precision": "fp32", "eval_every": 250,
                 "eval_batches": 20, "num_threads": 1, "seed": 1337, "device": None, "progress": True,
                 "clock": "wall"},
}


def load_lm_config(path: Optional[Union[str, Path]] = None, overrides: Optional[Dict[str, Any]] = None) -> Dict:
    """The defaults, updated from a thinc-style .cfg file and then from dotted ``overrides``.

    path (Optional[Path]): a config with [paths], [model], [training] sections.
    overrides (Optional[Dict[str, Any]]): e.g. {"model.attention": "softmax"}.
    RETURNS (Dict): {"paths": …, "model": …, "training": …}.
    """
    from thinc.api import Config

    cfg = {k: dict(v) for k, v in DEFAULTS.items()}
    if path is not None:
        loaded = Config().from_disk(path, interpolate=True)
        for section, values in loaded.items():
            if section not in cfg:
                raise KxError(f"{path}: unknown section [{section}] (use paths, model, training)")
            unknown = set(values) - set(cfg[section])
            if unknown:
                raise KxError(f"{path}: unknown settings in [{section}]: {sorted(unknown)}")
            cfg[section].update(values)
    for key, value in (overrides or {}).items():
        section, _, name = key.partition(".")
        if section not in cfg or name not in cfg[section]:
            raise KxError(f"unknown override {key!r}")
        cfg[section][name] = value
    return cfg


def build_char_lm(cfg: Dict, vocab_size: int):
    from ..models.char_lm import CharLM

    m = dict(cfg["model"])
    return CharLM(vocab_size, m.pop("context"), m.pop("d_model"), m.pop("n_layers"), m.pop("n_heads"), **m)


def train_char_lm(cfg: Dict, output_dir: Union[str, Path], metrics_path: Optional[Union[str, Path]] = None,
                  resume: bool = False, clip_mode: Optional[str] = None) -> Dict[str, Any]:
    """Train the character LM on the engine; write and return its metrics.

    cfg (Dict): from ``load_lm_config``.
    output_dir (Path): the engine's folder (checkpoint, metrics.jsonl).
    metrics_path (Optional[Path]): where to write the summary JSON.
    resume (bool): continue from the checkpoint in output_dir.
    clip_mode (Optional[str]): override training.clip_mode.
    RETURNS (Dict[str, Any]): the summary (validation loss, bits/char, steps, time, …).
    """
    import torch

    from ..training import Trainer, TrainingConfig, WarmupDecay, file_identity

    tr = dict(cfg["training"])
    if clip_mode is not None:
        tr["clip_mode"] = clip_mode
    if tr["num_threads"]:
        torch.set_num_threads(int(tr["num_threads"]))
    vocab, train_ids, val_ids = load_text_splits(cfg["paths"]["text"])
    torch.manual_seed(int(tr["seed"]))
    model = build_char_lm(cfg, len(vocab))
    task = CharLMTask(model, train_ids, val_ids, batch_size=int(tr["batch_size"]), context=int(cfg["model"]["context"]),
                      eval_batches=int(tr["eval_batches"]), seed=int(tr["seed"]))
    decay_params = [p for n, p in model.named_parameters() if p.dim() >= 2]
    other_params = [p for n, p in model.named_parameters() if p.dim() < 2]

    groups = [{"params": decay_params, "weight_decay": float(tr["weight_decay"])},
              {"params": other_params, "weight_decay": 0.0}]

    def optimizer(module):
        return make_optimizer(tr["optimizer"], groups, lr=float(tr["lr"]), beta2=float(tr["beta2"]),
                              momentum=float(tr["momentum"]))

    tcfg = TrainingConfig(
        max_steps=int(tr["max_steps"]), max_time_minutes=tr["max_time_minutes"], clip_mode=tr["clip_mode"],
        clip_threshold=float(tr["clip_threshold"]), precision=tr["precision"], eval_every=int(tr["eval_every"]),
        seed=int(tr["seed"]), num_threads=tr["num_threads"], progress=bool(tr["progress"]), device=tr["device"],
        desc=f"char-lm {cfg['model']['attention']}", clock=str(tr["clock"]),
    )

    def scheduler(opt):
        return WarmupDecay(opt, decay=tr["decay"], warmup_steps=int(tr["warmup_steps"]), max_steps=int(tr["max_steps"]),
                           min_lr_ratio=float(tr["min_lr_ratio"]))

    identity = {"model": cfg["model"],
                "training": {k: v for k, v in tr.items() if k != "progress"},
                "data": file_identity(cfg["paths"]["text"])}
    t0 = time.time()
    result = Trainer(task, tcfg, output_dir=output_dir, optimizer=optimizer, scheduler=scheduler,
                     identity=identity).run(resume=resume)
    last_eval = result.history[-1] if result.history else task.evaluate(model.eval())
    summary = {
        "attention": cfg["model"]["attention"],
        "clip_mode": tr["clip_mode"],
        "context": cfg["model"]["context"],
        "val_loss": last_eval.get("val_loss"),
        "val_bits_per_char": last_eval.get("val_bits_per_char"),
        "best_val_loss": min((h["val_loss"] for h in result.history if "val_loss" in h), default=None),
        "steps": result.steps,
        "elapsed_s": result.elapsed_s,
        "wall_s": time.time() - t0,
        "stopped_by": result.stopped_by,
        "bad_steps": result.bad_steps,
        "train_loss_ema": result.loss_ema,
        "parameters": sum(p.numel() for p in model.parameters()),
        "device": result.device,
        "precision": result.precision,
        "history": result.history,
        "config": cfg,
    }
    if metrics_path is not None:
        metrics_path = Path(metrics_path)
        metrics_path.parent.mkdir(parents=True, exist_ok=True)
        metrics_path.write_text(json.dumps(summary, indent=2, default=str), encoding="utf8")
    return summary
