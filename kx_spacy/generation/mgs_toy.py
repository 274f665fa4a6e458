"""A toy seq2seq task for MGS / PG / MRT: tests and the ``mgs-toy`` demonstration command.

The task: reverse a random symbol string (lengths ``min_len``–``max_len``) and end with EOS.
The model: a GRU encoder–decoder with dot attention (``ToySeq2Seq``), a few tens of thousands
of parameters, fast enough on a CPU core to train by MLE and then fine-tune with each
sequence-level method in seconds. ``ToyTask`` implements the ``SequenceTask`` protocol of
``kx_spacy.generation.mgs`` (MLE loss, greedy / sampled decoding, sequence log-probs).
``compare_methods`` runs the whole protocol (MLE start → MLE / MGS / PG / MRT fine-tunes at
an equal number of updates, several seeds) and reports held-out figures with their spread.
"""
from __future__ import annotations

import math
import random
import statistics
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

PAD, BOS, EOS = 0, 1, 2
FIRST_SYMBOL = 3


def make_pairs(n: int, *, symbols: int = 10, min_len: int = 3, max_len: int = 8,
               seed: int = 0) -> List[Tuple[List[int], List[int]]]:
    """``n`` (source, target) pairs: target = reversed source + [EOS]."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        length = rng.randint(min_len, max_len)
        src = [rng.randrange(FIRST_SYMBOL, FIRST_SYMBOL + symbols) for _ in range(length)]
        pairs.append((src, list(reversed(src)) + [EOS]))
    return pairs


def _torch_model_class():
    import torch
    from torch import nn

    class ToySeq2Seq(nn.Module):
        """GRU encoder–decoder with dot attention over the encoder states."""

        def __init__(self, vocab_size: int, width: int = 48):
            super().__init__()
            self.vocab_size = vocab_size
            self.embed = nn.Embedding(vocab_size, width, padding_idx=PAD)
            self.encoder = nn.GRU(width, width, batch_first=True)
            self.decoder = nn.GRUCell(width, width)
            self.combine = nn.Linear(2 * width, width)
            self.output = nn.Linear(width, vocab_size)

        def encode(self, src: "torch.Tensor") -> Tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]:
            mask = src.ne(PAD)
            states, _ = self.encoder(self.embed(src))
            states = states * mask.unsqueeze(-1)
            lengths = mask.sum(1).clamp(min=1)
            last = states[torch.arange(src.size(0)), lengths - 1]
            return states, mask, last

        def step(self, token, hidden, states, mask):
            hidden = self.decoder(self.embed(token), hidden)
            scores = torch.einsum("bd,bsd->bs", hidden, states).masked_fill(~mask, -1e9)
            context = torch.einsum("bs,bsd->bd", torch.softmax(scores, -1), states)
            feats = torch.tanh(self.combine(torch.cat([hidden, context], -1)))
            return self.output(feats), hidden

        def forward(self, src: "torch.Tensor", tgt_in: "torch.Tensor") -> "torch.Tensor":
            """Teacher-forced logits (B, T, V) for the decoder inputs ``tgt_in`` (BOS first)."""
            states, mask, hidden = self.encode(src)
            logits = []
            for t in range(tgt_in.size(1)):
                out, hidden = self.step(tgt_in[:, t], hidden, states, mask)
                logits.append(out)
            return torch.stack(logits, 1)

        @torch.no_grad()
        def generate(self, src: "torch.Tensor", max_length: int, *, sample: bool = False,
                     generator: Optional["torch.Generator"] = None) -> List[List[int]]:
            states, mask, hidden = self.encode(src)
            token = torch.full((src.size(0),), BOS, dtype=torch.long, device=src.device)
            done = torch.zeros(src.size(0), dtype=torch.bool, device=src.device)
            rows: List[List[int]] = [[] for _ in range(src.size(0))]
            for _ in range(max_length):
                logits, hidden = self.step(token, hidden, states, mask)
                if sample:
                    token = torch.multinomial(torch.softmax(logits.float(), -1), 1, generator=generator).squeeze(1)
                else:
                    token = logits.argmax(-1)
                for i, (tok, fin) in enumerate(zip(token.tolist(), done.tolist())):
                    if not fin:
                        rows[i].append(tok)
                done = done | token.eq(EOS)
                if bool(done.all()):
                    break
            return rows

    return ToySeq2Seq


def make_toy_model(symbols: int = 10, width: int = 48, seed: int = 0):
    """A fresh ``ToySeq2Seq`` for ``symbols`` symbols (vocab = symbols + 3)."""
    import torch

    torch.manual_seed(seed)
    return _torch_model_class()(symbols + FIRST_SYMBOL, width)


@dataclass
class ToyBatch:
    src: Any
    tgt_in: Any
    tgt_out: Any
    targets: List[List[int]]


def collate(pairs: Sequence[Tuple[List[int], List[int]]], device: str = "cpu") -> ToyBatch:
    """Pad a list of pairs into a ToyBatch."""
    import torch

    s_len = max(len(s) for s, _ in pairs)
    t_len = max(len(t) for _, t in pairs)
    src = torch.full((len(pairs), s_len), PAD, dtype=torch.long)
    tgt_in = torch.full((len(pairs), t_len), PAD, dtype=torch.long)
    tgt_out = torch.full((len(pairs), t_len), PAD, dtype=torch.long)
    for i, (s, t) in enumerate(pairs):
        src[i, : len(s)] = torch.tensor(s)
        tgt_in[i, : len(t)] = torch.tensor([BOS] + t[:-1])
        tgt_out[i, : len(t)] = torch.tensor(t)
    return ToyBatch(src.to(device), tgt_in.to(device), tgt_out.to(device), [list(t) for _, t in pairs])


def _pad_hyps(hyps: Sequence[List[int]], device) -> Tuple[Any, Any]:
    import torch

    length = max(1, max(len(h) for h in hyps))
    tgt_in = torch.full((len(hyps), length), PAD, dtype=torch.long)
    tgt_out = torch.full((len(hyps), length), PAD, dtype=torch.long)
    for i, h in enumerate(hyps):
        if h:
            tgt_in[i, : len(h)] = torch.tensor([BOS] + list(h[:-1]))
            tgt_out[i, : len(h)] = torch.tensor(list(h))
    return tgt_in.to(device), tgt_out.to(device)


class ToyTask:
    """The SequenceTask protocol for ToySeq2Seq batches (see kx_spacy.generation.mgs)."""

    def __init__(self, seed: int = 0):
        import torch

        self.generator = torch.Generator()
        self.generator.manual_seed(seed)

    def mle_loss(self, module, batch: ToyBatch):
        import torch.nn.functional as F

        logits = module(batch.src, batch.tgt_in)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch.tgt_out.reshape(-1), ignore_index=PAD)

    def decode(self, module, batch: ToyBatch, max_length: int) -> List[List[int]]:
        return module.generate(batch.src, max_length)

    def sample(self, module, batch: ToyBatch, max_length: int, num_samples: int) -> List[List[int]]:
        src = batch.src.repeat_interleave(num_samples, 0)
        return module.generate(src, max_length, sample=True, generator=self.generator)

    def sequence_log_probs(self, module, batch: ToyBatch, hypotheses, num_samples: int):
        import torch

        src = batch.src.repeat_interleave(num_samples, 0)
        tgt_in, tgt_out = _pad_hyps(hypotheses, src.device)
        logp = torch.log_softmax(module(src, tgt_in), -1).gather(2, tgt_out.unsqueeze(-1)).squeeze(-1)
        mask = tgt_out.ne(PAD).float()
        mean = (logp * mask).sum(1) / mask.sum(1).clamp(min=1)
        return mean.view(batch.src.size(0), num_samples)

    def references(self, batch: ToyBatch) -> List[List[int]]:
        return batch.targets

    def target_length(self, batch: ToyBatch) -> int:
        return max(len(t) for t in batch.targets)


def evaluate(module, pairs, *, task_loss, batch_size: int = 100, max_length: int = 40) -> Dict[str, float]:
    """Held-out figures: task loss (greedy), edit, non-termination, repetition, chrF, ppl."""
    import torch

    from .task_losses import ChrFLoss, EditDistanceLoss, NonTerminationLoss, RepetitionLoss

    edit, nonterm, rep = EditDistanceLoss(), NonTerminationLoss(EOS), RepetitionLoss(4)
    chrf = ChrFLoss()
    sums = {"task_loss": 0.0, "edit": 0.0, "non_termination": 0.0, "repetition": 0.0, "chrf": 0.0}
    nll, tokens = 0.0, 0
    task = ToyTask()
    was = module.training
    module.eval()
    with torch.no_grad():
        for i in range(0, len(pairs), batch_size):
            batch = collate(pairs[i:i + batch_size])
            hyps = module.generate(batch.src, max_length)
            refs = batch.targets
            for key, fn in (("task_loss", task_loss), ("edit", edit), ("non_termination", nonterm),
                            ("repetition", rep)):
                sums[key] += sum(fn(hyps, refs))
            sums["chrf"] += sum(100.0 * (1.0 - v) for v in chrf(hyps, refs))
            n_tok = int(batch.tgt_out.ne(PAD).sum().item())
            nll += task.mle_loss(module, batch).item() * n_tok
            tokens += n_tok
    module.train(was)
    out = {k: v / len(pairs) for k, v in sums.items()}
    out["perplexity"] = math.exp(nll / tokens)
    return out


def _batches(pairs, batch_size: int, rng: random.Random):
    while True:
        order = list(range(len(pairs)))
        rng.shuffle(order)
        for i in range(0, len(order) - batch_size + 1, batch_size):
            yield collate([pairs[j] for j in order[i:i + batch_size]])


def train_mle(module, pairs, *, steps: int, lr: float = 3e-3, batch_size: int = 32, seed: int = 0,
              clip: float = 1.0) -> None:
    """Plain MLE training (Adam) through the same updater, method 'mle'."""
    import torch

    from .mgs import MGSConfig, SequenceLevelUpdater

    updater = SequenceLevelUpdater(ToyTask(seed), lambda h, r: [0.0] * len(h),
                                   MGSConfig(method="mle", clip_threshold=clip, seed=seed))
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)
    batches = _batches(pairs, batch_size, random.Random(seed))
    module.train()
    for _ in range(steps):
        updater.step(module, next(batches), optimizer)


class ToyFinetuneTask:
    """The training-engine task (kx_spacy.training.Trainer) of a sequence-level fine-tune.

    module: the ToySeq2Seq being fine-tuned. pairs: training pairs. dev_pairs: held-out pairs
    (``evaluate``). updater (SequenceLevelUpdater): its ``engine_step`` is the engine's ``task.step``.
    """

    def __init__(self, module, pairs, dev_pairs, updater, *, batch_size: int = 32, seed: int = 0,
                 eval_loss=None):
        self.module = module
        self.pairs, self.dev_pairs = pairs, dev_pairs
        self.updater = updater
        self.batch_size, self.seed = batch_size, seed
        self.eval_loss = eval_loss or updater.task_loss

    def batches(self, epoch: int, rank: int, world: int):
        from ..training import shard

        order = list(range(len(self.pairs)))
        random.Random(self.seed * 7919 + epoch).shuffle(order)
        starts = range(0, len(order) - self.batch_size + 1, self.batch_size)
        for i in shard(starts, rank, world):
            yield collate([self.pairs[j] for j in order[i:i + self.batch_size]])

    def step(self, module, batch, ctx):
        return self.updater.engine_step(module, batch, ctx)

    def items(self, batch) -> int:
        return int(batch.tgt_out.ne(PAD).sum().item())

    def evaluate(self, module) -> Dict[str, float]:
        return evaluate(module, self.dev_pairs, task_loss=self.eval_loss)

    def state_dict(self) -> Dict[str, Any]:
        return {"updater": self.updater.state_dict(), "sampler": self.updater.task.generator.get_state()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.updater.load_state_dict(state["updater"])
        self.updater.task.generator.set_state(state["sampler"])


def finetune(module, pairs, *, config, task_loss, steps: int, lr: float = 1e-3, batch_size: int = 32,
             seed: int = 0, output_dir=None, dev_pairs=None, resume: bool = False,
             max_minutes: Optional[float] = None, progress: bool = False) -> Dict[str, float]:
    """Fine-tune ``module`` with ``config.method`` on the training engine.

    RETURNS (Dict[str, float]): per-update means of the cost logs (decodes, seconds, ...),
        the number of updates and the run's wall-clock.
    """
    import tempfile

    import torch

    from ..training import Trainer, TrainingConfig, read_metrics
    from .mgs import SequenceLevelUpdater

    updater = SequenceLevelUpdater(ToyTask(seed + 17), task_loss, config)
    task = ToyFinetuneTask(module, pairs, dev_pairs or [], updater, batch_size=batch_size, seed=seed)
    tmp = None
    if output_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="kx_mgs_")
        output_dir = tmp.name
    train_cfg = TrainingConfig(max_steps=steps, max_time_minutes=max_minutes, clip_mode=config.clip_mode,
                               clip_threshold=config.clip_threshold, precision="fp32", device="cpu",
                               seed=seed, progress=progress, checkpoint_every=0 if tmp else max(1, steps // 4),
                               max_bad_steps=50, desc=config.method)
    trainer = Trainer(task, train_cfg, output_dir=output_dir,
                      optimizer=lambda m: torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=lr),
                      identity={"method": config.method, "config": config.to_dict(), "lr": lr})
    start = time.perf_counter()
    result = trainer.run(resume=resume)
    wall = time.perf_counter() - start
    records = read_metrics(output_dir, kind="step")
    if tmp is not None:
        tmp.cleanup()
    out: Dict[str, float] = {}
    for key in ("decodes", "seconds", "all_worse", "mle_weight", "mle_step"):
        vals = [r[key] for r in records if key in r and isinstance(r[key], (int, float))]
        out[key] = statistics.fmean(vals) if vals else math.nan
    out["updates"] = float(result.steps)
    out["bad_steps"] = float(result.bad_steps)
    out["wall_seconds"] = wall
    return out


def compare_methods(
    *,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    methods: Sequence[str] = ("mle", "mgs", "pg", "mrt"),
    task_loss_name: str = "edit",
    n_train: int = 2000,
    n_dev: int = 300,
    mle_steps: int = 300,
    finetune_steps: int = 200,
    num_candidates: int = 4,
    beta: float = 100.0,
    lr: float = 1e-3,
    mle_mix: float = 0.0,
    batch_size: int = 32,
    width: int = 48,
    parameters: Sequence[str] = (),
    candidate_scale: float = 1.0,
    zero_candidate: bool = False,
    min_len: int = 3,
    max_len: int = 8,
    progress: Optional[Any] = None,
) -> Dict[str, Any]:
    """MLE start → each method's fine-tune, per seed; held-out figures and their spread.

    RETURNS (Dict[str, Any]): {"settings", "runs": [per seed and method], "summary": {method:
        {metric: (mean, stdev)}}}; "start" is the MLE starting point itself.
    """
    import copy

    import torch

    from .mgs import MGSConfig
    from .task_losses import EditDistanceLoss, NonTerminationLoss, RepetitionLoss, ChrFLoss

    losses = {"edit": EditDistanceLoss(), "nonterm": NonTerminationLoss(EOS), "repeat": RepetitionLoss(4),
              "chrf": ChrFLoss()}
    if task_loss_name not in losses:
        raise ValueError(f"task loss {task_loss_name!r}: use one of {sorted(losses)}")
    task_loss = losses[task_loss_name]
    runs = []
    for seed in seeds:
        train_pairs = make_pairs(n_train, seed=1000 + seed, min_len=min_len, max_len=max_len)
        dev_pairs = make_pairs(n_dev, seed=2000 + seed, min_len=min_len, max_len=max_len)
        torch.manual_seed(seed)
        start_model = make_toy_model(width=width, seed=seed)
        t0 = time.perf_counter()
        train_mle(start_model, train_pairs, steps=mle_steps, seed=seed)
        mle_seconds = time.perf_counter() - t0
        row = {"seed": seed, "method": "start", "mle_seconds": mle_seconds}
        row.update(evaluate(start_model, dev_pairs, task_loss=task_loss))
        runs.append(row)
        if progress:
            progress(row)
        for method in methods:
            model = copy.deepcopy(start_model)
            torch.manual_seed(seed + 100)
            config = MGSConfig(method=method, num_candidates=num_candidates, beta=beta, seed=seed,
                               mle_mix=mle_mix if method != "mle" else 0.0, parameters=list(parameters),
                               candidate_scale=candidate_scale, zero_candidate=zero_candidate)
            cost = finetune(model, train_pairs, config=config, task_loss=task_loss,
                            steps=finetune_steps, lr=lr, batch_size=batch_size, seed=seed)
            row = {"seed": seed, "method": method}
            row.update(evaluate(model, dev_pairs, task_loss=task_loss))
            row.update({f"cost_{k}": v for k, v in cost.items()})
            runs.append(row)
            if progress:
                progress(row)
    summary = summarize(runs)
    settings = dict(seeds=list(seeds), methods=list(methods), task_loss=task_loss_name, n_train=n_train,
                    n_dev=n_dev, mle_steps=mle_steps, finetune_steps=finetune_steps,
                    num_candidates=num_candidates, beta=beta, lr=lr, mle_mix=mle_mix,
                    batch_size=batch_size, width=width, parameters=list(parameters),
                    candidate_scale=candidate_scale, zero_candidate=zero_candidate, min_len=min_len,
                    max_len=max_len,
                    torch_threads=torch.get_num_threads())
    return {"settings": settings, "runs": runs, "summary": summary}


def summarize(runs: Sequence[Dict[str, Any]]) -> Dict[str, Dict[str, Tuple[float, float]]]:
    """Mean and sample standard deviation over seeds of every float figure, per method.

    runs (Sequence[Dict]): rows with "method", "seed" and float figures (from one or more
        ``compare_methods`` calls, e.g. one per seed run in separate processes).
    RETURNS (Dict[str, Dict[str, Tuple[float, float]]]): {method: {figure: (mean, sd)}}.
    """
    summary: Dict[str, Dict[str, Tuple[float, float]]] = {}
    methods = list(dict.fromkeys(r["method"] for r in runs))
    for method in methods:
        rows = [r for r in runs if r["method"] == method]
        keys = [k for k, v in rows[0].items() if isinstance(v, float) and k != "seed"]
        summary[method] = {}
        for k in keys:
            vals = [r[k] for r in rows if isinstance(r.get(k), float) and math.isfinite(r[k])]
            if vals:
                summary[method][k] = (statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0)
    # paired by seed: the change of each figure from that seed's (or the shared) MLE start
    starts = {r["seed"]: r for r in runs if r["method"] == "start"}
    for method in methods:
        if method == "start" or not starts:
            continue
        for k in ("task_loss", "perplexity"):
            deltas = []
            for r in runs:
                if r["method"] != method or k not in r:
                    continue
                start = starts.get(r["seed"]) or (next(iter(starts.values())) if len(starts) == 1 else None)
                if start is not None and k in start:
                    deltas.append(r[k] - start[k] if k == "task_loss" else r[k] / start[k] - 1.0)
            if deltas:
                name = "delta_task_loss" if k == "task_loss" else "perplexity_change"
                summary[method][name] = (statistics.fmean(deltas),
                                         statistics.stdev(deltas) if len(deltas) > 1 else 0.0)
    return summary
