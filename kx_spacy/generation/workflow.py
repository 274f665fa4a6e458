"""The generator's project commands as library functions (the CLI only parses and prints).

* :func:`prepare_couplets`: ``couplets/train_60k.tsv`` -> train / dev ``source<TAB>target``
  files (a seeded split; the 3,834-pair ``test.tsv`` stays the test set).
* :func:`prepare_agnews`: AG News ``test.csv`` (the only split shipped) -> description ->
  title train / dev / test files (a seeded 80 / 5 / 15 split; rows with an empty side dropped).
* :func:`evaluate_generator`: a trained pipeline on test pairs: perplexity, chrF / BLEU /
  exact match against a copy-the-source and a unigram baseline, average length, and the
  non-termination ratio r_L (share of continuations that reach L steps without EOS) at
  L = 100, 1,000 and t*(ε) for every decoding mode, over several seeds, on the test
  sources, on random-token sources, and after random 10-token target prefixes (the
  protocol of uralik/consistency-lm), plus tokens/s.
* :func:`bench_decode`: per-token decoding latency against position for the KV-cache softmax
  decoder and the linear-attention decoder (random weights, same sizes).
"""
from __future__ import annotations

import csv
import json
import math
import random
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .corpus import read_pairs


def _write_pairs(path: Path, pairs: Sequence[Tuple[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf8") as fh:
        for s, t in pairs:
            fh.write(f"{s}\t{t}\n")


def _clean(text: str) -> str:
    return " ".join(text.replace("\\", " ").replace("\t", " ").split())


def prepare_couplets(data_dir, out_dir, *, n_dev: int = 1000, seed: int = 0) -> Dict[str, int]:
    """Split ``couplets/train_60k.tsv`` into train / dev and copy ``test.tsv``.

    RETURNS (Dict[str, int]): pairs written per split.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    pairs = read_pairs(data_dir / "couplets" / "train_60k.tsv")
    random.Random(seed).shuffle(pairs)
    splits = {"train": pairs[n_dev:], "dev": pairs[:n_dev], "test": read_pairs(data_dir / "couplets" / "test.tsv")}
    for name, rows in splits.items():
        _write_pairs(out_dir / f"couplets_{name}.tsv", rows)
    return {k: len(v) for k, v in splits.items()}


def prepare_agnews(data_dir, out_dir, *, seed: int = 0) -> Dict[str, int]:
    """AG News description -> title pairs, split 80 / 5 / 15 (seeded).

    RETURNS (Dict[str, int]): pairs written per split.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    rows = []
    with (data_dir / "ag_news_test" / "test.csv").open(encoding="utf8", newline="") as fh:
        for rec in csv.reader(fh):
            if len(rec) != 3:
                continue
            title, desc = _clean(rec[1]), _clean(rec[2])
            if title and desc:
                rows.append((desc, title))
    random.Random(seed).shuffle(rows)
    n = len(rows)
    n_dev, n_test = n // 20, (n * 15) // 100
    splits = {"dev": rows[:n_dev], "test": rows[n_dev:n_dev + n_test], "train": rows[n_dev + n_test:]}
    for name, part in splits.items():
        _write_pairs(out_dir / f"agnews_{name}.tsv", part)
    return {k: len(v) for k, v in splits.items()}


def build_base_pipeline(lang: str, encoder: str, output, *, window: int = 128, stride: int = 96) -> Path:
    """Save a transformer-only pipeline on ``encoder`` (the CPU configs source it, frozen)."""
    from ..testing import make_pipeline

    nlp = make_pipeline(lang, encoder, window=window, stride=stride)
    output = Path(output)
    nlp.to_disk(output)
    return output


# ------------------------------------------------------------------ evaluation
MODES = {
    "greedy": ("kx_spacy.GreedyDecoding.v1", {}),
    "beam4": ("kx_spacy.BeamSearch.v1", {"width": 4, "length_penalty": 0.6}),
    "ancestral": ("kx_spacy.AncestralSampling.v1", {}),
    "top_k10": ("kx_spacy.TopKSampling.v1", {"k": 10}),
    "nucleus0.9": ("kx_spacy.NucleusSampling.v1", {"p": 0.9}),
    "vanilla_top_k10": ("kx_spacy.TopKSampling.v1", {"k": 10, "consistent": False}),
    "vanilla_nucleus0.9": ("kx_spacy.NucleusSampling.v1", {"p": 0.9, "consistent": False}),
}


def make_strategy(mode: str):
    """The decoding strategy of an evaluation mode name (see MODES)."""
    from spacy.util import registry

    name, kwargs = MODES[mode]
    return registry.misc.get(name)(**kwargs)


def _encode_vectors(nlp, texts: List[str], name: str, batch_size: int = 64):
    """The generator's token vectors (listener output) for ``texts``, one encoder pass."""
    pipe = nlp.get_pipe(name)
    docs = list(nlp.pipe(texts, disable=[name], batch_size=batch_size))
    return pipe.model.predict(docs), docs


def perplexity_report(nlp, pairs: Sequence[Tuple[str, str]], name: str = "kx_generator",
                      batch_size: int = 64) -> dict:
    """Per-token perplexity of the targets given the sources (teacher forcing), and how the
    target positions were counted.

    Every target token and the final EOS count, except tokens outside the target vocabulary
    (UNK): the generator never produces UNK (probability 0), so those positions are left out of
    both the summed NLL and the count (the UNK token is still fed as the next input).
    RETURNS (dict): ``perplexity``, ``n_positions`` (counted, EOS included), ``n_unk`` (left
    out), ``unk_share`` (n_unk / all target positions).
    """
    import torch

    from ..models.seq2seq_decoder import sequence_nll

    pipe = nlp.get_pipe(name)
    vocab = pipe.target_vocab
    dec = pipe.decoder
    dec.eval()
    total, count, n_unk = 0.0, 0, 0
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        vectors, _ = _encode_vectors(nlp, [s for s, _ in chunk], name, batch_size)
        targets = pipe._encode_targets([t for _, t in chunk])
        memory, mask = pipe._memory(vectors)
        T = max(len(t) for t in targets) + 1
        tgt_in = torch.full((len(chunk), T), vocab.pad_id, dtype=torch.long)
        tgt_out = torch.full((len(chunk), T), vocab.pad_id, dtype=torch.long)
        for r, ids in enumerate(targets):
            tgt_in[r, 0] = vocab.bos_id
            tgt_in[r, 1:len(ids) + 1] = torch.tensor(ids, dtype=torch.long)
            tgt_out[r, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            tgt_out[r, len(ids)] = vocab.eos_id
        tgt_mask = torch.arange(T)[None, :] <= torch.tensor([len(t) for t in targets])[:, None]
        with torch.no_grad():
            lp = dec(tgt_in.to(memory.device), memory, mask, tgt_mask.to(memory.device))
            s, n = sequence_nll(lp, tgt_out.to(memory.device), vocab.pad_id, ignore_ids=vocab.loss_ignore_ids)
        total += s.item()
        count += int(n.item())
        n_unk += int((tgt_out == vocab.unk_id).sum().item())
    return {"perplexity": math.exp(total / max(count, 1)), "n_positions": count, "n_unk": n_unk,
            "unk_share": n_unk / max(1, count + n_unk),
            "counting": "target tokens + EOS; UNK targets (never generated) left out"}


def perplexity(nlp, pairs: Sequence[Tuple[str, str]], name: str = "kx_generator", batch_size: int = 64) -> float:
    """Per-token perplexity (EOS included, UNK targets left out; see :func:`perplexity_report`)."""
    return perplexity_report(nlp, pairs, name, batch_size)["perplexity"]


def baselines(train_pairs, test_pairs, *, target_tokenizer: str = "char", bleu_tokenize: str = "13a") -> Dict[str, dict]:
    """Scores of two reference points: copy the source; the most frequent target tokens.

    The unigram baseline outputs, for each source, the train targets' most frequent tokens
    repeated to the train targets' average length (in tokens).
    """
    from .scoring import text_scores
    from .vocab import make_target_tokenizer

    tok, detok = make_target_tokenizer(target_tokenizer if target_tokenizer != "encoder" else "whitespace")
    refs = [t for _, t in test_pairs]
    counts = Counter(x for _, t in train_pairs for x in tok(t))
    avg_len = max(1, round(sum(len(tok(t)) for _, t in train_pairs) / max(1, len(train_pairs))))
    common = [w for w, _ in counts.most_common(avg_len)]
    unigram = detok((common * avg_len)[:avg_len])
    return {
        "copy_source": text_scores([s for s, _ in test_pairs], refs, bleu_tokenize=bleu_tokenize),
        "unigram": text_scores([unigram] * len(refs), refs, bleu_tokenize=bleu_tokenize),
    }


def random_vectors_sources(nlp, n: int, length: int, seed: int, name: str = "kx_generator"):
    """Listener vectors of ``n`` sources of ``length`` random tokens of the encoder's vocabulary."""
    from ..backbone import Backbone

    pipe = nlp.get_pipe(name)
    backbone = Backbone.from_nlp(nlp, pipe.cfg["transformer"])
    tokenizer = backbone.tokenizer
    specials = set(tokenizer.all_special_tokens)
    pool = [t for t in tokenizer.get_vocab() if t not in specials and not t.startswith("##") and t.strip()]
    rng = random.Random(seed)
    joiner = "" if nlp.lang == "zh" else " "
    texts = [joiner.join(rng.choice(pool) for _ in range(length)) for _ in range(n)]
    vectors, _ = _encode_vectors(nlp, texts, name)
    return vectors


def _prefixed_decode(pipe, vectors, strategy, *, prefix_length: int, seed: int, max_length: int):
    """Continuations of random target-vocabulary prefixes (the consistency-lm protocol): the
    prefix is forced through the decoder's steps, then ``strategy`` continues for
    ``max_length`` more steps. RETURNS (List[Hypothesis]): the continuations."""
    import torch

    vocab = pipe.target_vocab
    dec = pipe.decoder
    dec.eval()
    gen = torch.Generator().manual_seed(10_000 + seed)
    out = []
    bs = pipe.cfg["batch_size"]
    with torch.no_grad():
        for start in range(0, len(vectors), bs):
            chunk = vectors[start:start + bs]
            memory, mask = pipe._memory(chunk)
            prefix = torch.randint(4, len(vocab), (len(chunk), prefix_length), generator=gen).to(memory.device)
            state = dec.init_state(memory, mask)
            _, state = dec.step(torch.full((len(chunk),), vocab.bos_id, device=memory.device), state)
            for i in range(prefix_length - 1):
                _, state = dec.step(prefix[:, i], state)
            out.extend(strategy.decode(dec, state, len(chunk), bos_id=prefix[:, -1], eos_id=vocab.eos_id,
                                       max_length=max_length, seed=seed + start))
    return out


def non_termination(pipe, vectors, mode: str, lengths: Sequence[int], seeds: Sequence[int],
                    prefix_length: int = 0) -> dict:
    """r_L for each L in ``lengths`` (decoding once to max(lengths)), averaged over seeds.

    prefix_length (int): > 0: continue random target prefixes of this length (forced), the
        protocol of uralik/consistency-lm; 0: decode from BOS.
    RETURNS (dict): ``{"r": {L: mean}, "r_per_seed": {L: [...]}, "avg_len", "tokens_per_s"}``.
    """
    strategy = make_strategy(mode)
    L_max = max(lengths)
    deterministic = not getattr(strategy, "sampling", False)
    per_seed = {L: [] for L in lengths}
    steps_total, seconds, lens = 0, 0.0, []
    for seed in (seeds[:1] if deterministic else seeds):
        start = time.perf_counter()
        if prefix_length:
            gens = _prefixed_decode(pipe, vectors, strategy, prefix_length=prefix_length, seed=seed,
                                    max_length=L_max)
        else:
            gens = pipe.generate_from_vectors(vectors, strategy, seed=seed, max_length=L_max)
        seconds += time.perf_counter() - start
        steps_total += sum(g.n_steps for g in gens)
        lens.extend(len(g.token_ids) for g in gens)
        for L in lengths:
            per_seed[L].append(sum(1 for g in gens if g.n_steps >= L and g.stopped_by == "max_length"
                                   or g.n_steps > L) / len(gens))
    return {
        "r": {L: sum(v) / len(v) for L, v in per_seed.items()},
        "r_per_seed": per_seed,
        "avg_len": sum(lens) / max(1, len(lens)),
        "tokens_per_s": steps_total / seconds if seconds else None,
        "seeds": len(per_seed[lengths[0]]),
    }


def evaluate_generator(model_path, test_path, train_path, *, limit: int = 500, n_random: int = 1000,
                       random_length: int = 10, seeds: int = 10, modes: Optional[Sequence[str]] = None,
                       lengths: Sequence[int] = (100, 1000), rl_limit: int = 200, bleu_tokenize: str = "13a",
                       prefix_length: int = 10, name: str = "kx_generator") -> dict:
    """The evaluate-generator figures for one trained pipeline (see the module docstring).

    model_path: the trained pipeline. test_path / train_path: ``source<TAB>target`` files.
    limit (int): test pairs scored. n_random (int): random-token sources for r_L.
    rl_limit (int): test sources used for r_L. seeds (int): seeds per sampling mode.
    prefix_length (int): also r_L of continuations of random ``prefix_length``-token target
        prefixes on the test sources (0: skip).
    RETURNS (dict): all figures (JSON-ready).
    """
    import spacy

    from .scoring import text_scores

    nlp = spacy.load(model_path)
    pipe = nlp.get_pipe(name)
    test = read_pairs(test_path, limit=limit)
    train = read_pairs(train_path, limit=20000)
    bound = pipe.termination_bound()
    out: dict = {"model": str(model_path), "output_layer": pipe.model.attrs["output_kind"],
                 "epsilon": pipe.model.attrs["epsilon"], "t_star": bound.t_star,
                 "attention": pipe.model.attrs["attention"], "n_test": len(test)}
    ppl = perplexity_report(nlp, test, name)
    out["perplexity"] = ppl.pop("perplexity")
    out["perplexity_counts"] = ppl
    start = time.perf_counter()
    docs = list(nlp.pipe([s for s, _ in test], batch_size=64))
    seconds = time.perf_counter() - start
    hyps = [d._.kx_generation["text"] for d in docs]
    out["greedy_test"] = text_scores(hyps, [t for _, t in test], bleu_tokenize=bleu_tokenize)
    out["greedy_test"]["avg_len_chars"] = sum(len(h) for h in hyps) / max(1, len(hyps))
    out["greedy_test"]["docs_per_s_pipeline"] = len(docs) / seconds
    out["baselines"] = baselines(train, test, target_tokenizer=pipe.cfg["target_tokenizer"], bleu_tokenize=bleu_tokenize)
    Ls = sorted(set(list(lengths) + ([bound.t_star] if bound.t_star else [])))
    test_vectors, _ = _encode_vectors(nlp, [s for s, _ in test[:rl_limit]], name)
    rand_vectors = random_vectors_sources(nlp, n_random, random_length, seed=0, name=name)
    out["non_termination"] = {}
    for mode in modes or list(MODES):
        out["non_termination"][mode] = {
            "test_sources": non_termination(pipe, test_vectors, mode, Ls, list(range(seeds))),
            "random_sources": non_termination(pipe, rand_vectors, mode, Ls, list(range(seeds))),
        }
        if prefix_length:
            out["non_termination"][mode]["test_sources_random_prefix"] = non_termination(
                pipe, test_vectors, mode, Ls, list(range(seeds)), prefix_length=prefix_length)
    return out


# ------------------------------------------------------------------ benchmark
def bench_decode(*, positions: Sequence[int] = (64, 256, 1024, 4096), d_model: int = 256, n_layers: int = 2,
                 n_heads: int = 4, vocab: int = 5000, memory_len: int = 32, batch: int = 1,
                 repeats: int = 16, seed: int = 0) -> dict:
    """Per-token decoding latency (ms) at given positions: KV-cache softmax vs linear attention.

    Both decoders have the same sizes and random weights; each is stepped up to every
    position, and the mean time of ``repeats`` further steps is taken there.
    RETURNS (dict): ``{"softmax": {pos: ms}, "linear": {pos: ms}, "batch_speedup": ...}``.
    """
    import torch

    from ..models.seq2seq_decoder import Seq2SeqDecoder
    from .output_layers import OutputLayerSpec

    torch.manual_seed(seed)
    result: dict = {"settings": {"d_model": d_model, "n_layers": n_layers, "n_heads": n_heads, "vocab": vocab,
                                 "batch": batch, "threads": torch.get_num_threads()}}
    memory = torch.randn(batch, memory_len, d_model)
    mask = torch.ones(batch, memory_len, dtype=torch.bool)
    for attention in ("softmax", "linear"):
        dec = Seq2SeqDecoder(vocab, d_model, OutputLayerSpec("nmst", 1e-3).build(d_model, vocab, 2, (0, 1)),
                             d_model=d_model, n_layers=n_layers, n_heads=n_heads, dropout=0.0,
                             attention=attention).eval()
        times = {}
        with torch.no_grad():
            state = dec.init_state(memory, mask)
            tok = torch.full((batch,), 5, dtype=torch.long)
            pos = 0
            for target in sorted(positions):
                while pos < target:
                    _, state = dec.step(tok, state)
                    pos += 1
                start = time.perf_counter()
                for _ in range(repeats):
                    _, state = dec.step(tok, state)
                    pos += 1
                times[target] = (time.perf_counter() - start) / repeats * 1000.0
        result[attention] = times
    return result


def bench_batching(pipe_like_decoder=None, *, n: int = 64, max_length: int = 32, d_model: int = 128,
                   vocab: int = 2000, seed: int = 0) -> dict:
    """Time per sequence: greedy decoding of ``n`` sequences one by one vs in one batch."""
    import torch

    from ..models.seq2seq_decoder import Seq2SeqDecoder
    from .decoding import Greedy
    from .output_layers import OutputLayerSpec

    torch.manual_seed(seed)
    dec = pipe_like_decoder or Seq2SeqDecoder(
        vocab, d_model, OutputLayerSpec("softmax").build(d_model, vocab, 2, (0, 1)), d_model=d_model,
        n_layers=2, n_heads=4, dropout=0.0)
    memory = torch.randn(n, 16, d_model)
    mask = torch.ones(n, 16, dtype=torch.bool)
    start = time.perf_counter()
    for i in range(n):
        dec.decode(memory[i:i + 1], mask[i:i + 1], Greedy(), bos_id=1, eos_id=2, max_length=max_length)
    one = (time.perf_counter() - start) / n
    start = time.perf_counter()
    dec.decode(memory, mask, Greedy(), bos_id=1, eos_id=2, max_length=max_length)
    many = (time.perf_counter() - start) / n
    return {"n": n, "max_length": max_length, "ms_per_seq_one_by_one": one * 1000, "ms_per_seq_batched": many * 1000,
            "speedup": one / many}


def write_json(data: dict, path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str), encoding="utf8")
