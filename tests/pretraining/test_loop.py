import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kx_spacy.errors import KxError
from kx_spacy.pretraining.errors import (
    CheckpointMismatchError, CorpusError, InvalidUTF8Error, PretrainConfigError, VocabSizeError,
)
from kx_spacy.pretraining.corpus import is_heldout
from kx_spacy.pretraining.loop import MANIFEST_NAME, MLMTask, Pretrainer, pretrain

from .conftest import tiny_config, write_corpus


def _run(cfg, corpus, out, **kw):
    return pretrain(cfg, out, extra_sources=[str(corpus)], progress=False, **kw)


def test_pretrain_writes_loadable_model_and_manifest(tmp_path, zh_corpus):
    out = tmp_path / "model"
    metrics = tmp_path / "metrics" / "m.json"
    cfg = tiny_config(max_steps=8, save_dtype="float16")
    man = _run(cfg, zh_corpus, out, metrics_path=metrics)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt", MANIFEST_NAME):
        assert (out / name).exists(), name
    assert not list(tmp_path.glob(".model.tmp*"))
    saved = json.loads((out / MANIFEST_NAME).read_text(encoding="utf-8"))
    assert saved == json.loads(metrics.read_text(encoding="utf-8"))
    assert saved["steps"] == 8 and saved["corpus"]["files"][0]["path"] == str(zh_corpus)
    n_chars = sum(len(line.strip()) for line in zh_corpus.read_text(encoding="utf-8").splitlines())
    corpus = saved["corpus"]
    assert corpus["total_chars"] == n_chars and corpus["total_texts"] == 200
    assert corpus["train_chars"] + corpus["heldout_chars"] == n_chars and corpus["heldout_chars"] > 0
    assert saved["heldout"]["chars"] == corpus["heldout_chars"]  # all held out texts evaluated
    assert 0.0 <= man["final"]["heldout_acc"] <= 1.0 and man["tokens_per_s"] > 0
    assert [h["step"] for h in saved["history"]] == [3, 6, 8]
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    model = AutoModelForMaskedLM.from_pretrained(str(out))
    tok = AutoTokenizer.from_pretrained(str(out))
    assert model.dtype == torch.float32  # fp16 on disk, fp32 when loaded
    with torch.inference_mode():
        logits = model(**tok("我爱北京", return_tensors="pt")).logits
    assert logits.shape == (1, 6, len(tok))


def test_spacy_transformers_loads_by_path(tmp_path, zh_corpus):
    from kx_spacy.testing import make_pipeline

    out = tmp_path / "model"
    _run(tiny_config(max_steps=2), zh_corpus, out)
    nlp = make_pipeline("zh", str(out))
    doc = nlp("我爱北京天安门")
    assert doc._.trf_data.tensors[0].shape[-1] == 32
    from kx_spacy.backbone import Backbone

    backbone = Backbone.from_nlp(nlp, "transformer")
    backbone.require_mask()
    assert backbone.tokenize_words(list("我爱北京")) is not None


def test_training_lowers_heldout_loss(tmp_path):
    corpus = write_corpus(tmp_path / "zh.txt", n_lines=300)
    cfg = tiny_config(max_steps=80, eval_every=20, lr=0.01, warmup_steps=4, eval_sequences=64)
    cfg["corpus"]["heldout_every"] = 4
    cfg["model"]["dropout"] = 0.0
    man = _run(cfg, corpus, tmp_path / "m")
    losses = [h["heldout_loss"] for h in man["history"]]
    assert [h["step"] for h in man["history"]] == [20, 40, 60, 80]
    uniform = math.log(man["vocab_size"])
    assert losses[-1] < losses[0] - 0.2 and losses[-1] < uniform - 0.5
    assert man["final"]["heldout_tokens"] > 100


def test_resume_continues_and_rejects_other_config(tmp_path, zh_corpus):
    out, ckpt = tmp_path / "m", tmp_path / "ck"
    _run(tiny_config(max_steps=3), zh_corpus, out, checkpoint_dir=ckpt)
    assert (ckpt / "checkpoint" / "state.pt").exists() and (ckpt / "metrics.jsonl").exists()
    man = _run(tiny_config(max_steps=6), zh_corpus, out, checkpoint_dir=ckpt, resume=True)
    assert man["steps"] == 6 and [h["step"] for h in man["history"]] == [3, 6]
    before = (out / "model.safetensors").read_bytes()
    other = tiny_config(max_steps=9)
    other["model"]["hidden_size"] = 48
    with pytest.raises(CheckpointMismatchError, match="hidden_size"):
        _run(other, zh_corpus, out, checkpoint_dir=ckpt, resume=True)
    assert (out / "model.safetensors").read_bytes() == before  # untouched
    with pytest.raises(PretrainConfigError, match="no checkpoint"):
        _run(tiny_config(), zh_corpus, tmp_path / "x", checkpoint_dir=tmp_path / "none", resume=True)


def test_bad_inputs_leave_nothing_behind(tmp_path, zh_corpus):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    bad = tmp_path / "bad.txt"
    bad.write_bytes("好的\n".encode() * 50 + b"\xc3\x28\n")
    cases = [
        (tiny_config(), [str(empty)], CorpusError, "empty"),
        (tiny_config(), [str(bad)], None, None),
        (tiny_config(), [str(tmp_path / "nope.txt")], CorpusError, "does not exist"),
    ]
    big = tiny_config()
    big["vocab"]["vocab_size"] = 10_000
    cases.append((big, [str(zh_corpus)], VocabSizeError, "larger than the data supports"))
    failing = tiny_config()
    failing["corpus"]["on_invalid"] = "fail"
    cases.append((failing, [str(bad)], InvalidUTF8Error, r"bad\.txt:51"))
    for i, (cfg, sources, err, msg) in enumerate(cases):
        out = tmp_path / f"out{i}"
        if err is None:  # invalid line skipped and counted
            man = pretrain(cfg, out, extra_sources=sources, progress=False)
            assert man["corpus"]["files"][0]["invalid_utf8_lines"] == 1
            continue
        with pytest.raises(err, match=msg):
            pretrain(cfg, out, extra_sources=sources, progress=False)
        assert not out.exists() and not (tmp_path / f".out{i}.tmp").exists()
        assert not (tmp_path / f"out{i}.checkpoints").exists()


def test_cli_overrides_and_errors(tmp_path, zh_corpus):
    from typer.testing import CliRunner

    from kx_spacy.cli import app

    cfg = tmp_path / "c.cfg"
    cfg.write_text("[model]\nhidden_size = 32\nnum_layers = 1\nnum_heads = 2\nintermediate_size = 32\n"
                   "max_position = 64\n[training]\nmax_length = 32\nmax_steps = 50\n", encoding="utf-8")
    runner = CliRunner()
    out = tmp_path / "o"
    res = runner.invoke(app, ["pretrain-mlm", str(cfg), str(out), "-i", str(zh_corpus), "--no-progress",
                              "--training.max_steps", "2", "--training.eval_every", "2",
                              "--vocab.min_count", "1"])
    assert res.exit_code == 0, res.output
    assert "held-out MLM loss" in res.output
    assert json.loads((out / MANIFEST_NAME).read_text())["config"]["training"]["max_steps"] == 2
    res = runner.invoke(app, ["pretrain-mlm", str(cfg), str(tmp_path / "o2"), "-i", str(zh_corpus),
                              "--vocab.vocab_size", "100000", "--no-progress"])
    assert res.exit_code == 1 and "VocabSizeError" in res.output
    res = runner.invoke(app, ["pretrain-mlm", str(cfg), str(tmp_path / "o3"), "-i", str(zh_corpus),
                              "--on-invalid", "maybe"])
    assert res.exit_code == 1 and "on_invalid" in res.output
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path):
    corpus = write_corpus(tmp_path / "zh.txt", n_lines=120)
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "kx_spacy", "pretrain-mlm", str(Path(__file__).parent / "tiny.cfg"), str(out),
           "-i", str(corpus), "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1", KX_FORCE_CPU="1")
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    man = json.loads((out / MANIFEST_NAME).read_text())
    assert man["world_size"] == 2 and man["steps"] == 4
    # each step consumed a batch on each of the 2 ranks
    assert man["tokens_seen"] > 4 * 8 * 10
    assert (out / "model.safetensors").exists()


def test_bf16_autocast_on_the_cpu_when_asked(tmp_path):
    corpus = write_corpus(tmp_path / "zh.txt", n_lines=300)
    cfg = tiny_config(max_steps=40, eval_every=20, lr=0.01, warmup_steps=4, eval_sequences=64, precision="bf16")
    cfg["corpus"]["heldout_every"] = 4
    man = _run(cfg, corpus, tmp_path / "m")
    assert man["autocast"] == "bf16" and man["device"] == "cpu"
    losses = [h["heldout_loss"] for h in man["history"]]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    from transformers import AutoModelForMaskedLM

    assert AutoModelForMaskedLM.from_pretrained(str(tmp_path / "m")).dtype == torch.float32


def test_engine_loss_equals_a_plain_loop(tmp_path, zh_corpus):
    """The run on the engine gives the held-out losses of the same run written out by hand."""
    import itertools

    from kx_spacy.pretraining.model import build_mlm
    from kx_spacy.training.clipping import clip_grad_global_norm

    cfg = tiny_config(max_steps=12, eval_every=4, checkpoint_every=0, warmup_steps=3)
    man = _run(cfg, zh_corpus, tmp_path / "m")
    ref = Pretrainer(cfg, tmp_path / "ref", extra_sources=[str(zh_corpus)], progress=False)
    ref.ckpt_dir.mkdir(parents=True)
    ref._prepare_vocab(False)
    t, tok = cfg["training"], ref.tokenizer
    model = build_mlm(cfg["model"], vocab_size=len(tok), pad_id=tok.pad_token_id, seed=t["seed"])
    task = MLMTask(model, tok, ref._train_texts, t, [])
    task.heldout = ref._heldout_batches(task.collator)
    groups = [[p for n, p in model.named_parameters() if (p.ndim < 2 or "LayerNorm" in n) == nd] for nd in (0, 1)]
    opt = torch.optim.AdamW([{"params": groups[0], "weight_decay": t["weight_decay"]},
                             {"params": groups[1], "weight_decay": 0.0}], lr=t["lr"], betas=tuple(t["betas"]))
    batches = itertools.chain.from_iterable(task.batches(e, 0, 1) for e in itertools.count())
    model.train()
    losses = []
    for step in range(t["max_steps"]):
        for g in opt.param_groups:  # linear warm-up × linear decay to 0
            g["lr"] = t["lr"] * min(1.0, (step + 1) / t["warmup_steps"]) * (1 - step / t["max_steps"])
        loss, _ = task.loss(task.module, next(batches))
        opt.zero_grad()
        loss.backward()
        clip_grad_global_norm(model.parameters(), t["clip_threshold"])
        opt.step()
        if (step + 1) % t["eval_every"] == 0:
            model.eval()
            with torch.no_grad():
                losses.append(task.evaluate(task.module)["heldout_loss"])
            model.train()
    assert [h["heldout_loss"] for h in man["history"]] == pytest.approx(losses, abs=1e-5)
    assert len(losses) == 3 and losses[-1] < losses[0]


def test_resume_accepts_the_same_corpus_by_another_path(tmp_path, zh_corpus, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out, ckpt = tmp_path / "m", tmp_path / "ck"
    _run(tiny_config(max_steps=3), zh_corpus, out, checkpoint_dir=ckpt)
    man = pretrain(tiny_config(max_steps=6), out, extra_sources=["zh.txt"], checkpoint_dir=ckpt, resume=True,
                   progress=False)
    assert man["steps"] == 6
    with zh_corpus.open("a", encoding="utf-8") as f:
        f.write("新加的一行\n")
    with pytest.raises(CheckpointMismatchError, match=r"corpus\.0\.files\.0\.sha256"):
        pretrain(tiny_config(max_steps=9), out, extra_sources=["zh.txt"], checkpoint_dir=ckpt, resume=True,
                 progress=False)


def _lines(held: bool, n: int):
    cands = (f"今天的第{i}句话很好" for i in itertools.count())
    return list(itertools.islice((c for c in cands if is_heldout(c, 10) == held), n))


def test_a_corpus_too_small_for_a_heldout_split_says_so(tmp_path):
    corpus = tmp_path / "small.txt"
    corpus.write_text("\n".join(_lines(False, 30)) + "\n", encoding="utf-8")
    with pytest.warns(UserWarning, match="too small for a held-out split"):
        man = _run(tiny_config(max_steps=2), corpus, tmp_path / "m")
    assert man["final"]["heldout_tokens"] == 0 and "too small" in man["heldout"]["note"]


def test_a_corpus_of_one_repeated_line_says_what_is_wrong(tmp_path):
    corpus = tmp_path / "one.txt"
    corpus.write_text((_lines(True, 1)[0] + "\n") * 50, encoding="utf-8")
    with pytest.raises(CorpusError, match=r"Every text of the corpus \(50 of 50\) fell in the held-out slice.*1 distinct"):
        _run(tiny_config(max_steps=2), corpus, tmp_path / "m")
    assert not (tmp_path / "m.checkpoints").exists()
