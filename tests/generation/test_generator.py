"""kx_generator: the standard battery on the tiny offline model, bad input, a short overfit."""
import time

import pytest
import spacy
import torch
from spacy.tokens import DocBin
from thinc.api import Adam

from kx_spacy.errors import (
    GeneratorConfigError,
    GeneratorNotInitializedError,
    GeneratorVocabError,
    KxError,
    MissingTransformerError,
    SourceTooLongError,
)
from kx_spacy.generation.corpus import pair_to_example
from kx_spacy.generation.generator import Generation
from kx_spacy.testing import make_pipeline, transformer_config

PAIRS = [("春天来了", "秋月明"), ("山水美丽", "花鸟快乐"), ("今天天气很好", "我爱中国")]
SMALL = {"model": {"d_model": 32, "n_heads": 2, "n_layers": 1, "dropout": 0.0}, "max_length": 12}


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _pipeline(tiny_mlm_dir, **config):
    torch.manual_seed(0)
    nlp = spacy.blank("zh")
    nlp.add_pipe("transformer", config=transformer_config(str(tiny_mlm_dir)))
    cfg = {**SMALL, **config}
    nlp.add_pipe("kx_generator", config=cfg)
    return nlp


def _same(a, b):
    """Generation records equal up to float noise in log_prob (batch padding changes the sums)."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert {k: v for k, v in x.items() if k != "log_prob"} == {k: v for k, v in y.items() if k != "log_prob"}
        assert x["log_prob"] == pytest.approx(y["log_prob"], abs=1e-5)
    return True


def _examples(nlp, pairs=PAIRS):
    return [pair_to_example(nlp, s, t) for s, t in pairs]


@pytest.fixture(scope="module")
def trained(tiny_mlm_dir):
    """A generator overfit on three pairs by nlp.update (the pipeline's own training path)."""
    torch.set_num_threads(1)
    nlp = _pipeline(tiny_mlm_dir)
    examples = _examples(nlp)
    nlp.initialize(lambda: examples)
    opt = Adam(0.01)
    start = time.process_time()  # CPU time: the test machine may be shared
    first = last = None
    for _ in range(40):
        losses = nlp.update(examples, sgd=opt)
        first = losses["kx_generator"] if first is None else first
        last = losses["kx_generator"]
    return nlp, first, last, time.process_time() - start


def test_short_overfit_learns_the_pairs(trained):
    nlp, first, last, seconds = trained
    assert last < first / 5
    assert seconds < 20
    outputs = [nlp(s)._.kx_generation for s, _ in PAIRS]
    assert [o["text"] for o in outputs] == [t for _, t in PAIRS]
    assert all(o["stopped_by"] == "eos" for o in outputs)
    assert all(o["n_steps"] == len(t) + 1 for o, (_, t) in zip(outputs, PAIRS))


def test_add_pipe_defaults_and_bound(tiny_mlm_dir):
    nlp = _pipeline(tiny_mlm_dir)
    pipe = nlp.get_pipe("kx_generator")
    assert nlp.pipe_names == ["transformer", "kx_generator"]
    assert pipe.model.attrs["output_kind"] == "nmst"
    bound = pipe.termination_bound(10)
    assert bound.t_star == 693 and bound.sampling_tail == pytest.approx((1 - 1e-3) ** 55)
    softmax = _pipeline(tiny_mlm_dir, model={**SMALL["model"], "output_layer": {"@misc": "kx_spacy.SoftmaxOutput.v1"}})
    assert softmax.get_pipe("kx_generator").termination_bound(10).t_star is None


def test_before_initialize_is_a_clear_error(tiny_mlm_dir):
    nlp = make_pipeline("zh", tiny_mlm_dir)
    nlp.add_pipe("kx_generator", config=SMALL)
    with pytest.raises(GeneratorNotInitializedError):
        nlp("春天来了")


def test_initialize_without_targets_or_transformer(tiny_mlm_dir):
    nlp = _pipeline(tiny_mlm_dir)
    with pytest.raises(GeneratorVocabError):
        nlp.initialize(lambda: [pair_to_example(nlp, "春天", None)])
    bare = spacy.blank("zh")
    bare.add_pipe("kx_generator", config=SMALL)
    with pytest.raises(MissingTransformerError):
        bare.initialize(lambda: _examples(bare))


def test_empty_doc_and_too_long_source(trained):
    nlp = trained[0]
    assert nlp("")._.kx_generation == {"text": "", "token_ids": [], "log_prob": 0.0, "n_steps": 0,
                                       "stopped_by": "empty"}
    pipe = nlp.get_pipe("kx_generator")
    before = pipe.cfg["max_source_tokens"]
    pipe.cfg["max_source_tokens"] = 3
    try:
        with pytest.raises(SourceTooLongError):
            nlp("今天天气很好")
    finally:
        pipe.cfg["max_source_tokens"] = before


def test_pipe_equals_call_and_docbin(trained):
    nlp = trained[0]
    texts = [s for s, _ in PAIRS] + ["", "山水"]
    one = [nlp(t)._.kx_generation for t in texts]
    many = [d._.kx_generation for d in nlp.pipe(texts, batch_size=2)]
    assert _same(one, many)
    docs = list(nlp.pipe(texts))
    batch = [d._.kx_generation for d in docs]
    restored = list(DocBin(docs=docs, store_user_data=True).get_docs(nlp.vocab))
    assert [Generation.from_dict(d._.kx_generation).to_dict() for d in restored] == batch
    again = spacy.tokens.Doc(nlp.vocab).from_bytes(docs[0].to_bytes())._.kx_generation
    assert Generation.from_dict(again).to_dict() == batch[0]


def test_serialisation_round_trips(trained, tmp_path):
    nlp = trained[0]
    want = [nlp(s)._.kx_generation for s, _ in PAIRS]
    nlp.to_disk(tmp_path / "p")
    loaded = spacy.load(tmp_path / "p")
    assert _same([loaded(s)._.kx_generation for s, _ in PAIRS], want)
    fresh = spacy.blank("zh").from_config(nlp.config)
    fresh.get_pipe("transformer").from_bytes(nlp.get_pipe("transformer").to_bytes())
    fresh.get_pipe("kx_generator").from_bytes(nlp.get_pipe("kx_generator").to_bytes())
    assert _same([fresh(s)._.kx_generation for s, _ in PAIRS], want)


def test_encoder_runs_once_per_doc(trained):
    nlp = trained[0]
    module = nlp.get_pipe("transformer").model.transformer
    rows = []
    handle = module.register_forward_hook(lambda m, args, kwargs_or_out, *rest: rows.append(1))
    try:
        list(nlp.pipe([s for s, _ in PAIRS], batch_size=8))
        assert len(rows) == 1  # one batch: one encoder forward, the generator reads trf_data
        nlp("春天来了")
        assert len(rows) == 2
    finally:
        handle.remove()


def test_vocab_without_eos_is_refused(trained):
    from kx_spacy.generation.vocab import TargetVocab

    with pytest.raises(GeneratorVocabError):
        TargetVocab(["<pad>", "<s>", "<unk>", "a"])
    pipe = trained[0].get_pipe("kx_generator")
    import srsly

    msg = srsly.msgpack_loads(pipe.to_bytes())
    cfg = srsly.json_loads(msg["cfg"])
    cfg["target_vocab"] = [t for t in cfg["target_vocab"] if t != "</s>"]
    msg["cfg"] = srsly.json_dumps(cfg)
    with pytest.raises(GeneratorVocabError):
        pipe.__class__.from_bytes(pipe, srsly.msgpack_dumps(msg))


@pytest.mark.parametrize("config", [
    {"max_length": 0}, {"max_length": -2}, {"label_smoothing": 1.0}, {"target_tokenizer": "bpe"},
    {"model": {**SMALL["model"], "output_layer": {"@misc": "kx_spacy.SelfTerminatingOutput.v1", "epsilon": 1.5}}},
    {"model": {**SMALL["model"], "output_layer": {"@misc": "kx_spacy.NonMonotonicSelfTerminatingOutput.v1", "epsilon": 0.0}}},
    {"decoding": {"@misc": "kx_spacy.TopKSampling.v1", "k": 0}},
    {"decoding": {"@misc": "kx_spacy.NucleusSampling.v1", "p": 1.5}},
    {"decoding": {"@misc": "kx_spacy.NucleusSampling.v1", "p": 0.0}},
    {"decoding": {"@misc": "kx_spacy.BeamSearch.v1", "width": 0}},
    {"model": {**SMALL["model"], "n_heads": 3}},
])
def test_bad_settings_are_clear_errors(tiny_mlm_dir, config):
    with pytest.raises(KxError):
        _pipeline(tiny_mlm_dir, **config)


def test_strategies_linear_decoder_and_label_smoothing(tiny_mlm_dir):
    nlp = _pipeline(tiny_mlm_dir, label_smoothing=0.1,
                    model={**SMALL["model"], "attention": "linear",
                           "output_layer": {"@misc": "kx_spacy.SelfTerminatingOutput.v1", "epsilon": 0.2}})
    examples = _examples(nlp)
    opt = nlp.initialize(lambda: examples)
    losses = nlp.update(examples, sgd=opt)
    assert losses["kx_generator"] > 0
    pipe = nlp.get_pipe("kx_generator")
    vectors = pipe.model.predict(list(nlp.pipe([s for s, _ in PAIRS], disable=["kx_generator"])))
    from kx_spacy.generation.decoding import BeamSearch, Sampling

    t_star = pipe.termination_bound().t_star  # 4 at ε = 0.2
    for strategy in (None, BeamSearch(3, 0.5), Sampling(top_p=0.9), Sampling(top_k=2, temperature=1.5)):
        gens = pipe.generate_from_vectors(vectors, strategy, max_length=50)
        assert all(g.stopped_by == "eos" and g.n_steps <= t_star for g in gens)


def test_scores_reach_nlp_evaluate(trained):
    nlp = trained[0]
    scores = nlp.evaluate(_examples(nlp))
    assert scores["gen_exact"] == 1.0 and scores["gen_chrf"] == pytest.approx(1.0)
    assert scores["gen_nonterm"] == 0.0
    assert scores["gen_bleu"] is not None


@pytest.mark.slow
def test_n_process_2(trained):
    nlp = trained[0]
    texts = [s for s, _ in PAIRS]
    want = [nlp(t)._.kx_generation for t in texts]
    got = [d._.kx_generation for d in nlp.pipe(texts, n_process=2, batch_size=2)]
    assert _same(got, want)
