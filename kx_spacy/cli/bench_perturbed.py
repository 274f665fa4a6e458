"""`kx_spacy bench-perturbed`: sentences per second of the impact engine vs the official loop.

Both run on the same model in the same process, one after the other, on the same sentences:

* ``official loop``: the reference implementation's cost structure (one forward batch per
  piece position, each batch holding the input with that position's word masked and then
  every position's word masked too; fp32), ``impact.reference_impacts``;
* ``kx engine``: ``impact.compute_impacts`` in official and kx mode (every distinct masked
  input once, all sentences batched together), on the encoder's dtype (fp32 here unless
  ``--bf16``).

The official-mode matrices are compared with the loop's (``max |diff|``), so the speed-up is
measured on outputs that agree. ``--random-bert-base`` swaps the encoder for a randomly
initialised BERT-base (12 layers, 768 wide; the MiniLM tokenizer, whose vocabulary is BERT's)
and the sentences for synthetic ones of ``--subwords`` single-piece words: the GPU figure of
TARGETS.md (bf16 with ``--bf16``; the loop stays fp32).
"""
import json
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import typer

from . import app
from ._threads import DEFAULT_THREADS, THREADS_HELP, set_threads


def _ewt_sentences(path: Path, limit: int, max_words: int = 0, max_words_mode: str = "content") -> List[List[str]]:
    from ..readers import read_conllu

    return [s.words for s in read_conllu(path, limit=limit, max_words=max_words, count_punct=max_words_mode == "all")]


def _random_bert_base(device: str, bf16: bool):
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from ..backbone import Backbone
    from ..encoders import minilm_path

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=768, num_hidden_layers=12,
                        num_attention_heads=12, intermediate_size=3072, max_position_embeddings=512)
    module = BertModel(config).to(device).eval()
    fp32 = Backbone(module, tokenizer)
    if not bf16:
        return fp32, None
    import copy

    return fp32, Backbone(copy.deepcopy(module).to(torch.bfloat16), tokenizer)


def _synthetic_sentences(backbone, n_sentences: int, subwords: int) -> List[List[str]]:
    vocab = [w for w in backbone.tokenizer.get_vocab() if w.isalpha() and w.isascii() and len(w) > 2]
    vocab.sort()
    words = [w for w in vocab if len(backbone.tokenize_words([w]).ids) == 1][:5000]
    import random

    rng = random.Random(0)
    return [[rng.choice(words) for _ in range(subwords)] for _ in range(n_sentences)]


def _sync(backbone) -> None:
    import torch

    if backbone.device.type == "cuda":
        torch.cuda.synchronize()


def _agreement(mats, ref) -> float:
    """Fraction of words whose Eisner head (official scoring, ROOT-row root) is the same."""
    from ..perturbed.impact import impact_to_scores, predict_root
    from ..perturbed.trees import eisner

    same = total = 0
    for a, b in zip(mats, ref):
        ta = eisner(impact_to_scores(a, "official"), predict_root(a, "root_row"))
        tb = eisner(impact_to_scores(b, "official"), predict_root(b, "root_row"))
        same += int((ta[1:] == tb[1:]).sum())
        total += len(ta) - 1
    return same / max(total, 1)


def run_benchmark(
    fp32_backbone,
    sentences: Sequence[Sequence[str]],
    *,
    bf16_backbone=None,
    batch_size: int = 512,
    loop_limit: int = 0,
    progress: bool = True,
) -> Dict:
    """Time the official-style loop and the kx engine on the same sentences.

    fp32_backbone (Backbone): the fp32 encoder (the loop, and the fp32 engine rows).
    sentences (Sequence[Sequence[str]]): the sentences.
    bf16_backbone (Backbone or None): the same weights in bfloat16, for extra engine rows.
    batch_size (int): the engine's most inputs per forward.
    loop_limit (int): time the (slow) loop on the first N sentences only (0 = all); its
        sentences/second is compared with the engine's on all sentences.
    progress (bool): show progress bars.
    RETURNS (Dict): rows (engine, sentences, seconds, sentences/s, speed-up, max |diff| and
        head agreement with the loop's matrices).
    """
    import numpy
    from tqdm import tqdm

    from ..perturbed.impact import compute_impacts, reference_impacts

    fitting = [list(s) for s in sentences if 0 < len(fp32_backbone.tokenize_words(s).ids) <= fp32_backbone.max_content_length]
    loop_sents = fitting[:loop_limit] if loop_limit else fitting
    engines = [("float32", fp32_backbone)] + ([("bfloat16", bf16_backbone)] if bf16_backbone is not None else [])
    # warm-up: one small forward each, outside the timings
    for _, bb in engines:
        compute_impacts(bb, [fitting[0][:4]], batch_size=batch_size)
    reference_impacts(fp32_backbone, fitting[0][:3])
    _sync(fp32_backbone)
    start = time.perf_counter()
    ref = [reference_impacts(fp32_backbone, s) for s in tqdm(loop_sents, desc="official loop", unit="sent", disable=not progress)]
    _sync(fp32_backbone)
    loop_s = time.perf_counter() - start
    rows = [{"engine": "official loop (float32, one batch per position)", "sentences": len(loop_sents),
             "seconds": loop_s, "sent_per_s": len(loop_sents) / loop_s, "max_abs_diff": 0.0, "head_agreement": 1.0}]
    for dtype, bb in engines:
        for mode in ("official", "kx"):
            bar = tqdm(total=len(fitting), desc=f"kx engine ({mode}, {dtype})", unit="sent", disable=not progress)
            _sync(bb)
            start = time.perf_counter()
            mats = compute_impacts(bb, fitting, mode=mode, batch_size=batch_size, progress=bar.update)
            _sync(bb)
            seconds = time.perf_counter() - start
            bar.close()
            row = {"engine": f"kx engine, {mode} mode ({dtype})", "sentences": len(fitting), "seconds": seconds,
                   "sent_per_s": len(fitting) / seconds, "max_abs_diff": None, "head_agreement": None}
            if mode == "official":
                pairs = list(zip(mats, ref))
                row["max_abs_diff"] = float(max(numpy.abs(a - b).max() for a, b in pairs))
                row["head_agreement"] = _agreement([a for a, _ in pairs], [b for _, b in pairs])
            rows.append(row)
    for row in rows:
        row["speedup"] = row["sent_per_s"] / rows[0]["sent_per_s"]
        row["ms_per_sent"] = 1000.0 / row["sent_per_s"]
    return {"rows": rows,
            "mean_words": float(numpy.mean([len(s) for s in fitting])),
            "mean_pieces": float(numpy.mean([len(fp32_backbone.tokenize_words(s).ids) for s in fitting]))}


def format_table(result: Dict) -> str:
    """The result rows as a plain-text table."""
    lines = [f"{'engine':48} {'sents':>5} {'seconds':>8} {'sent/s':>8} {'ms/sent':>8} {'speed-up':>8} {'max|diff|':>9} {'heads=':>6}"]
    for r in result["rows"]:
        diff = "-" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.1e}"
        agree = "-" if r["head_agreement"] is None else f"{r['head_agreement']:.3f}"
        lines.append(f"{r['engine']:48} {r['sentences']:>5} {r['seconds']:>8.2f} {r['sent_per_s']:>8.3f} "
                     f"{r['ms_per_sent']:>8.1f} {r['speedup']:>7.2f}x {diff:>9} {agree:>6}")
    lines.append("max|diff|: largest entry difference from the loop's matrices (official mode); heads=: share of "
                 "words given the same Eisner head (official scoring, ROOT-row root) as from the loop's matrices.")
    return "\n".join(lines)


@app.command("bench-perturbed")
def bench_perturbed_cli(
    conllu: Optional[Path] = typer.Argument(None, help="CoNLL-U sentences (e.g. ${data_dir}/ud/UD_English-EWT/en_ewt-ud-test.conllu); not needed with --random-bert-base."),
    output: Path = typer.Option(Path("metrics/bench_perturbed.json"), "--output", "-o", help="Results JSON."),
    encoder: Optional[str] = typer.Option(None, help="HF name or path (default: the packaged MiniLM)."),
    limit: int = typer.Option(20, help="Sentences for the engine."),
    max_words: int = typer.Option(0, help="Only sentences of at most this many words (0 = all), as in evaluate-parser."),
    max_words_mode: str = typer.Option("content", help="What --max-words counts: 'content' (non-punctuation words) or 'all'."),
    long_docs: Optional[str] = typer.Option(None, help="Instead: time transformer + kx_parser on docs of these token counts with no sentence boundaries, comma separated (e.g. '1000,5000')."),
    max_sentence_words: Optional[int] = typer.Option(None, help="--long-docs: kx_parser's max_sentence_words (default: the component's)."),
    loop_limit: int = typer.Option(0, help="Sentences for the slow loop (0 = the same as the engine)."),
    batch_size: int = typer.Option(512, help="Engine: most masked inputs per forward."),
    threads: int = typer.Option(DEFAULT_THREADS, help=THREADS_HELP),
    random_bert_base: bool = typer.Option(False, "--random-bert-base", help="Random BERT-base weights, synthetic sentences."),
    subwords: int = typer.Option(32, help="--random-bert-base: sub-words per synthetic sentence."),
    bf16: bool = typer.Option(False, "--bf16", help="Also run the engine in bfloat16 (the loop stays fp32)."),
    device: str = typer.Option("auto", help="auto (cuda when available), cpu or cuda."),
):
    """Sentences/second: kx impact engine vs the official-style loop, same model, same run."""
    import platform

    import torch

    from .evaluate_perturbed import MAX_WORDS_MODES

    if max_words_mode not in MAX_WORDS_MODES:
        raise typer.BadParameter(f"--max-words-mode is one of {', '.join(MAX_WORDS_MODES)}, not {max_words_mode!r}")
    set_threads(threads)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if long_docs:
        _bench_long_docs(long_docs, encoder, max_sentence_words, device, output)
        return
    if random_bert_base:
        fp32, bf16_bb = _random_bert_base(device, bf16)
        sentences = _synthetic_sentences(fp32, limit, subwords)
        model_name = "random BERT-base (12x768)"
    else:
        if conllu is None:
            raise typer.BadParameter("give a CoNLL-U file, or --random-bert-base")
        from ..backbone import Backbone
        from ..encoders import english_encoder_path
        from ..testing import make_pipeline

        model_name = english_encoder_path(encoder)
        nlp = make_pipeline("en", model_name)
        fp32 = Backbone.from_nlp(nlp)
        fp32.module.to(device)
        bf16_bb = None
        if bf16:
            import copy

            bf16_bb = Backbone(copy.deepcopy(fp32.module).to(torch.bfloat16), fp32.tokenizer)
        sentences = _ewt_sentences(conllu, limit, max_words, max_words_mode)
    result = run_benchmark(fp32, sentences, bf16_backbone=bf16_bb, batch_size=batch_size, loop_limit=loop_limit)
    result.update({
        "model": model_name, "device": str(fp32.device),
        "device_name": torch.cuda.get_device_name(0) if fp32.device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "batch_size": batch_size, "source": str(conllu) if conllu else f"synthetic {subwords} sub-words",
        "max_words": max_words, "max_words_mode": max_words_mode,
    })
    print(f"model: {model_name} | device: {result['device']} ({result['device_name']}) | threads: {result['threads']} | "
          f"mean words {result['mean_words']:.1f}, pieces {result['mean_pieces']:.1f}")
    print(format_table(result))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf8")


def _bench_long_docs(spec: str, encoder: Optional[str], max_sentence_words: Optional[int], device: str,
                     output: Path) -> None:
    import torch

    from ..encoders import english_encoder_path
    from ..perturbed.benchmark import format_long_doc_table, long_doc_benchmark
    from ..testing import make_pipeline

    try:
        counts = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"--long-docs takes comma-separated token counts, got {spec!r}")
    if not counts or min(counts) < 1:
        raise typer.BadParameter(f"--long-docs takes positive token counts, got {spec!r}")
    model_name = english_encoder_path(encoder)
    nlp = make_pipeline("en", model_name)
    from ..backbone import Backbone

    Backbone.from_nlp(nlp).module.to(device)
    nlp.add_pipe("kx_parser", config={} if max_sentence_words is None else {"max_sentence_words": max_sentence_words})
    result = long_doc_benchmark(nlp, counts)
    result.update({"model": model_name, "device": device, "threads": torch.get_num_threads()})
    print(f"model: {model_name} | device: {device} | threads: {result['threads']}")
    print(format_long_doc_table(result))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf8")
