"""kx_segmenter and segment_texts: rules, Su's impacts, the standard component battery."""
import numpy
import pytest
import spacy

from kx_spacy.errors import KxError, MissingTransformerError, NoMaskTokenError, TransformerNotInitializedError

TEXT = "我爱北京天安门。今天天气很好，我们去公园散步abc123。"


@pytest.fixture(scope="module")
def zh(tiny_mlm_dir):
    from kx_spacy.testing import make_pipeline

    return make_pipeline("zh", tiny_mlm_dir, before=[("kx_segmenter", {})])


@pytest.fixture(scope="module")
def backbone(zh):
    from kx_spacy.backbone import Backbone

    return Backbone.from_nlp(zh)


def words(doc):
    return [t.text for t in doc]


def test_segments_keep_text_and_rules(zh):
    doc = zh(TEXT)
    assert "".join(words(doc)) == TEXT
    assert len(doc) < len(TEXT)  # something was joined
    for t in doc:
        if any(c in "。，" for c in t.text):
            assert len(t.text) == 1  # never joined across punctuation
    assert "abc123" in words(doc)  # Latin / digit runs whole
    assert zh.pipe_names == ["kx_segmenter", "transformer"]
    assert doc._.trf_data is not None  # the transformer ran on the merged tokens


def test_full_width_and_mixed_runs(zh):
    for text in ("ＡＢ１２北京", "北京ＡＢ１２", "北x9京"):
        doc = zh(text)
        run = "ＡＢ１２" if "Ａ" in text else "x9"
        assert any(run in w for w in words(doc))  # the run is never cut (it may take a neighbour)


def test_decimal_numbers_stay_whole(zh):
    from kx_spacy.perturbed.segmenter import _pair_rules

    assert _pair_rules(list("长3.5倍")) == [None, True, True, None]
    assert _pair_rules(list("３．５％")) == [True, True, False]
    assert _pair_rules(list("第1.好")) == [None, False, False]  # a full stop after a number splits
    assert _pair_rules(list(".5")) == [False] and _pair_rules(list("5.")) == [False]
    for text, number in (("增长了3.25倍。", "3.25"), ("约１２．５公里", "１２．５")):
        assert any(number in w for w in words(zh(text)))


def test_adjacent_impacts_match_the_full_matrix(backbone):
    from kx_spacy.perturbed.impact import compute_impacts
    from kx_spacy.perturbed.segmenter import adjacent_impacts

    chars = list("我爱北京天安门")
    M = compute_impacts(backbone, [chars], mode="kx")[0]
    mutual = adjacent_impacts(backbone, [chars])[0]
    expected = [(M[i + 1, i + 2] + M[i + 2, i + 1]) / 2 for i in range(len(chars) - 1)]
    numpy.testing.assert_allclose(mutual, expected, rtol=1e-4, atol=1e-7)


def test_threshold_fixed_and_calibrated(backbone):
    from kx_spacy.perturbed.segmenter import segment_texts

    text = "今天天气很好我们去公园散步我爱北京天安门"
    assert segment_texts(backbone, [text], threshold=0.0) == [[text]]
    assert segment_texts(backbone, [text], threshold=1e9) == [list(text)]
    assert segment_texts(backbone, [text], quantile=0.0) == [[text]]
    out = segment_texts(backbone, [text])[0]  # default: ~40 % of the pairs joined
    joined = len(text) - len(out)
    assert "".join(out) == text
    assert 0.3 * (len(text) - 1) <= joined <= 0.5 * (len(text) - 1)
    with pytest.raises(KxError):
        segment_texts(backbone, [text], quantile=2.0)


def test_segment_texts_matches_component(zh, backbone):
    from kx_spacy.perturbed.segmenter import segment_texts

    texts = [TEXT, "我爱北京", "。", "", "我"]
    assert segment_texts(backbone, texts) == [words(d) for d in zh.pipe(texts)]
    assert segment_texts(backbone, ["我爱 北京", "  "])[1] == []


def test_pipe_equals_single_calls(zh):
    texts = [TEXT, "", "北京", "你好！", "龘龘北京"]
    assert [words(d) for d in zh.pipe(texts, batch_size=2)] == [words(zh(t)) for t in texts]


def test_odd_docs(zh):
    assert len(zh("")) == 0
    assert words(zh("我")) == ["我"]
    assert words(zh("。，！")) == ["。", "，", "！"]
    assert "".join(words(zh("  ")).copy()).strip() == ""
    unk = zh("龘龘北京")  # 龘 is not in the tiny vocabulary: [UNK]
    assert "".join(words(unk)) == "龘龘北京"


def test_line_longer_than_the_window(zh, backbone):
    from kx_spacy.perturbed.segmenter import segment_texts

    stretch = "今天天气很好我们去公园散步" * 6  # 78 chars, no punctuation, window 62
    text = "我爱北京天安门，" * 6 + stretch + "。"
    assert len(text) > 2 * backbone.max_content_length
    doc = zh(text)
    assert "".join(words(doc)) == text
    assert segment_texts(backbone, [text]) == [words(doc)]
    assert len(doc) < len(text)


def test_serialisation_round_trips(zh, tmp_path):
    from spacy.tokens import Doc

    expected = words(zh(TEXT))
    zh.to_disk(tmp_path / "zh")
    assert words(spacy.load(tmp_path / "zh")(TEXT)) == expected
    again = spacy.util.load_model_from_config(zh.config).from_bytes(zh.to_bytes())
    assert words(again(TEXT)) == expected
    assert words(Doc(zh.vocab).from_bytes(zh(TEXT).to_bytes())) == expected


@pytest.mark.slow
def test_n_process_2(zh):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # torch's OpenMP pool does not survive fork()
    try:
        texts = [TEXT, "北京天安门", ""]
        serial = [words(d) for d in zh.pipe(texts)]
        parallel = [words(d) for d in zh.pipe(texts, n_process=2, batch_size=1)]
    finally:
        torch.set_num_threads(threads)
    assert parallel == serial


def test_errors(tiny_mlm_dir, tiny_nomask_dir):
    from kx_spacy.testing import make_pipeline, transformer_config

    nlp = spacy.blank("zh")
    nlp.add_pipe("kx_segmenter")
    with pytest.raises(MissingTransformerError):
        nlp("我爱北京")
    nlp.add_pipe("transformer", config=transformer_config(str(tiny_mlm_dir)))
    with pytest.raises(TransformerNotInitializedError):
        nlp("我爱北京")
    nomask = make_pipeline("zh", tiny_nomask_dir, before=[("kx_segmenter", {})])
    with pytest.raises(NoMaskTokenError):
        nomask("我爱北京")
    with pytest.raises(KxError):
        spacy.blank("zh").add_pipe("kx_segmenter", config={"quantile": 1.5})
