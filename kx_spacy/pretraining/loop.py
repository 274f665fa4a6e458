"""The MLM pretraining loop: streaming data, AdamW, warm-up + decay, clipping, DDP, checkpoints.

Run in one process, or under ``torchrun`` (one process per device; gloo on CPU, nccl on GPU):
every rank reads the same stream and keeps every ``world_size``-th packed sequence.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

from .checkpoint import (
    check_identity, config_identity, identity_hash, load_checkpoint, replace_dir, save_checkpoint,
)
from .corpus import Corpus, CorpusStats, is_heldout
from .errors import PretrainConfigError
from .masking import MLMCollator, ShuffleBuffer, pack_sequences
from .model import build_mlm
from .vocab import build_vocab, save_tokenizer

MANIFEST_NAME = "kx_pretrain_manifest.json"


# ---- distributed helpers ---------------------------------------------------------------------

class _Dist:
    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1

    def init(self, device_type: str) -> None:
        if self.enabled:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def any_true(self, flag: bool) -> bool:
        if not self.enabled:
            return flag
        import torch
        import torch.distributed as dist

        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def broadcast_obj(self, obj):
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

    @property
    def main(self) -> bool:
        return self.rank == 0


def uses_bf16(precision: str, device_type: str) -> bool:
    """bf16 autocast: "auto" means yes on a GPU; on the CPU only when asked ("bf16"), as it
    pays only on CPUs with bf16 matrix units (AMX, AVX512-BF16)."""
    return precision == "bf16" or (device_type == "cuda" and precision == "auto")


def lr_factor(step: int, warmup_steps: int, progress: float, schedule: str, min_ratio: float) -> float:
    """Learning-rate multiplier: linear warm-up over ``warmup_steps`` steps times a decay.

    step (int): optimizer steps done so far.
    warmup_steps (int): length of the linear warm-up (0: none).
    progress (float): fraction of the run done, in [0, 1] (steps or time, whichever is larger).
    schedule (str): "linear" or "cosine" decay to ``min_ratio`` at progress 1, or "constant".
    RETURNS (float): the multiplier of the peak learning rate.
    """
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "constant":
        decay = 1.0
    elif schedule == "cosine":
        decay = min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        decay = min_ratio + (1.0 - min_ratio) * (1.0 - progress)
    return warm * decay


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


class Pretrainer:
    """Everything one pretraining run needs, from config to the final model folder.

    config (Dict): a config from :func:`kx_spacy.pretraining.config.load_config`.
    output_dir (Path): the final Hugging Face model folder (written atomically at the end).
    checkpoint_dir (Optional[Path]): where checkpoints go (default: ``<output>.checkpoints``).
    resume (bool): continue from the checkpoint there (its config must match).
    extra_sources (Sequence[str]): more corpus files / globs (``path`` or ``reader:path``).
    metrics_path (Optional[Path]): also write the manifest here.
    progress (bool): show a tqdm progress bar (main process only).
    """

    def __init__(
        self, config: Dict, output_dir: Path, *, checkpoint_dir: Optional[Path] = None,
        resume: bool = False, extra_sources: Sequence[str] = (), metrics_path: Optional[Path] = None,
        progress: bool = True,
    ):
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
        self.identity = config_identity(config)
        self.identity["corpus_extra"] = [str(s) for s in extra_sources]
        self.dist = _Dist()

    # -- data --------------------------------------------------------------------------------
    def _train_texts(self, stats: Optional[CorpusStats] = None, held: Optional[Dict] = None) -> Iterator[str]:
        every = self.cfg["corpus"]["heldout_every"]
        for text in self.corpus.iter_texts(stats):
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

    def _sequences(self, epoch: int) -> Iterator[List[int]]:
        t = self.cfg["training"]
        ids = _text_ids(self.tokenizer, self._train_texts(CorpusStats()), t["tokenize_chunk"])
        packed = pack_sequences(ids, max_length=t["max_length"], cls_id=self.tokenizer.cls_token_id,
                                sep_id=self.tokenizer.sep_token_id)
        mine = itertools.islice(packed, self.dist.rank, None, self.dist.world)
        shuffle = ShuffleBuffer(t["shuffle_buffer"], seed=t["seed"] * 100003 + epoch * 1009 + self.dist.rank)
        return shuffle(mine)

    def _batches(self, epoch: int, skip: int) -> Iterator[tuple]:
        """Yield (epoch, sequences consumed in that epoch, batch), forever."""
        bs = self.cfg["training"]["batch_size"]
        while True:
            it = self._sequences(epoch)
            if skip:
                for _ in itertools.islice(it, skip):
                    pass
            done = skip
            got_any = False
            while True:
                batch = list(itertools.islice(it, bs))
                if not batch:
                    break
                got_any = True
                done += len(batch)
                yield epoch, done, batch
            if not got_any and skip == 0:
                raise PretrainConfigError("The training stream is empty (every text went to the held-out slice?)")
            epoch, skip = epoch + 1, 0

    # -- main --------------------------------------------------------------------------------
    def run(self) -> Dict:
        import torch

        t = self.cfg["training"]
        use_cuda = torch.cuda.is_available() and t["precision"] != "cpu" and os.environ.get("KX_FORCE_CPU") != "1"
        device = torch.device(f"cuda:{self.dist.local_rank}" if use_cuda else "cpu")
        self.dist.device = device
        if use_cuda:
            torch.cuda.set_device(device)
        elif t.get("num_threads"):
            torch.set_num_threads(int(t["num_threads"]))
        self.dist.init(device.type)
        fresh_ckpt = not self.ckpt_dir.exists()
        try:
            return self._run(device)
        except BaseException:
            # leave nothing half-written: a checkpoint folder this run created holds no checkpoint
            if self.dist.main and fresh_ckpt and not (self.ckpt_dir / "checkpoint.pt").exists():
                shutil.rmtree(self.ckpt_dir, ignore_errors=True)
            raise
        finally:
            self.dist.close()

    def _prepare_vocab(self, state: Optional[Dict]) -> Dict:
        """Build (or reload) the tokenizer; RETURNS the corpus statistics of the full pass."""
        from transformers import BertTokenizerFast

        tok_dir = self.ckpt_dir / "tokenizer"
        v = self.cfg["vocab"]
        info = None
        if self.dist.main:
            if state is not None and tok_dir.exists():
                info = state["corpus_stats"]
            else:
                stats = CorpusStats()
                held = {"texts": 0, "chars": 0}
                vocab = build_vocab(v["kind"], self._train_texts(stats, held), vocab_size=v["vocab_size"],
                                    min_count=v["min_count"], lowercase=v["lowercase"])
                tmp = self.ckpt_dir / "tokenizer.tmp"
                if tmp.exists():
                    shutil.rmtree(tmp)
                save_tokenizer(vocab, tmp, lowercase=v["lowercase"], model_max_length=self.cfg["model"]["max_position"])
                if tok_dir.exists():
                    shutil.rmtree(tok_dir)
                os.replace(tmp, tok_dir)
                info = stats.to_dict()
                info["heldout_texts"], info["heldout_chars"] = held["texts"], held["chars"]
                info["train_texts"] = info["total_texts"] - held["texts"]
                info["train_chars"] = info["total_chars"] - held["chars"]
        info = self.dist.broadcast_obj(info)
        self.tokenizer = BertTokenizerFast.from_pretrained(str(tok_dir))
        return info

    def _run(self, device) -> Dict:
        import torch
        from tqdm import tqdm

        t = self.cfg["training"]
        self.corpus.check()
        state = None
        if self.dist.main:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            if self.resume:
                state = load_checkpoint(self.ckpt_dir)
                if state is None:
                    raise PretrainConfigError(f"--resume: no checkpoint in {self.ckpt_dir}")
                check_identity(state["identity"], self.identity, self.ckpt_dir)
            elif (self.ckpt_dir / "checkpoint.pt").exists():
                # a fresh run must not mix with an old one's files
                shutil.rmtree(self.ckpt_dir)
                self.ckpt_dir.mkdir(parents=True)
        self.dist.barrier()
        if self.resume and not self.dist.main:
            state = load_checkpoint(self.ckpt_dir)
        corpus_stats = self._prepare_vocab(state)
        tok = self.tokenizer
        model = build_mlm(self.cfg["model"], vocab_size=len(tok), pad_id=tok.pad_token_id, seed=t["seed"])
        model.to(device)
        objective = _MLMObjective.make(model)
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            (no_decay if p.ndim < 2 or "LayerNorm" in name else decay).append(p)
        optim = torch.optim.AdamW(
            [{"params": decay, "weight_decay": t["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
            lr=t["lr"], betas=tuple(t["betas"]), fused=device.type == "cuda",
        )
        step, epoch, seqs_done, tokens_seen, elapsed_before = 0, 0, 0, 0, 0.0
        history: List[Dict] = []
        if state is not None:
            model.load_state_dict(state["model"])
            optim.load_state_dict(state["optimizer"])
            step, epoch, seqs_done = state["step"], state["epoch"], state["seqs_done"]
            tokens_seen, elapsed_before = state["tokens_seen"], state["elapsed"]
            history = state.get("history", [])
        train_obj = objective
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            train_obj = DDP(objective, device_ids=[device.index] if device.type == "cuda" else None)
        collator = MLMCollator(
            vocab_size=len(tok), mask_id=tok.mask_token_id, pad_id=tok.pad_token_id,
            special_ids=tok.all_special_ids, mlm_probability=t["mlm_probability"],
            mask_ratio=t["mask_ratio"], random_ratio=t["random_ratio"],
        )
        heldout = self._heldout_batches(collator)
        use_bf16 = uses_bf16(t["precision"], device.type)
        gen = torch.Generator().manual_seed(t["seed"] * 7919 + step * 31 + self.dist.rank)
        max_steps, max_time = t["max_steps"], t["max_time_minutes"]
        max_time = float(max_time) * 60.0 if max_time else None
        # a time-limited run shows steps done and their rate, not a step total it will not reach
        bar = tqdm(total=None if max_time else max_steps, initial=step, unit="step", disable=not (self.progress and self.dist.main),
                   desc="pretrain-mlm", dynamic_ncols=True, mininterval=2.0)
        start = time.time()
        win_tokens, win_start, loss_ema = 0, time.time(), None
        batches = self._batches(epoch, seqs_done)
        model.train()
        stop = step >= max_steps
        while not stop:
            epoch, seqs_done, seqs = next(batches)
            batch = {k: v.to(device, non_blocking=True) for k, v in collator(seqs, gen).items()}
            elapsed = elapsed_before + time.time() - start
            progress = step / max_steps
            if max_time:
                progress = max(progress, elapsed / max_time)
            lr = t["lr"] * lr_factor(step, t["warmup_steps"], progress, t["schedule"], t["min_lr_ratio"])
            for group in optim.param_groups:
                group["lr"] = lr
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss, _, _ = train_obj(batch["input_ids"], batch["attention_mask"], batch["labels"])
            optim.zero_grad(set_to_none=True)
            loss.backward()
            from ..training.clipping import clip_gradients

            gnorm = clip_gradients(model.parameters(), t["clip_mode"], t["clip_threshold"])
            if math.isfinite(gnorm):
                optim.step()
            step += 1
            n_tok = int(batch["attention_mask"].sum())
            tokens_seen += n_tok * self.dist.world
            win_tokens += n_tok * self.dist.world
            lv = float(loss.detach())
            loss_ema = lv if loss_ema is None else 0.98 * loss_ema + 0.02 * lv
            now = time.time()
            if now - win_start > 5:
                tps = win_tokens / (now - win_start)
                win_tokens, win_start = 0, now
                bar.set_postfix(loss=f"{loss_ema:.3f}", tok_s=f"{tps:,.0f}", lr=f"{lr:.2e}", ep=epoch)
            bar.update(1)
            elapsed = elapsed_before + time.time() - start
            stop = step >= max_steps or (max_time is not None and elapsed >= max_time)
            if max_time is not None:
                stop = self.dist.any_true(stop)
            if t["eval_every"] and (step % t["eval_every"] == 0 or stop):
                ev = self.evaluate(model, heldout, use_bf16, device)
                ev.update(step=step, train_loss_ema=loss_ema, elapsed_s=round(elapsed, 1), tokens_seen=tokens_seen)
                history.append(ev)
                if self.dist.main:
                    bar.write(f"step {step}: held-out loss {ev['heldout_loss']:.4f} acc {ev['heldout_acc']:.4f}")
            if self.dist.main and t["checkpoint_every"] and (step % t["checkpoint_every"] == 0 or stop):
                save_checkpoint(self.ckpt_dir, {
                    "identity": self.identity, "identity_hash": identity_hash(self.identity),
                    "model": model.state_dict(), "optimizer": optim.state_dict(), "step": step,
                    "epoch": epoch, "seqs_done": seqs_done, "tokens_seen": tokens_seen,
                    "elapsed": elapsed, "history": history, "corpus_stats": corpus_stats,
                })
            self.dist.barrier() if (t["checkpoint_every"] and step % t["checkpoint_every"] == 0) else None
        bar.close()
        elapsed = elapsed_before + time.time() - start
        final = self.evaluate(model, heldout, use_bf16, device)
        manifest = None
        if self.dist.main:
            manifest = self._finish(model, final, corpus_stats, history, step, epoch, tokens_seen, elapsed, device)
        self.dist.barrier()
        return manifest

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

    def evaluate(self, model, batches: List[Dict], use_bf16: bool, device) -> Dict:
        """Held-out MLM loss (mean over masked tokens) and accuracy."""
        import torch

        if not batches:
            return {"heldout_loss": float("nan"), "heldout_acc": float("nan"), "heldout_tokens": 0}
        obj = _MLMObjective.make(model)
        was = model.training
        model.eval()
        tot_loss, tot_ok, tot_n = 0.0, 0, 0
        with torch.inference_mode(), torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
            for b in batches:
                loss, ok, n = obj(b["input_ids"].to(device), b["attention_mask"].to(device), b["labels"].to(device))
                tot_loss += float(loss) * n
                tot_ok += int(ok)
                tot_n += n
        model.train(was)
        return {"heldout_loss": tot_loss / max(1, tot_n), "heldout_acc": tot_ok / max(1, tot_n), "heldout_tokens": tot_n}

    def _finish(self, model, final, corpus_stats, history, step, epoch, tokens_seen, elapsed, device) -> Dict:
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
        manifest = {
            "kind": "kx_spacy pretrain-mlm",
            "output": str(self.output_dir),
            "corpus": corpus_stats,
            "heldout": {**self.heldout_info, "every": self.cfg["corpus"]["heldout_every"]},
            "config": self.cfg,
            "vocab_size": len(self.tokenizer),
            "parameters": n_params,
            "steps": step,
            "epochs_started": epoch + 1,
            "tokens_seen": tokens_seen,
            "time_s": round(elapsed, 1),
            "tokens_per_s": round(tokens_seen / max(elapsed, 1e-9), 1),
            "final": final,
            "history": history,
            "world_size": self.dist.world,
            "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
            "autocast": "bf16" if uses_bf16(t["precision"], device.type) else "fp32",
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
