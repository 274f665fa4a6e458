"""kx_parser: the standard component battery."""
import pytest
import spacy
from spacy import displacy
from spacy.tokens import Doc

from kx_spacy.errors import MissingTransformerError, NoMaskTokenError, TransformerNotInitializedError
from kx_spacy.perturbed.trees import is_tree

TEXT = "The quick brown fox jumps over the lazy dog. I liked this movie very much!"


@pytest.fixture(scope="module")
def nlp(tiny_mlm_dir):
    from kx_spacy.testing import make_pipeline

    nlp = make_pipeline("en", tiny_mlm_dir)
    nlp.add_pipe("kx_parser")
    return nlp


def heads(doc):
    return [(t.head.i, t.dep_) for t in doc]


def assert_one_tree_per_sentence(doc):
    assert doc.has_annotation("DEP")
    for sent in doc.sents:
        roots = [t for t in sent if t.head.i == t.i]
        assert len(roots) == 1 and roots[0].dep_ == "ROOT"
        assert all(sent.start <= t.head.i < sent.end for t in sent)
        local = [-1] + [0 if t.head.i == t.i else t.head.i - sent.start + 1 for t in sent]
        assert is_tree(local)
        assert all(t.dep_ == "dep" for t in sent if t.head.i != t.i)


def test_parses_and_renders(nlp):
    doc = nlp(TEXT)
    assert_one_tree_per_sentence(doc)
    assert len(list(doc.sents)) == 1  # no sentence boundaries set: one tree for the doc
    record = doc._.kx_parse
    assert record["sentences"] == [{"start": 0, "end": len(doc), "root": record["sentences"][0]["root"]}]
    html = displacy.render(doc, style="dep")
    assert "<svg" in html and "dep" in html


def test_existing_sentence_boundaries_are_kept(tiny_mlm_dir):
    from kx_spacy.testing import make_pipeline

    nlp = make_pipeline("en", tiny_mlm_dir)
    nlp.add_pipe("sentencizer", first=True)
    nlp.add_pipe("kx_parser")
    doc = nlp(TEXT)
    bounds = [(s.start, s.end) for s in doc.sents]
    assert len(bounds) == 2
    assert [(r["start"], r["end"]) for r in doc._.kx_parse["sentences"]] == bounds
    assert_one_tree_per_sentence(doc)
    ref = nlp.get_pipe("sentencizer")(nlp.make_doc(TEXT))
    assert [(s.start, s.end) for s in ref.sents] == bounds


def test_pipe_batch_equals_single_calls(nlp):
    texts = [TEXT, "cat", "", "Ω 😀 the dog", "  ", "..."]
    batched = list(nlp.pipe(texts, batch_size=4))
    for text, doc in zip(texts, batched):
        assert heads(nlp(text)) == heads(doc)
        assert nlp(text)._.kx_parse == doc._.kx_parse


def test_odd_docs_have_defined_results(nlp):
    empty = nlp("")
    assert len(empty) == 0 and empty._.kx_parse["sentences"] == []
    one = nlp("cat")
    assert heads(one) == [(0, "ROOT")]
    for text in ("  ", "!?", "the  cat\n\nsat", "Ω 😀 élan"):
        doc = nlp(text)
        assert_one_tree_per_sentence(doc)
    spaces = nlp("the  cat")  # "the", " ", "cat": the space hangs on "the"
    assert spaces[1].is_space and spaces[1].head.i == 0


def test_doc_longer_than_the_window(nlp):
    text = " ".join(["snowboarding the xylophone cat sat ."] * 4)  # 92 pieces, window 62
    doc = nlp(text)
    assert len(doc) == 24
    assert_one_tree_per_sentence(doc)


def test_serialisation_round_trips(nlp, tmp_path):
    doc = nlp(TEXT)
    nlp.to_disk(tmp_path / "p")
    loaded = spacy.load(tmp_path / "p")
    assert heads(loaded(TEXT)) == heads(doc)
    from_bytes = spacy.util.load_model_from_config(nlp.config).from_bytes(nlp.to_bytes())
    assert heads(from_bytes(TEXT)) == heads(doc)
    restored = Doc(nlp.vocab).from_bytes(doc.to_bytes())
    assert heads(restored) == heads(doc) and restored._.kx_parse == doc._.kx_parse


@pytest.mark.slow
def test_n_process_2(nlp):
    import torch

    # torch's OpenMP pool does not survive fork(): one intra-op thread in the parent.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        texts = [TEXT, "the cat sat", "", "Ω dog"]
        serial = [(heads(d), d._.kx_parse) for d in nlp.pipe(texts)]
        parallel = [(heads(d), d._.kx_parse) for d in nlp.pipe(texts, n_process=2, batch_size=2)]
    finally:
        torch.set_num_threads(threads)
    assert parallel == serial


def test_config_choices(tiny_mlm_dir):
    from kx_spacy.testing import make_pipeline

    nlp = make_pipeline("en", tiny_mlm_dir)
    nlp.add_pipe(
        "kx_parser",
        config={
            "decoder": {"@misc": "kx_spacy.ChuLiuEdmonds.v1"},
            "distance": {"@misc": "kx_spacy.CosineDistance.v1"},
            "mode": "official",
            "scoring": "official",
            "layers": [1, 2],
            "root_strategy": "root_row",
        },
    )
    assert_one_tree_per_sentence(nlp(TEXT))
    for bad in ({"mode": "x"}, {"scoring": "x"}, {"root_strategy": "x"}):
        with pytest.raises(Exception):
            make_pipeline("en", tiny_mlm_dir).add_pipe("kx_parser", config=bad)


def test_score_uses_registered_uas(nlp):
    from spacy.training import Example

    doc = nlp("the cat sat")
    ref = Doc(nlp.vocab, words=["the", "cat", "sat"], heads=[1, 2, 2], deps=["det", "nsubj", "ROOT"])
    scores = nlp.get_pipe("kx_parser").score([Example(doc, ref)])
    assert 0.0 <= scores["dep_uas"] <= 1.0 and "dep_uuas" in scores


def test_errors_without_usable_transformer(tiny_mlm_dir, tiny_nomask_dir):
    from kx_spacy.testing import make_pipeline, transformer_config

    nlp = spacy.blank("en")
    nlp.add_pipe("kx_parser")
    with pytest.raises(MissingTransformerError):
        nlp("the cat")
    nlp = spacy.blank("en")
    nlp.add_pipe("transformer", config=transformer_config(str(tiny_mlm_dir)))
    parser = nlp.add_pipe("kx_parser")
    with pytest.raises(TransformerNotInitializedError):
        parser(nlp.make_doc("the cat"))  # the transformer pipe itself cannot run yet
    nomask = make_pipeline("en", tiny_nomask_dir)
    nomask.add_pipe("kx_parser")
    with pytest.raises(NoMaskTokenError):
        nomask("the cat")


def test_a_long_doc_without_boundaries_is_cut_into_chunks(tiny_mlm_dir, monkeypatch):
    """Issue 16: a doc with no sentence boundaries used to be one cubic-cost sentence."""
    import warnings

    import kx_spacy.perturbed.parser as parser_module
    from kx_spacy.testing import make_pipeline

    nlp = make_pipeline("en", tiny_mlm_dir)
    nlp.add_pipe("kx_parser", config={"max_sentence_words": 8})
    lengths = []
    real = parser_module.compute_impacts

    def recording(backbone, sentences, **kwargs):
        lengths.extend(len(s) for s in sentences)
        return real(backbone, sentences, **kwargs)

    monkeypatch.setattr(parser_module, "compute_impacts", recording)
    text = " ".join(["the cat sat ."] * 5 + ["a very long clause with no end at all here"])
    with pytest.warns(UserWarning, match="max_sentence_words"):
        doc = nlp(text)
    assert max(lengths) <= 8 and sum(lengths) == len(doc)
    records = doc._.kx_parse["sentences"]
    assert all(r["chunk_of"] == [0, len(doc)] for r in records)
    assert [r["end"] for r in records][:2] == [8, 16]  # cut after a full stop
    assert records[-1]["end"] == len(doc) and records[0]["start"] == 0
    assert all(a["end"] == b["start"] for a, b in zip(records, records[1:]))
    assert [(s.start, s.end) for s in doc.sents] == [(r["start"], r["end"]) for r in records]
    assert_one_tree_per_sentence(doc)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nlp(text)  # said once per pipe
    short = nlp("the cat sat .")
    assert "chunk_of" not in short._.kx_parse["sentences"][0]


@pytest.mark.parametrize("bad", [-1, 1, 2.5, True])
def test_max_sentence_words_is_checked(tiny_mlm_dir, bad):
    from kx_spacy.testing import make_pipeline

    nlp = make_pipeline("en", tiny_mlm_dir)
    with pytest.raises(Exception, match="max_sentence_words"):  # KxError, or spaCy's config validation
        nlp.add_pipe("kx_parser", config={"max_sentence_words": bad})


def test_root_strategy_default_block_and_the_old_strings(tiny_mlm_dir):
    from kx_spacy.perturbed.roots import LexicalRoot
    from kx_spacy.testing import make_pipeline

    nlp = make_pipeline("en", tiny_mlm_dir)
    pipe = nlp.add_pipe("kx_parser")
    # the registered default is language-aware: bound to the English lexical predictor
    assert nlp.config["components"]["kx_parser"]["root_strategy"]["@misc"] == "kx_spacy.LanguageRoot.v1"
    assert isinstance(pipe.root_strategy, LexicalRoot) and pipe.root_strategy.lang == "en"
    doc = nlp("I watched the movie .")
    assert doc._.kx_parse["root_strategy"] == "lexical-en"
    assert doc._.kx_parse["sentences"][0]["root"] == 1  # "watched": after a subject pronoun, before a determiner
    assert_one_tree_per_sentence(doc)
    # the weights are settable from the config; position alone picks the first word
    nlp2 = make_pipeline("en", tiny_mlm_dir)
    nlp2.add_pipe("kx_parser", config={"root_strategy": {
        "@misc": "kx_spacy.ScoredRoot.v1", "log_position": -1.0, "log_length": 0.0, "log_piece_rank": 0.0,
        "masking_effect": 0.5}})
    doc2 = nlp2("I watched the movie .")
    assert doc2._.kx_parse["sentences"][0]["root"] in range(len(doc2))
    nlp3 = make_pipeline("en", tiny_mlm_dir)
    nlp3.add_pipe("kx_parser", config={"root_strategy": {
        "@misc": "kx_spacy.ScoredRoot.v1", "log_position": -1.0, "log_length": 0.0, "log_piece_rank": 0.0}})
    assert nlp3("I watched the movie .")._.kx_parse["sentences"][0]["root"] == 0
    # the former default stays selectable by name
    nlp4 = make_pipeline("en", tiny_mlm_dir)
    nlp4.add_pipe("kx_parser", config={"root_strategy": "centrality"})
    assert nlp4("I watched the movie .")._.kx_parse["root_strategy"] == "centrality"


def test_default_root_predictor_follows_the_pipeline_language(tiny_mlm_dir):
    """kx_parser's default root predictor is chosen per nlp.lang: English and Chinese get their
    own lexical weights, a language without any gets the centrality fallback."""
    import numpy

    from kx_spacy.perturbed.roots import ROOT_WEIGHTS, LexicalRoot
    from kx_spacy.testing import make_pipeline

    picked = {}
    for lang in ("en", "zh", "de"):
        nlp = make_pipeline(lang, tiny_mlm_dir)
        picked[lang] = nlp.add_pipe("kx_parser").root_strategy
    assert isinstance(picked["en"], LexicalRoot) and picked["en"].weights == ROOT_WEIGHTS["en"]
    assert isinstance(picked["zh"], LexicalRoot) and picked["zh"].weights == ROOT_WEIGHTS["zh"]
    assert picked["de"] == "centrality"
    # the two tables really differ where it matters: the same "sentence" gets different roots
    words = ["他", "看", "了", "书"]
    M = numpy.zeros((5, 5))
    assert picked["zh"](M, words) == 2  # 看: before the aspect marker 了
    zh_doc = make_pipeline("zh", tiny_mlm_dir)
    zh_doc.add_pipe("kx_parser")
    from spacy.tokens import Doc

    doc = zh_doc(Doc(zh_doc.vocab, words=words, spaces=[False] * 4))
    assert doc._.kx_parse["root_strategy"] == "lexical-zh"
    assert doc._.kx_parse["sentences"][0]["root"] == 1
    # an explicit choice is not overridden by the language
    nlp = make_pipeline("zh", tiny_mlm_dir)
    pipe = nlp.add_pipe("kx_parser", config={"root_strategy": {"@misc": "kx_spacy.LexicalRoot.v1", "lang": "en"}})
    assert pipe.root_strategy.lang == "en"
