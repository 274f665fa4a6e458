"""Sequence-level fine-tuning of a (tiny) trained kx_generator pipeline on the engine."""
import math

import pytest
import spacy
import torch
from thinc.api import Adam

from kx_spacy.generation.corpus import pair_to_example
from kx_spacy.generation.mgs import MGSConfig
from kx_spacy.testing import transformer_config

PAIRS = [("春天来了", "秋月明"), ("山水美丽", "花鸟快乐"), ("今天天气很好", "我爱中国"), ("风吹", "雨打")]


@pytest.fixture(scope="module")
def saved_pipeline(tiny_mlm_dir, tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    nlp = spacy.blank("zh")
    nlp.add_pipe("transformer", config=transformer_config(str(tiny_mlm_dir)))
    nlp.add_pipe("kx_generator", config={"model": {"d_model": 32, "n_heads": 2, "n_layers": 1, "dropout": 0.0},
                                         "max_length": 12})
    examples = [pair_to_example(nlp, s, t) for s, t in PAIRS]
    nlp.initialize(lambda: examples)
    opt = Adam(0.01)
    for _ in range(15):
        nlp.update(examples, sgd=opt)
    path = tmp_path_factory.mktemp("gen") / "model"
    nlp.to_disk(path)
    yield path
    torch.set_num_threads(before)


@pytest.mark.slow  # trains a tiny pipeline first (~15 s on 2 cores)
@pytest.mark.parametrize("method", ["mgs", "mrt"])
def test_finetune_generator_runs_saves_and_resumes(saved_pipeline, tmp_path, method):
    from kx_spacy.generation.mgs_generator import finetune_generator

    cfg = MGSConfig(method=method, num_candidates=2, parameters=["*output*"], candidate_scale=0.1)
    out = finetune_generator(saved_pipeline, PAIRS, tmp_path / "run", config=cfg, task_loss="chrf",
                             steps=2, batch_size=2, progress=False)
    assert out["updates"] == 2 and (tmp_path / "run" / "model" / "kx_generator").exists()
    assert out["cost"]["decodes"] >= 2
    again = finetune_generator(saved_pipeline, PAIRS, tmp_path / "run", config=cfg, task_loss="chrf",
                               steps=3, batch_size=2, progress=False, resume=True)
    assert again["updates"] == 3
    nlp = spacy.load(tmp_path / "run" / "model")
    assert isinstance(nlp("春天来了")._.kx_generation["text"], str)


@pytest.mark.slow
def test_subset_only_and_scores(saved_pipeline, tmp_path):
    from kx_spacy.generation.mgs_generator import GeneratorFinetuneError, decoder_scores, encode_pairs, \
        finetune_generator, generator_pipe
    from kx_spacy.generation.task_losses import ChrFLoss

    nlp = spacy.load(saved_pipeline)
    pipe = generator_pipe(nlp)
    before = {n: p.detach().clone() for n, p in pipe.decoder.named_parameters()}
    cfg = MGSConfig(num_candidates=2, parameters=["*output*"], candidate_scale=0.1)
    finetune_generator(saved_pipeline, PAIRS, tmp_path / "run", config=cfg, steps=2, batch_size=2,
                       progress=False, nlp=nlp)
    changed = {n for n, p in pipe.decoder.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("output" in n for n in changed)
    # plain SGD (the MGS direction without Adam's per-weight rescaling): the same subset moves
    before = {n: p.detach().clone() for n, p in pipe.decoder.named_parameters()}
    finetune_generator(saved_pipeline, PAIRS, tmp_path / "sgd", config=cfg, steps=1, batch_size=2, lr=0.5,
                       optimizer="sgd", progress=False, nlp=nlp, save=False)
    changed = {n for n, p in pipe.decoder.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("output" in n for n in changed)
    with pytest.raises(GeneratorFinetuneError):
        finetune_generator(saved_pipeline, PAIRS, tmp_path / "bad", config=cfg, optimizer="lbfgs", nlp=nlp)
    data = encode_pairs(nlp, PAIRS)
    scores = decoder_scores(pipe, pipe.decoder, data, task_loss=ChrFLoss())
    assert {"task_loss", "chrf", "bleu", "r_L", "repetition", "perplexity"} <= set(scores)
    assert 0.0 <= scores["task_loss"] <= 1.0 and math.isfinite(scores["perplexity"])


def test_pipeline_without_generator_is_a_clear_error(tmp_path):
    from kx_spacy.generation.mgs_generator import GeneratorFinetuneError, generator_pipe

    with pytest.raises(GeneratorFinetuneError):
        generator_pipe(spacy.blank("zh"))


def test_task_loss_names_and_generation_text():
    from kx_spacy.generation.mgs_generator import GenerationText, GeneratorFinetuneError, resolve_task_loss

    hyp = GenerationText("秋月明", [4, 5, 6], "max_length")
    assert resolve_task_loss("nonterm")([hyp], ["秋月明"]) == [1.0]
    assert resolve_task_loss("chrf")([hyp], ["秋月明"]) == [0.0]
    assert resolve_task_loss("edit")([hyp], ["秋月白"]) == [pytest.approx(1 / 3)]
    assert resolve_task_loss("kx_spacy.RepetitionLoss.v1")([hyp], ["x"]) == [0.0]
    loop = GenerationText("，，，，，，", [7] * 6, "max_length")
    assert resolve_task_loss("nonterm+repeat")([hyp, loop], ["x", "x"]) == [1.0, pytest.approx(1 + 2 / 3)]
    assert resolve_task_loss("nonterm+repeat+length")([loop], ["秋月明"]) == [pytest.approx(1 + 2 / 3 + 1)]
    with pytest.raises(GeneratorFinetuneError):
        resolve_task_loss("nonterm+")
    with pytest.raises(GeneratorFinetuneError):
        resolve_task_loss("no-such-loss")


@pytest.mark.slow
def test_batched_candidate_decodes_match_decoding_each_weight_set(saved_pipeline):
    from kx_spacy.generation.mgs_generator import GeneratorSequenceTask, encode_pairs, generator_pipe

    nlp = spacy.load(saved_pipeline)
    pipe = generator_pipe(nlp)
    module = pipe.decoder
    task = GeneratorSequenceTask(pipe, encode_pairs(nlp, PAIRS))
    batch = task.make_batch([0, 1, 2, 3])
    names = [n for n, _ in module.named_parameters() if n.startswith("output.")]
    assert task.supports_candidates(module, names) and not task.supports_candidates(module, ["embed.weight"])
    gen = torch.Generator().manual_seed(0)
    params = dict(module.named_parameters())
    values = [[params[n].detach() + 2.0 * torch.randn(params[n].shape, generator=gen) for n in names]
              for _ in range(2)]
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    got = task.decode_candidates(module, batch, 9, names, [None] + values)
    assert module.output.__class__.__name__ != "GroupedOutput"  # the output layer is put back
    assert all(torch.equal(p, before[n]) for n, p in module.named_parameters())
    expected = [task.decode(module, batch, 9)]
    for vals in values:
        with torch.no_grad():
            for n, v in zip(names, vals):
                params[n].copy_(v)
        expected.append(task.decode(module, batch, 9))
        with torch.no_grad():
            for n in names:
                params[n].copy_(before[n])
    assert [[h.ids for h in hyps] for hyps in got] == [[h.ids for h in hyps] for hyps in expected]
    assert [[h.stopped_by for h in hyps] for hyps in got] == [[h.stopped_by for h in hyps] for hyps in expected]
    assert [h.ids for h in got[1]] != [h.ids for h in got[0]] or [h.ids for h in got[2]] != [h.ids for h in got[0]]


@pytest.mark.slow
def test_cli_single_run_compare_and_summary(saved_pipeline, tmp_path):
    import json

    from typer.testing import CliRunner

    from kx_spacy.cli import app

    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("".join(f"{s}\t{t}\n" for s, t in PAIRS), encoding="utf-8")
    runner = CliRunner()
    common = ["--parameters", "output.*", "--num-candidates", "2", "--batch-size", "2", "--threads", "1"]
    res = runner.invoke(app, ["finetune-generator-mgs", str(saved_pipeline), str(pairs), str(tmp_path / "one"),
                              "--steps", "2", "--output", str(tmp_path / "one.json")] + common)
    assert res.exit_code == 0, res.output
    one = json.loads((tmp_path / "one.json").read_text())
    assert one["updates"] == 2 and one["cost"]["passes"] == 1.0  # K=2 and the current model: one pass
    assert 1.0 < one["cost"]["model_copies"] < 2.0 and "decoder passes" in res.output
    res = runner.invoke(app, ["finetune-generator-mgs", str(saved_pipeline), str(pairs), str(tmp_path / "cmp"),
                              "--compare", "--test", str(pairs), "--methods", "mle,mgs", "--seeds", "0",
                              "--steps", "1000", "--max-minutes", "0.02", "--clock", "process",
                              "--task-loss", "nonterm+repeat+length", "--noise", "3", "--optimizer", "sgd",
                              "--output", str(tmp_path / "c.json")] + common)
    assert res.exit_code == 0, res.output
    settings = json.loads((tmp_path / "c.json").read_text())["settings"]
    assert settings["clock"] == "process" and settings["optimizer"] == "sgd"
    assert settings["task_loss"] == "nonterm+repeat+length" and settings["config_overrides"]["noise"] == 3.0
    runs = json.loads((tmp_path / "c.json").read_text())["runs"]
    assert [r["method"] for r in runs] == ["start", "mle", "mgs"]
    assert all(1 <= r["cost_updates"] < 1000 for r in runs[1:])  # stopped by the time budget
    res = runner.invoke(app, ["mgs-summary", str(tmp_path / "c.json"), "--output", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output
    assert "delta_task_loss" in res.output and "cost_wall_per_update" in res.output
    summary = json.loads((tmp_path / "s.json").read_text())["summary"]
    assert set(summary) == {"start", "mle", "mgs"} and "delta_task_loss" in summary["mgs"]
