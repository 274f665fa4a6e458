"""Sequence-level fine-tuning of a trained kx_generator pipeline (MGS, PG, MRT or MLE).

The encoder (the shared transformer) is frozen: every pair's source is encoded once and its
token vectors (the generator's listener output) are kept, so an update costs decoder passes
only — K + 1 greedy decodes for MGS, batched into fewer decoder passes when the subset is the
output layer (``GeneratorSequenceTask.decode_candidates``). What is trained is the pipe's torch decoder
(``pipe.decoder``), optionally only a parameter subset (name patterns, e.g. the output layer).
The run is a :class:`kx_spacy.training.Trainer` run (checkpoints, resume, metrics log, NaN
guard); the updated decoder is written back into the pipeline, which is saved with
``nlp.to_disk``.

* :func:`encode_pairs`: sources → token vectors, targets → ids (one encoder pass).
* :class:`GeneratorSequenceTask`: the ``SequenceTask`` protocol of ``mgs.py`` for the decoder.
* :func:`finetune_generator`: the ``finetune-generator-mgs`` command's work.
* :func:`evaluate_generator_rows`: the comparison rows (task loss, chrF / BLEU, r_L at the
  decode budget, repetition, perplexity) of one pipeline on held-out pairs.
* :func:`compare_generator_methods`: start + each method × seeds, with mean and spread.
"""
from __future__ import annotations

import math
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from ..errors import KxError


class GeneratorFinetuneError(KxError):
    """The pipeline or data given to the sequence-level fine-tune cannot be used."""


class GenerationText(str):
    """A decoded text that also carries its ids and how decoding stopped (for the losses)."""

    ids: List[int]
    stopped_by: str

    def __new__(cls, text: str, ids: Sequence[int], stopped_by: str):
        obj = super().__new__(cls, text)
        obj.ids = list(ids)
        obj.stopped_by = stopped_by
        return obj


@dataclass
class EncodedPairs:
    """Frozen-encoder data: per pair the token vectors, the target ids and both texts."""

    vectors: List[Any]
    targets: List[List[int]]
    sources: List[str]
    references: List[str]

    def __len__(self) -> int:
        return len(self.targets)


def generator_pipe(nlp, name: str = "kx_generator"):
    """The trained kx_generator pipe of ``nlp`` (clear errors otherwise)."""
    if name not in nlp.pipe_names:
        raise GeneratorFinetuneError(f"The pipeline has no '{name}' pipe (pipes: {nlp.pipe_names}).")
    pipe = nlp.get_pipe(name)
    if getattr(pipe, "decoder", None) is None or getattr(pipe, "target_vocab", None) is None:
        raise GeneratorFinetuneError(f"The '{name}' pipe has no trained decoder: load a train-generator output.")
    return pipe


def encode_pairs(nlp, pairs: Sequence[Tuple[str, str]], name: str = "kx_generator",
                 batch_size: int = 64) -> EncodedPairs:
    """Encode ``pairs`` once: source token vectors (pipeline minus the generator) and target ids.

    Pairs with an empty source or target are dropped.
    RETURNS (EncodedPairs): the encoded data.
    """
    pipe = generator_pipe(nlp, name)
    pairs = [(s, t) for s, t in pairs if s.strip() and t.strip()]
    if not pairs:
        raise GeneratorFinetuneError("No usable (source, target) pair.")
    docs = list(nlp.pipe([s for s, _ in pairs], disable=[name], batch_size=batch_size))
    vectors = []
    for start in range(0, len(docs), batch_size):
        vectors.extend(pipe.model.predict(docs[start:start + batch_size]))
    targets = pipe._encode_targets([t for _, t in pairs])
    keep = [i for i, d in enumerate(docs) if len(d)]
    return EncodedPairs([vectors[i] for i in keep], [targets[i] for i in keep],
                        [pairs[i][0] for i in keep], [pairs[i][1] for i in keep])


@dataclass
class GeneratorBatch:
    memory: Any
    mask: Any
    tgt_in: Any
    tgt_out: Any
    tgt_mask: Any
    references: List[str]
    lengths: List[int]


class GeneratorSequenceTask:
    """The SequenceTask protocol (kx_spacy.generation.mgs) for a kx_generator decoder.

    pipe: the kx_generator pipe (target vocabulary, detokeniser, memory padding).
    data (EncodedPairs): the encoded pairs batches index into.
    seed (int): seed of the sampling decodes (PG / MRT).
    temperature (float): sampling temperature for PG / MRT.
    """

    def __init__(self, pipe, data: EncodedPairs, *, seed: int = 0, temperature: float = 1.0):
        import torch

        from .decoding import Greedy, Sampling

        self.pipe, self.data = pipe, data
        self.vocab = pipe.target_vocab
        self._detok = pipe._target_tokenizers()[1]
        self.greedy = Greedy()
        self.sampling = Sampling(temperature=temperature, consistent=True)
        self.generator = torch.Generator()
        self.generator.manual_seed(seed)

    def make_batch(self, indices: Sequence[int]) -> GeneratorBatch:
        import torch

        vocab = self.vocab
        memory, mask = self.pipe._memory([self.data.vectors[i] for i in indices])
        targets = [self.data.targets[i] for i in indices]
        tgt_in, tgt_out, tgt_mask = self._teacher(targets, memory.device)
        return GeneratorBatch(memory, mask, tgt_in, tgt_out, tgt_mask,
                              [self.data.references[i] for i in indices], [len(t) + 1 for t in targets])

    def _teacher(self, targets: Sequence[Sequence[int]], device):
        import torch

        vocab = self.vocab
        T = max(len(t) for t in targets) + 1
        tgt_in = torch.full((len(targets), T), vocab.pad_id, dtype=torch.long)
        tgt_out = torch.full((len(targets), T), vocab.pad_id, dtype=torch.long)
        for r, ids in enumerate(targets):
            tgt_in[r, 0] = vocab.bos_id
            if ids:
                tgt_in[r, 1:len(ids) + 1] = torch.tensor(list(ids), dtype=torch.long)
                tgt_out[r, :len(ids)] = torch.tensor(list(ids), dtype=torch.long)
            tgt_out[r, len(ids)] = vocab.eos_id
        tgt_mask = torch.arange(T)[None, :] <= torch.tensor([len(t) for t in targets])[:, None]
        return tgt_in.to(device), tgt_out.to(device), tgt_mask.to(device)

    def _nll(self, module, memory, mask, tgt_in, tgt_out, tgt_mask):
        from ..models.seq2seq_decoder import sequence_nll

        log_probs = module(tgt_in, memory, mask, tgt_mask)
        return sequence_nll(log_probs, tgt_out, self.vocab.pad_id, ignore_ids=self.vocab.loss_ignore_ids)

    def mle_loss(self, module, batch: GeneratorBatch):
        total, count = self._nll(module, batch.memory, batch.mask, batch.tgt_in, batch.tgt_out, batch.tgt_mask)
        return total / count.clamp(min=1)

    def _texts(self, hyps) -> List[GenerationText]:
        return [GenerationText(self._detok(self.vocab.decode(h.token_ids)), h.token_ids, h.stopped_by)
                for h in hyps]

    def decode(self, module, batch: GeneratorBatch, max_length: int) -> List[GenerationText]:
        hyps = module.decode(batch.memory, batch.mask, self.greedy, bos_id=self.vocab.bos_id,
                             eos_id=self.vocab.eos_id, max_length=max_length)
        return self._texts(hyps)

    def supports_candidates(self, module, names: Sequence[str]) -> bool:
        """Batched candidate decodes need a subset inside the output layer (``output.*``)."""
        return bool(names) and hasattr(module, "output") and all(n.startswith("output.") for n in names)

    def decode_candidates(self, module, batch: GeneratorBatch, max_length: int, names: Sequence[str],
                          values_list: Sequence[Optional[Sequence[Any]]]) -> List[List[GenerationText]]:
        """Greedy decodes of the batch under several output-layer weights, in one pass.

        The decoder body (self-attention, cross-attention, MLP) is shared, so the G entries'
        rows (G × B: memory repeated, entry-major) go through it together; the output layer
        runs once per entry on that entry's live rows with its own weights
        (``torch.func.functional_call``; None: the current weights). RETURNS one hypothesis
        list per entry.
        """
        import torch

        if not self.supports_candidates(module, names):
            raise GeneratorFinetuneError(f"Batched candidate decodes need output-layer parameters, got {list(names)}")
        groups = len(values_list)
        b = batch.memory.size(0)
        overrides = [None if v is None else {"base." + n[len("output."):]: t for n, t in zip(names, v)}
                     for v in values_list]
        memory = batch.memory.repeat(groups, *([1] * (batch.memory.dim() - 1)))
        mask = batch.mask.repeat(groups, *([1] * (batch.mask.dim() - 1)))
        base = module.output
        shim = _GroupedOutput(base, overrides, torch.arange(groups, device=memory.device).repeat_interleave(b))
        was = module.training
        module.eval()
        module.output = shim
        try:
            with torch.no_grad():
                state = module.init_state(memory, mask)
                hyps = self.greedy.decode(_GroupedRows(module, shim), state, groups * b, bos_id=self.vocab.bos_id,
                                          eos_id=self.vocab.eos_id, max_length=max_length)
        finally:
            module.output = base
            module.train(was)
        return [self._texts(hyps[g * b:(g + 1) * b]) for g in range(groups)]

    def sample(self, module, batch: GeneratorBatch, max_length: int, num_samples: int) -> List[GenerationText]:
        import torch

        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=self.generator).item())
        memory = batch.memory.repeat_interleave(num_samples, 0)
        mask = batch.mask.repeat_interleave(num_samples, 0)
        hyps = module.decode(memory, mask, self.sampling, bos_id=self.vocab.bos_id, eos_id=self.vocab.eos_id,
                             max_length=max_length, seed=seed)
        return self._texts(hyps)

    def sequence_log_probs(self, module, batch: GeneratorBatch, hypotheses, num_samples: int):
        """Mean token log-prob of each hypothesis (EOS scored when decoding stopped by it)."""
        import torch

        from ..models.seq2seq_decoder import sequence_nll  # noqa: F401 (same masking rules)

        memory = batch.memory.repeat_interleave(num_samples, 0)
        mask = batch.mask.repeat_interleave(num_samples, 0)
        ids = [list(h.ids) for h in hypotheses]
        tgt_in, tgt_out, tgt_mask = self._teacher(ids, memory.device)
        # a hypothesis cut by max_length has no EOS to score
        for r, h in enumerate(hypotheses):
            if h.stopped_by != "eos":
                tgt_out[r, len(ids[r])] = self.vocab.pad_id
        log_probs = module(tgt_in, memory, mask, tgt_mask)
        picked = log_probs.gather(2, tgt_out.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        real = tgt_out.ne(self.vocab.pad_id)
        picked = torch.where(real, picked, torch.zeros_like(picked))  # pad may be −inf (never emitted)
        mean = picked.sum(1) / real.float().sum(1).clamp(min=1)
        return mean.view(batch.memory.size(0), num_samples)

    def references(self, batch: GeneratorBatch) -> List[str]:
        return batch.references

    def target_length(self, batch: GeneratorBatch) -> int:
        return max(batch.lengths)


def _grouped_output_classes():
    import torch
    from torch import nn

    class _Step(nn.Module):
        """``forward`` = the wrapped output layer's ``step`` (so functional_call can run it)."""

        def __init__(self, base):
            super().__init__()
            self.base = base

        def forward(self, hidden_t, state):
            return self.base.step(hidden_t, state)

    class GroupedOutput(nn.Module):
        """An output layer whose rows belong to groups with their own weights (see
        GeneratorSequenceTask.decode_candidates); ``groups`` follows the decoder's reordering."""

        def __init__(self, base, overrides, groups):
            super().__init__()
            self.stepper = _Step(base)
            self.overrides, self.groups = overrides, groups

        def initial_state(self, batch_size, device=None):
            return self.stepper.base.initial_state(batch_size, device)

        def step(self, hidden_t, state):
            log_probs = new_state = None
            for g in torch.unique(self.groups).tolist():
                rows = (self.groups == g).nonzero().squeeze(1)
                args = (hidden_t.index_select(0, rows), state.index_select(0, rows))
                params = self.overrides[g]
                lp, st = self.stepper(*args) if params is None else \
                    torch.func.functional_call(self.stepper, params, args)
                if log_probs is None:
                    log_probs = lp.new_empty((hidden_t.size(0),) + tuple(lp.shape[1:]))
                    new_state = st.new_empty((hidden_t.size(0),) + tuple(st.shape[1:]))
                log_probs.index_copy_(0, rows, lp)
                new_state.index_copy_(0, rows, st)
            return log_probs, new_state

    return GroupedOutput


def _GroupedOutput(base, overrides, groups):
    global _GROUPED_OUTPUT
    if _GROUPED_OUTPUT is None:
        _GROUPED_OUTPUT = _grouped_output_classes()
    return _GROUPED_OUTPUT(base, overrides, groups)


_GROUPED_OUTPUT = None


class _GroupedRows:
    """The decoder as a step model whose row reordering also reorders the rows' groups."""

    def __init__(self, module, shim):
        self.module, self.shim = module, shim

    def step(self, tokens, state):
        return self.module.step(tokens, state)

    def reorder_state(self, state, index):
        self.shim.groups = self.shim.groups.index_select(0, index.to(self.shim.groups.device))
        return self.module.reorder_state(state, index)


class GeneratorFinetuneTask:
    """The training-engine task of a generator fine-tune (module = the pipe's decoder)."""

    def __init__(self, seq_task: GeneratorSequenceTask, updater, *, batch_size: int = 32, seed: int = 0,
                 dev: Optional[EncodedPairs] = None, eval_loss=None, eval_limit: int = 200):
        self.seq_task, self.updater = seq_task, updater
        self.module = seq_task.pipe.decoder
        self.batch_size, self.seed = batch_size, seed
        self.dev, self.eval_loss, self.eval_limit = dev, eval_loss or updater.task_loss, eval_limit

    def batches(self, epoch: int, rank: int, world: int):
        from ..training import shard

        order = list(range(len(self.seq_task.data)))
        random.Random(self.seed * 7919 + epoch).shuffle(order)
        starts = range(0, max(1, len(order) - self.batch_size + 1), self.batch_size)
        for i in shard(starts, rank, world):
            yield self.seq_task.make_batch(order[i:i + self.batch_size])

    def step(self, module, batch, ctx):
        """The engine's ``task.step`` hook: the update owns its gradient (MGS: ``−d``), written
        with ``ctx.set_gradients``; the engine clips and steps (``SequenceLevelUpdater.engine_step``)."""
        return self.updater.engine_step(module, batch, ctx)

    def items(self, batch) -> int:
        return int(sum(batch.lengths))

    def evaluate(self, module) -> Dict[str, float]:
        if self.dev is None:
            return {}
        return decoder_scores(self.seq_task.pipe, module, self.dev, task_loss=self.eval_loss,
                              limit=self.eval_limit)

    def state_dict(self) -> Dict[str, Any]:
        return {"updater": self.updater.state_dict(), "sampler": self.seq_task.generator.get_state()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.updater.load_state_dict(state["updater"])
        self.seq_task.generator.set_state(state["sampler"])


def decoder_scores(pipe, module, data: EncodedPairs, *, task_loss, limit: int = 0, batch_size: int = 64,
                   length_multiplier: float = 1.3, max_length: Optional[int] = None) -> Dict[str, float]:
    """Held-out figures of a decoder on encoded pairs (greedy, the training decode budget).

    RETURNS (Dict[str, float]): task_loss, chrf, bleu, exact, r_L (share stopped by the
        budget), repetition (4-grams), perplexity, n.
    """
    import torch

    from .mgs import MGSConfig, decode_budget
    from .scoring import text_scores
    from .task_losses import RepetitionLoss

    n = len(data) if not limit else min(limit, len(data))
    task = GeneratorSequenceTask(pipe, data)
    rep = RepetitionLoss(4, unit="char")
    hyps_all: List[GenerationText] = []
    losses, reps = [], []
    nll, tokens = 0.0, 0
    was = module.training
    module.eval()
    cfg = MGSConfig(length_multiplier=length_multiplier, max_decode_length=max_length or 1000)
    with torch.no_grad():
        for start in range(0, n, batch_size):
            idx = list(range(start, min(n, start + batch_size)))
            batch = task.make_batch(idx)
            hyps = task.decode(module, batch, decode_budget(task.target_length(batch), cfg))
            hyps_all.extend(hyps)
            losses.extend(task_loss(hyps, batch.references))
            reps.extend(rep(hyps, batch.references))
            total, count = task._nll(module, batch.memory, batch.mask, batch.tgt_in, batch.tgt_out, batch.tgt_mask)
            nll += float(total.item())
            tokens += int(count.item())
    module.train(was)
    finite = [v for v in losses if math.isfinite(v)]
    out = {"task_loss": statistics.fmean(finite) if finite else math.nan,
           "r_L": sum(h.stopped_by != "eos" for h in hyps_all) / max(len(hyps_all), 1),
           "repetition": statistics.fmean(reps) if reps else math.nan,
           "perplexity": math.exp(nll / max(tokens, 1)), "n": float(n)}
    scores = text_scores([str(h) for h in hyps_all], data.references[:n], bleu_tokenize="zh")
    for key in ("chrf", "bleu", "exact"):
        if key in scores and scores[key] is not None:
            out[key] = float(scores[key])
    return out


def resolve_task_loss(spec: Union[str, Callable]) -> Callable:
    """A task loss from a short name ("chrf", "edit", "nonterm", "repeat", "length"), a registered name
    (``kx_spacy.ChrFLoss.v1``: built with its defaults), names joined by "+" (their sum,
    ``kx_spacy.SumLoss.v1``: "nonterm+repeat") or a callable."""
    if callable(spec):
        return spec
    from spacy.util import registry

    from .task_losses import SumLoss, make_chrf_loss, make_edit_distance_loss, make_length_loss, \
        make_non_termination_loss, make_repetition_loss

    if "+" in spec:
        parts = [p.strip() for p in spec.split("+")]
        if not all(parts):
            raise GeneratorFinetuneError(f"Task loss {spec!r}: an empty name around '+'")
        return SumLoss([resolve_task_loss(p) for p in parts])

    short = {"chrf": make_chrf_loss, "edit": lambda: make_edit_distance_loss(unit="char"),
             "nonterm": make_non_termination_loss, "repeat": lambda: make_repetition_loss(unit="char"),
             "length": lambda: make_length_loss(unit="char")}
    if spec in short:
        return short[spec]()
    try:
        return registry.misc.get(spec)()
    except Exception as err:  # catalogue raises its own error type
        raise GeneratorFinetuneError(f"Unknown task loss {spec!r}: use {sorted(short)} or a registered name") from err


def finetune_generator(
    model_path: Union[str, Path],
    train_pairs: Sequence[Tuple[str, str]],
    output_dir: Union[str, Path],
    *,
    config,
    task_loss: Union[str, Callable] = "chrf",
    dev_pairs: Optional[Sequence[Tuple[str, str]]] = None,
    steps: int = 200,
    lr: float = 1e-4,
    optimizer: str = "adam",
    batch_size: int = 32,
    seed: int = 0,
    resume: bool = False,
    max_minutes: Optional[float] = None,
    clock: str = "wall",
    eval_every: int = 0,
    progress: bool = True,
    name: str = "kx_generator",
    nlp=None,
    encoded: Optional[Tuple[EncodedPairs, Optional[EncodedPairs]]] = None,
    save: bool = True,
) -> Dict[str, Any]:
    """Fine-tune a trained kx_generator pipeline's decoder with ``config.method``.

    model_path: the ``train-generator`` output (loaded unless ``nlp`` is given).
    train_pairs / dev_pairs: (source, target) texts. output_dir: the engine's run folder; the
        fine-tuned pipeline is saved to ``<output_dir>/model``.
    config (MGSConfig): method and settings. task_loss: see :func:`resolve_task_loss`.
    steps, lr, batch_size, seed, resume, max_minutes, eval_every: the engine run.
    optimizer (str): "adam" or "sgd" (plain SGD: the update's direction as it is, without
        Adam's per-weight rescaling).
    clock (str): what ``max_minutes`` counts: "wall" or "process" (this process's CPU time: on
        a loaded machine, the compute a run really got; see kx_spacy.training.TrainingConfig).
    encoded: pre-encoded (train, dev) data (skips the encoder pass).
    save (bool): save the fine-tuned pipeline to ``<output_dir>/model``.
    RETURNS (Dict[str, Any]): the engine result, cost per update, and the saved model path.
    """
    import spacy
    import torch

    from ..training import Trainer, TrainingConfig, file_identity, read_metrics
    from .mgs import SequenceLevelUpdater

    output_dir = Path(output_dir)
    optimizers = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}
    if optimizer not in optimizers:
        raise GeneratorFinetuneError(f"optimizer {optimizer!r}: use one of {sorted(optimizers)}")
    nlp = nlp if nlp is not None else spacy.load(model_path)
    pipe = generator_pipe(nlp, name)
    loss_fn = resolve_task_loss(task_loss)
    if encoded is None:
        train = encode_pairs(nlp, train_pairs, name)
        dev = encode_pairs(nlp, dev_pairs, name) if dev_pairs else None
    else:
        train, dev = encoded
    seq_task = GeneratorSequenceTask(pipe, train, seed=seed + 17)
    updater = SequenceLevelUpdater(seq_task, loss_fn, config)
    task = GeneratorFinetuneTask(seq_task, updater, batch_size=batch_size, seed=seed, dev=dev, eval_loss=loss_fn)
    model_path = Path(model_path)
    identity = {"method": config.method, "config": config.to_dict(), "lr": lr, "optimizer": optimizer,
                "batch_size": batch_size,
                "task_loss": str(task_loss), "n_train": len(train)}
    if model_path.exists():
        identity["model"] = file_identity(model_path / name / "model") if (model_path / name / "model").exists() \
            else str(model_path.resolve())
    train_cfg = TrainingConfig(max_steps=steps, max_time_minutes=max_minutes, clock=clock, clip_mode=config.clip_mode,
                               clip_threshold=config.clip_threshold, precision="fp32", seed=seed,
                               progress=progress, checkpoint_every=max(1, steps // 4), eval_every=eval_every,
                               max_bad_steps=50, desc=f"finetune-{config.method}",
                               device=str(next(pipe.decoder.parameters()).device.type))
    trainer = Trainer(task, train_cfg, output_dir=output_dir,
                      optimizer=lambda m: optimizers[optimizer]([p for p in m.parameters() if p.requires_grad], lr=lr),
                      identity=identity)
    start = time.perf_counter()
    result = trainer.run(resume=resume)
    wall = time.perf_counter() - start
    records = read_metrics(output_dir, kind="step")
    cost: Dict[str, float] = {}
    for key in ("decodes", "passes", "seconds", "all_worse", "mle_weight", "mle_step", "sequences"):
        vals = [r[key] for r in records if isinstance(r.get(key), (int, float))]
        cost[key] = statistics.fmean(vals) if vals else math.nan
    extra = [r["extra_bytes"] for r in records if isinstance(r.get("extra_bytes"), (int, float))]
    decoder_bytes = sum(p.numel() * p.element_size() for p in pipe.decoder.parameters())
    # weight copies held at once: the decoder + the update's largest extra (saved subset or
    # the batched candidates' subset values); gradients / Adam moments are not copies
    cost["extra_bytes"] = float(max(extra)) if extra else 0.0
    cost["model_copies"] = 1.0 + cost["extra_bytes"] / decoder_bytes
    cost["wall_per_update"] = result.elapsed_s / result.steps if result.steps else math.nan
    cost["updates"] = float(result.steps)
    cost["peak_rss_mb"] = peak_rss_mb()
    saved = output_dir / "model"
    if save:
        nlp.to_disk(saved)
    return {"result": result.to_dict(), "cost": cost, "wall_seconds": wall, "model": str(saved),
            "updates": result.steps, "extra_bytes_per_update": cost["extra_bytes"], "decoder_bytes": decoder_bytes}


def peak_rss_mb() -> float:
    """The process's peak resident memory so far (MB; the high-water mark since it started)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def compare_generator_methods(
    model_path: Union[str, Path],
    train_pairs: Sequence[Tuple[str, str]],
    test_pairs: Sequence[Tuple[str, str]],
    output_dir: Union[str, Path],
    *,
    methods: Sequence[str] = ("mle", "mgs", "pg", "mrt"),
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    task_loss: str = "chrf",
    steps: int = 100,
    max_minutes: Optional[float] = None,
    clock: str = "wall",
    lr: float = 1e-4,
    optimizer: str = "adam",
    batch_size: int = 32,
    config_overrides: Optional[Dict[str, Any]] = None,
    progress: Optional[Callable[[Dict[str, Any]], None]] = None,
    name: str = "kx_generator",
) -> Dict[str, Any]:
    """The MLE start and each method's fine-tune (one per seed) scored on ``test_pairs``.

    Encodes the data once; every fine-tune starts from the saved pipeline's decoder weights.
    steps / max_minutes: every run's budget: ``steps`` updates, or with ``max_minutes`` equal
        wall-clock (each run trains that long; ``steps`` is then only a cap); clock: "wall" or
        "process" (equal CPU time, fairer on a loaded machine). lr, optimizer ("adam" / "sgd"),
        batch_size: every run's.
    RETURNS (Dict[str, Any]): {"settings", "runs", "summary": {method: {metric: (mean, sd)}}};
        every run row has the held-out figures and its cost (``cost_*``: updates, wall-clock
        and decodes / decoder passes per update, weight copies held, peak RSS).
    """
    import copy

    import spacy

    from .mgs import MGSConfig

    nlp = spacy.load(model_path)
    pipe = generator_pipe(nlp, name)
    start_state = copy.deepcopy(pipe.decoder.state_dict())
    train = encode_pairs(nlp, train_pairs, name)
    test = encode_pairs(nlp, test_pairs, name)
    loss_fn = resolve_task_loss(task_loss)
    runs = []
    row = {"method": "start", "seed": -1}
    row.update(decoder_scores(pipe, pipe.decoder, test, task_loss=loss_fn))
    runs.append(row)
    if progress:
        progress(row)
    for seed in seeds:
        for method in methods:
            pipe.decoder.load_state_dict(start_state)
            cfg = MGSConfig(method=method, seed=seed, **(config_overrides or {}))
            out = finetune_generator(model_path, [], Path(output_dir) / f"{method}_{seed}", config=cfg,
                                     task_loss=loss_fn, steps=steps, lr=lr, optimizer=optimizer,
                                     batch_size=batch_size, seed=seed,
                                     max_minutes=max_minutes, clock=clock, progress=False, name=name, nlp=nlp,
                                     encoded=(train, None), save=False)
            row = {"method": method, "seed": seed}
            row.update(decoder_scores(pipe, pipe.decoder, test, task_loss=loss_fn))
            row.update({f"cost_{k}": v for k, v in out["cost"].items()})
            row["cost_wall_seconds"] = out["wall_seconds"]
            runs.append(row)
            if progress:
                progress(row)
    pipe.decoder.load_state_dict(start_state)
    from .mgs_toy import summarize

    summary = summarize(runs)
    settings = {"model": str(model_path), "methods": list(methods), "seeds": list(seeds), "task_loss": task_loss,
                "steps": steps, "max_minutes": max_minutes, "clock": clock, "lr": lr, "optimizer": optimizer,
                "batch_size": batch_size, "n_train": len(train), "n_test": len(test),
                "config_overrides": dict(config_overrides or {})}
    return {"settings": settings, "runs": runs, "summary": summary}
