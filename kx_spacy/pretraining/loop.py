"""MLM pretraining as a task on the training engine (:mod:`kx_spacy.training`).

This module holds what is specific to masked-LM pretraining: the corpus stream, the vocabulary,
the masking objective, the held-out evaluation and the final model folder with its manifest.
The loop itself (precision, ``torchrun`` data parallelism, clipping, schedule, NaN guard,
checkpoints and resume, progress, metrics log) is the engine's. Under ``torchrun`` every rank
reads the same stream and keeps every ``world_size``-th packed sequence.
"""
from __future__ import annotations

import itertools
import json
import os
import platform
import shutil
import warnings
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

from ..training.checkpoint import (
    CHECKPOINT_NAME, IDENTITY_FILE, check_identity, file_identity, has_checkpoint, normalize_identity, replace_dir,
)
from .corpus import Corpus, CorpusStats, Source, is_heldout
from .errors import CorpusError, PretrainConfigError, VocabSizeError
from .masking import MLMCollator, ShuffleBuffer, pack_sequences
from .model import build_mlm
from .vocab import build_vocab, save_tokenizer

MANIFEST_NAME = "kx_pretrain_manifest.json"
CORPUS_STATS_FILE = "kx_corpus_stats.json"
# Settings that decide the shape / meaning of the weights: a checkpoint made under other values
# cannot be resumed. Training settings (steps, learning rate…) may change between runs.
IDENTITY_SECTIONS = ("model", "vocab")
IDENTITY_TRAINING_KEYS = ("max_length",)


def config_identity(config: Dict, sources: Sequence[Source]) -> Dict:
    """The part of a pretraining run that a checkpoint must match to be resumed: the model and
    vocabulary settings, the sequence length, and every corpus file by resolved path and digest."""
    ident = {k: config.get(k, {}) for k in IDENTITY_SECTIONS}
    ident["training"] = {k: config.get("training", {}).get(k) for k in IDENTITY_TRAINING_KEYS}
    ident["corpus"] = [{"reader": s.reader, "options": s.options, "files": [file_identity(f) for f in s.files()]}
                       for s in sources]
    return normalize_identity(ident)


class _MLMObjective:
    """Wraps the model so that logits are computed at the selected positions only."""

    @staticmethod
    def make(model):
        import torch

        class MLMObjective(torch.nn.Module):
            def __init__(self, mlm):
                super().__init__()
                self.mlm = mlm

            def forward(self, input_ids, attention_mask, labels):
                hidden = self.mlm.bert(input_ids=input_ids, attention_mask=attention_mask)[0]
                sel = labels != -100
                logits = self.mlm.cls(hidden[sel]).float()
                target = labels[sel]
                loss = torch.nn.functional.cross_entropy(logits, target)
                correct = (logits.argmax(-1) == target).sum()
                return loss, correct, target.numel()

        return MLMObjective(model)


def _text_ids(tokenizer, texts: Iterator[str], chunk: int) -> Iterator[List[int]]:
    while True:
        batch = list(itertools.islice(texts, chunk))
        if not batch:
            return
        enc = tokenizer(batch, add_special_tokens=False, return_attention_mask=False,
                        return_token_type_ids=False)["input_ids"]
        yield from enc


class MLMTask:
    """Masked-LM pretraining as an engine task (see :mod:`kx_spacy.training`).

    model (BertForMaskedLM): the model to train. tokenizer: its fast tokenizer.
    train_texts (Callable[[], Iterator[str]]): a fresh pass over the training texts.
    training (Dict): the ``[training]`` section. heldout (List[Dict]): the collated held-out batches.
    rank (int): this process's rank (seeds its masking generator).
    """

    def __init__(self, model, tokenizer, train_texts, training: Dict, heldout: List[Dict], rank: int = 0):
        import torch

        self.module = _MLMObjective.make(model)
        self.tokenizer, self.train_texts, self.t, self.heldout = tokenizer, train_texts, training, heldout
        tok = tokenizer
        self.collator = MLMCollator(
            vocab_size=len(tok), mask_id=tok.mask_token_id, pad_id=tok.pad_token_id,
            special_ids=tok.all_special_ids, mlm_probability=training["mlm_probability"],
            mask_ratio=training["mask_ratio"], random_ratio=training["random_ratio"],
        )
        self.gen = torch.Generator().manual_seed(training["seed"] * 7919 + rank)

    def batches(self, epoch: int, rank: int, world: int) -> Iterator[List[List[int]]]:
        """One epoch of this rank's packed sequences, shuffled in a buffer, in batches."""
        from ..training.distributed import shard

        t = self.t
        ids = _text_ids(self.tokenizer, self.train_texts(), t["tokenize_chunk"])
        packed = pack_sequences(ids, max_length=t["max_length"], cls_id=self.tokenizer.cls_token_id,
                                sep_id=self.tokenizer.sep_token_id)
        shuffle = ShuffleBuffer(t["shuffle_buffer"], seed=t["seed"] * 100003 + epoch * 1009 + rank)
        it = shuffle(shard(packed, rank, world))
        while True:
            batch = list(itertools.islice(it, t["batch_size"]))
            if not batch:
                return
            yield batch

    def loss(self, module, seqs):
        device = next(self.module.parameters()).device
        batch = self.collator(seqs, self.gen)
        loss, _, _ = module(*(batch[k].to(device, non_blocking=True) for k in ("input_ids", "attention_mask", "labels")))
        return loss, {}

    def items(self, seqs) -> int:
        return sum(len(s) for s in seqs)

    def evaluate(self, module) -> Dict:
        """Held-out MLM loss (mean over masked tokens) and accuracy (nan / 0 tokens without held-out text)."""
        if not self.heldout:
            return {"heldout_loss": float("nan"), "heldout_acc": float("nan"), "heldout_tokens": 0}
        device = next(module.parameters()).device
        tot_loss, tot_ok, tot_n = 0.0, 0, 0
        for b in self.heldout:
            loss, ok, n = module(b["input_ids"].to(device), b["attention_mask"].to(device), b["labels"].to(device))
            tot_loss += float(loss) * n
            tot_ok += int(ok)
            tot_n += n
        return {"heldout_loss": tot_loss / max(1, tot_n), "heldout_acc": tot_ok / max(1, tot_n), "heldout_tokens": tot_n}

    def state_dict(self) -> Dict:
        return {"masking_generator": self.gen.get_state()}

    def load_state_dict(self, state: Dict) -> None:
        self.gen.set_state(state["masking_generator"])


class Pretrainer:
    """Everything one pretraining run needs, from config to the final model folder.

    config (Dict): a config from :func:`kx_spacy.pretraining.config.load_config`.
    output_dir (Path): the final Hugging Face model folder (written atomically at the end).
    checkpoint_dir (Optional[Path]): where checkpoints go (default: ``<output>.checkpoints``).
    resume (bool): continue from the checkpoint there (its config and corpus files must match).
    extra_sources (Sequence[str]): more corpus files / globs (``path`` or ``reader:path``).
    metrics_path (Optional[Path]): also write the manifest here.
    progress (bool): show a tqdm progress bar (main process only).
    """

    def __init__(
        self, config: Dict, output_dir: Path, *, checkpoint_dir: Optional[Path] = None,
        resume: bool = False, extra_sources: Sequence[str] = (), metrics_path: Optional[Path] = None,
        progress: bool = True,
    ):
        from ..training.distributed import DistContext

        self.cfg = config
        self.output_dir = Path(output_dir)
        self.ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else self.output_dir.with_name(self.output_dir.name + ".checkpoints")
        self.resume = resume
        self.metrics_path = Path(metrics_path) if metrics_path else None
        self.progress = progress
        sources = list(config["corpus"].get("sources", {}).values()) + list(extra_sources)
        if not sources:
            raise PretrainConfigError("No corpus: give [corpus.sources.*] in the config or input files")
        self.corpus = Corpus(sources, on_invalid=config["corpus"]["on_invalid"],
                             min_chars=config["corpus"]["min_chars"])
        self.dist = DistContext()

    # -- data --------------------------------------------------------------------------------
    def _train_texts(self, stats: Optional[CorpusStats] = None, held: Optional[Dict] = None) -> Iterator[str]:
        every = self.cfg["corpus"]["heldout_every"]
        for text in self.corpus.iter_texts(stats if stats is not None else CorpusStats()):
            if is_heldout(text, every):
                if held is not None:
                    held["texts"] += 1
                    held["chars"] += len(text)
                continue
            yield text

    def _heldout_texts(self) -> List[str]:
        every = self.cfg["corpus"]["heldout_every"]
        cap = self.cfg["corpus"]["heldout_max_texts"]
        out = []
        for t in self.corpus.iter_texts(CorpusStats()):
            if is_heldout(t, every):
                out.append(t)
                if len(out) >= cap:
                    break
        return out

    def _heldout_batches(self, collator) -> List[Dict]:
        import torch

        t = self.cfg["training"]
        texts = self._heldout_texts()
        ids = _text_ids(self.tokenizer, iter(texts), t["tokenize_chunk"])
        seqs = list(itertools.islice(
            pack_sequences(ids, max_length=t["max_length"], cls_id=self.tokenizer.cls_token_id,
                           sep_id=self.tokenizer.sep_token_id), t["eval_sequences"]))
        self.heldout_info = {"texts": len(texts), "sequences": len(seqs), "chars": sum(map(len, texts))}
        gen = torch.Generator().manual_seed(12345)  # the same masks at every evaluation
        bs = t["batch_size"]
        return [collator(seqs[i:i + bs], gen) for i in range(0, len(seqs), bs)]

    def _prepare_vocab(self, resuming: bool) -> Dict:
        """Build (or reload) the tokenizer; RETURNS the corpus statistics of the full pass."""
        from transformers import BertTokenizerFast

        tok_dir = self.ckpt_dir / "tokenizer"
        v = self.cfg["vocab"]
        every = self.cfg["corpus"]["heldout_every"]
        info = None
        if self.dist.is_main:
            if resuming and (tok_dir / CORPUS_STATS_FILE).exists():
                info = json.loads((tok_dir / CORPUS_STATS_FILE).read_text(encoding="utf-8"))
            else:
                stats = CorpusStats()
                held = {"texts": 0, "chars": 0}
                try:
                    vocab = build_vocab(v["kind"], self._train_texts(stats, held), vocab_size=v["vocab_size"],
                                        min_count=v["min_count"], lowercase=v["lowercase"])
                except VocabSizeError:
                    if held["texts"] and stats.texts == held["texts"]:
                        raise CorpusError(
                            f"Every text of the corpus ({held['texts']} of {stats.texts}) fell in the held-out "
                            f"slice, so nothing is left to train on: texts are held out by a hash of their "
                            f"content (1 in corpus.heldout_every = {every}), and this corpus has too few "
                            f"distinct texts ({len(set(self._heldout_texts()))} distinct). Give more varied "
                            "text, or set corpus.heldout_every = 0 (no held-out evaluation)."
                        ) from None
                    raise
                info = stats.to_dict()
                info["heldout_texts"], info["heldout_chars"] = held["texts"], held["chars"]
                info["train_texts"] = info["total_texts"] - held["texts"]
                info["train_chars"] = info["total_chars"] - held["chars"]
                tmp = self.ckpt_dir / "tokenizer.tmp"
                if tmp.exists():
                    shutil.rmtree(tmp)
                save_tokenizer(vocab, tmp, lowercase=v["lowercase"], model_max_length=self.cfg["model"]["max_position"])
                (tmp / CORPUS_STATS_FILE).write_text(json.dumps(info, ensure_ascii=False), encoding="utf-8")
                replace_dir(tmp, tok_dir)
        info = self.dist.broadcast_object(info)
        self.tokenizer = BertTokenizerFast.from_pretrained(str(tok_dir))
        return info

    # -- main --------------------------------------------------------------------------------
    def run(self) -> Optional[Dict]:
        from ..training.precision import resolve_device

        device = resolve_device(None, self.dist.local_rank)
        self.dist.init(device)
        fresh_ckpt = not self.ckpt_dir.exists()
        try:
            return self._run(device)
        except BaseException:
            # leave nothing half-written: a checkpoint folder this run created holds no checkpoint
            if self.dist.is_main and fresh_ckpt and not has_checkpoint(self.ckpt_dir):
                shutil.rmtree(self.ckpt_dir, ignore_errors=True)
            raise
        finally:
            self.dist.close()

    def _run(self, device) -> Optional[Dict]:
        import torch

        from ..training.engine import Trainer, TrainingConfig
        from ..training.schedules import WarmupDecay

        t = self.cfg["training"]
        self.corpus.check()
        identity = config_identity(self.cfg, self.corpus.sources)
        if self.dist.is_main:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            if self.resume:
                if not has_checkpoint(self.ckpt_dir):
                    raise PretrainConfigError(f"--resume: no checkpoint in {self.ckpt_dir}")
                final = self.ckpt_dir / CHECKPOINT_NAME
                if (final / IDENTITY_FILE).exists():
                    check_identity(json.loads((final / IDENTITY_FILE).read_text(encoding="utf-8")), identity,
                                   self.ckpt_dir)
            elif has_checkpoint(self.ckpt_dir):
                # a fresh run must not mix with an old one's files
                shutil.rmtree(self.ckpt_dir)
                self.ckpt_dir.mkdir(parents=True)
        self.dist.barrier()
        corpus_stats = self._prepare_vocab(self.resume)
        tok = self.tokenizer
        model = build_mlm(self.cfg["model"], vocab_size=len(tok), pad_id=tok.pad_token_id, seed=t["seed"])
        task = MLMTask(model, tok, self._train_texts, t, [], rank=self.dist.rank)
        task.heldout = self._heldout_batches(task.collator)
        if not task.heldout and self.dist.is_main:
            warnings.warn(
                f"The corpus is too small for a held-out split: no text of {corpus_stats['total_texts']} fell "
                f"in the held-out slice (1 in corpus.heldout_every = {self.cfg['corpus']['heldout_every']}, by "
                "a hash of the text), so no held-out loss is reported (nan). Give more text or lower "
                "corpus.heldout_every.", stacklevel=2)

        def adamw(module):
            decay, no_decay = [], []
            for name, p in model.named_parameters():
                (no_decay if p.ndim < 2 or "LayerNorm" in name else decay).append(p)
            return torch.optim.AdamW(
                [{"params": decay, "weight_decay": t["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
                lr=t["lr"], betas=tuple(t["betas"]), fused=device.type == "cuda",
            )

        engine_cfg = TrainingConfig(
            max_steps=t["max_steps"], max_time_minutes=t["max_time_minutes"], clip_mode=t["clip_mode"],
            clip_threshold=t["clip_threshold"], precision=t["precision"], eval_every=t["eval_every"],
            checkpoint_every=t["checkpoint_every"], seed=None, num_threads=t.get("num_threads"),
            progress=self.progress, desc="pretrain-mlm",
        )
        schedule = lambda opt: WarmupDecay(opt, decay=t["schedule"], warmup_steps=t["warmup_steps"],  # noqa: E731
                                           max_steps=t["max_steps"], min_lr_ratio=t["min_lr_ratio"])
        trainer = Trainer(task, engine_cfg, output_dir=self.ckpt_dir, optimizer=adamw, scheduler=schedule,
                          identity=identity, dist=self.dist)
        result = trainer.run(resume=self.resume)
        final = trainer.evaluate()
        manifest = None
        if self.dist.is_main:
            manifest = self._finish(model, final, corpus_stats, result)
        self.dist.barrier()
        return manifest

    def _finish(self, model, final, corpus_stats, result) -> Dict:
        import torch
        import transformers

        t = self.cfg["training"]
        tmp = self.output_dir.with_name("." + self.output_dir.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[t["save_dtype"]]
        model.eval()
        to_save = model.to("cpu").to(dtype)
        to_save.save_pretrained(str(tmp), safe_serialization=True)
        self.tokenizer.save_pretrained(str(tmp))
        n_params = sum(p.numel() for p in model.parameters())
        history = [{("tokens_seen" if k == "items_seen" else k): v for k, v in h.items()} for h in result.history]
        heldout = {**self.heldout_info, "every": self.cfg["corpus"]["heldout_every"]}
        if not self.heldout_info["sequences"]:
            heldout["note"] = "no held-out text: the corpus is too small for corpus.heldout_every"
        manifest = {
            "kind": "kx_spacy pretrain-mlm",
            "output": str(self.output_dir),
            "corpus": corpus_stats,
            "heldout": heldout,
            "config": self.cfg,
            "vocab_size": len(self.tokenizer),
            "parameters": n_params,
            "steps": result.steps,
            "epochs_started": result.epoch + 1,
            "tokens_seen": result.items_seen,
            "time_s": round(result.elapsed_s, 1),
            "tokens_per_s": round(result.items_seen / max(result.elapsed_s, 1e-9), 1),
            "final": final,
            "history": history,
            "bad_steps": result.bad_steps,
            "world_size": result.world_size,
            "device": result.device,
            "autocast": result.precision,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        }
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
        replace_dir(tmp, self.output_dir)
        if self.metrics_path:
            self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
            mtmp = self.metrics_path.with_name(self.metrics_path.name + ".tmp")
            mtmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
            os.replace(mtmp, self.metrics_path)
        return manifest

def pretrain(config: Dict, output_dir: Path, **kwargs) -> Dict:
    """Run MLM pretraining; RETURNS the manifest (None on ranks other than 0).

    config (Dict): the loaded config. output_dir (Path): the model folder to write.
    kwargs: see :class:`Pretrainer`.
    """
    return Pretrainer(config, output_dir, **kwargs).run()
