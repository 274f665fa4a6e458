"""The evaluation commands' core functions, end to end on tiny files (no shared data)."""
import json
from types import SimpleNamespace

import numpy
import pytest
import spacy
from spacy.language import Language

from kx_spacy.cli.evaluate_perturbed import evaluate_parser, evaluate_segmenter, format_parser_table
from kx_spacy.errors import KxError
from kx_spacy.readers import read_conllu, read_sighan, read_word_list

CONLLU = """# sent_id = a
# text = the cat sat .
1	the	the	DET	DT	_	2	det	_	_
2	cat	cat	NOUN	NN	_	3	nsubj	_	_
3	sat	sit	VERB	VBD	_	0	root	_	SpaceAfter=No
4	.	.	PUNCT	.	_	3	punct	_	_

# sent_id = b
# text = dogs ran
1	dogs	dog	NOUN	NNS	_	2	nsubj	_	_
2	ran	run	VERB	VBD	_	0	root	_	_

# sent_id = c
# text = good
1	good	good	ADJ	JJ	_	0	root	_	_

# sent_id = d
# text = she gave the book to him on the mat today
1	she	she	PRON	PRP	_	2	nsubj	_	_
2	gave	give	VERB	VBD	_	0	root	_	_
3	the	the	DET	DT	_	4	det	_	_
4	book	book	NOUN	NN	_	2	obj	_	_
5	to	to	ADP	IN	_	6	case	_	_
6	him	he	PRON	PRP	_	2	obl	_	_
7	on	on	ADP	IN	_	9	case	_	_
8	the	the	DET	DT	_	9	det	_	_
9	mat	mat	NOUN	NN	_	2	obl	_	_
10	today	today	NOUN	NN	_	2	obl	_	_
"""


@pytest.fixture
def conllu_path(tmp_path):
    path = tmp_path / "tiny.conllu"
    path.write_text(CONLLU, encoding="utf8")
    return path


def oracle_engine(sentences):
    """A fake impact engine whose matrices encode the gold trees (impact of head on dependent)."""
    by_words = {tuple(s.words): s for s in sentences}

    def compute_impacts(backbone, sents, *, mode="kx", progress=None, **kwargs):
        out = []
        for words in sents:
            gold = by_words[tuple(words)]
            n = len(words)
            M = numpy.full((n + 1, n + 1), 0.1)
            numpy.fill_diagonal(M, 0.0)
            for d, h in enumerate(gold.heads, start=1):
                if h == 0:
                    M[0, d] = 5.0
                else:
                    M[d, h] = 5.0
            out.append(M)
        if progress:
            progress(len(sents))
        return out

    def impact_to_scores(M, mode, **kwargs):
        S = M.T.copy()
        S[0, 1:] = M[0, 1:]
        return S

    def predict_root(M, strategy, words=None, piece_ranks=None):
        return int(numpy.argmax(M[0, 1:])) + 1

    return SimpleNamespace(compute_impacts=compute_impacts, impact_to_scores=impact_to_scores,
                           predict_root=predict_root, root_strategies=("root_row",))


def _row(result, method, scores, root):
    return next(r for r in result["rows"] if (r["method"], r["scores"], r["root"]) == (method, scores, root))


def test_parser_with_oracle_engine(conllu_path, tmp_path):
    sents = read_conllu(conllu_path)
    result = evaluate_parser(sents, backbone=None, scorings=("kx", "kx-prior"), root_strategy="root_row",
                             progress=False, engine=oracle_engine(sents), save_impacts=tmp_path / "m.npz")
    saved = numpy.load(tmp_path / "m.npz")
    assert sorted(saved.files) == ["kx_0", "kx_1", "kx_2", "kx_3"] and saved["kx_3"].shape == (11, 11)
    assert result["n_sentences"] == 4 and result["n_tokens"] == 17
    for dec in ("eisner", "cle"):
        for root in ("gold", "pred", "free"):
            assert _row(result, dec, "kx", root)["uas"] == 1.0
            assert _row(result, dec, "kx", root)["uuas"] == 1.0
    assert result["root_accuracy"]["kx"]["root_row"] == 1.0
    # baselines, hand-counted. Right chain (no root): a: the->cat, cat->sat (2); b: dogs->ran,
    # ran->ROOT (2); c: good->ROOT (1); d: she->gave, the->book, to->him, the->mat (4) = 9/17
    assert _row(result, "right-chain", "-", "none")["uas"] == pytest.approx(9 / 17)
    # star on the gold root: a: cat, sat, '.' (3); b: 2; c: 1; d: she, gave, book, him,
    # mat, today (6) = 12/17
    assert _row(result, "star", "-", "gold")["uas"] == pytest.approx(12 / 17)
    assert _row(result, "star", "-", "pred")["uas"] == pytest.approx(12 / 17)
    assert _row(result, "right-chain", "-", "pred")["uas"] == _row(result, "right-chain", "-", "gold")["uas"]
    # the prior rows exist; with a near-perfect oracle the prior costs little on the gold root
    assert _row(result, "eisner", "kx-prior", "gold")["uas"] >= _row(result, "right-chain", "-", "gold")["uas"]
    # left chain (no root): the->ROOT wrong... 'cat'->the no, 'sat'->cat no, '.'->sat yes;
    # 'dogs' root no, 'ran'->dogs no; 'good' root yes; 'she' root no, 'gave'->she no, ...
    left = _row(result, "left-chain", "-", "none")
    assert 0.0 < left["uas"] < _row(result, "right-chain", "-", "none")["uas"]
    # without punctuation the '.' token is dropped
    assert _row(result, "eisner", "kx", "gold")["uas_nopunct"] == 1.0
    table = format_parser_table(result)
    assert "right-chain" in table and "star" in table and "eisner" in table
    json.dumps(result)


def test_parser_bad_input(conllu_path):
    sents = read_conllu(conllu_path)
    with pytest.raises(KxError):
        evaluate_parser([], None, progress=False, engine=oracle_engine(sents))
    with pytest.raises(KxError):
        evaluate_parser(sents, None, scorings=("nope",), progress=False, engine=oracle_engine(sents))


@pytest.mark.slow
def test_parser_real_engine_tiny_model(conllu_path, en_nlp):
    pytest.importorskip("kx_spacy.perturbed.impact")
    from kx_spacy.backbone import Backbone

    sents = read_conllu(conllu_path)
    result = evaluate_parser(sents, Backbone.from_nlp(en_nlp), progress=False)
    methods = {(r["method"], r["scores"], r["root"]) for r in result["rows"]}
    assert ("eisner", "official", "gold") in methods and ("cle", "kx", "pred") in methods
    for r in result["rows"]:
        assert 0.0 <= r["uas"] <= 1.0 and 0.0 <= r["uuas"] <= 1.0 and r["tokens"] == 17
        assert r["uuas"] >= r["uas"]
    # gold root forced: at least the root word is right in every sentence
    assert _row(result, "cle", "kx", "gold")["uas"] >= 4 / 17


def test_parser_rows_name_the_component_default_and_the_multiroot_decoder(conllu_path):
    """Issue 16: a row for what nlp.add_pipe("kx_parser") gives; eisner-ref relabelled."""
    sents = read_conllu(conllu_path)
    result = evaluate_parser(sents, None, scorings=("official",), progress=False, engine=oracle_engine(sents))
    row = _row(result, "kx_parser", "symmetric_prior", "pred")
    assert row["uas"] == 1.0  # the oracle's matrices decode to the gold trees
    methods = {r["method"] for r in result["rows"]}
    assert "eisner-multiroot" in methods and "eisner-ref" not in methods
    assert "kx_parser" in format_parser_table(result)
    off = evaluate_parser(sents, None, scorings=("kx",), progress=False, engine=oracle_engine(sents),
                          component_row=False)
    assert "kx_parser" not in {r["method"] for r in off["rows"]}


@pytest.mark.slow
def test_parser_component_row_equals_the_component(conllu_path, tiny_mlm_dir):
    from spacy.tokens import Doc

    from kx_spacy.backbone import Backbone
    from kx_spacy.scoring import attachment_scores
    from kx_spacy.testing import make_pipeline

    nlp = make_pipeline("en", tiny_mlm_dir)
    nlp.add_pipe("kx_parser")
    sents = read_conllu(conllu_path)
    result = evaluate_parser(sents, Backbone.from_nlp(nlp), scorings=("official",), progress=False)
    trees = []
    for s in sents:
        doc = Doc(nlp.vocab, words=s.words)
        for _, proc in nlp.pipeline:
            doc = proc(doc)
        trees.append([-1] + [0 if t.head.i == t.i else t.head.i + 1 for t in doc])
    assert _row(result, "kx_parser", "symmetric_prior", "pred")["uas"] == attachment_scores(trees, [s.heads for s in sents])["uas"]


def test_threads_default_is_the_same_in_every_perturbed_command():
    import typer.main

    from kx_spacy.cli import app

    group = typer.main.get_command(app)
    defaults = {}
    for name in ("evaluate-parser", "evaluate-segmenter", "bench-perturbed", "self-train-segmenter"):
        (param,) = [p for p in group.commands[name].params if p.name == "threads"]
        defaults[name] = param.default
    assert set(defaults.values()) == {1}, defaults


# ------------------------------------------------------------------ segmenter
@Language.component("fake_pair_segmenter")
def fake_pair_segmenter(doc):
    """Joins characters two by two (never across a space): a stand-in segmenter."""
    with doc.retokenize() as retok:
        i = 0
        while i + 1 < len(doc):
            if not doc[i].is_space and not doc[i + 1].is_space and not doc[i].is_punct and not doc[i + 1].is_punct:
                retok.merge(doc[i : i + 2])
                i += 2
            else:
                i += 1
    return doc


def test_segmenter_core(tmp_path):
    gold_file = tmp_path / "gold.utf8"
    gold_file.write_bytes("共同  创造  美好  的\r\n新  世纪  。\r\n\r\n".encode("utf8"))
    input_file = tmp_path / "input.utf8"
    input_file.write_bytes("共同创造美好的\r\n新世纪。\r\n\r\n".encode("utf8"))
    words_file = tmp_path / "words.utf8"
    words_file.write_text("共同\n创造\n的\n新\n", encoding="utf8")
    nlp = spacy.blank("zh")
    nlp.add_pipe("fake_pair_segmenter")
    result = evaluate_segmenter(nlp, read_sighan(input_file, segmented=False), read_sighan(gold_file),
                                read_word_list(words_file), batch_size=2, progress=False)
    # pred: 共同 创造 美好 的 | 新世 纪 。 -> correct 4 + 1 ('。'); pred 7; gold 7
    assert result["correct"] == 5 and result["pred_words"] == 7 and result["gold_words"] == 7
    assert result["f"] == pytest.approx(5 / 7)
    # OOV gold words: 美好, 世纪, 。 -> 美好 and 。 found
    assert result["oov_recall"] == pytest.approx(2 / 3)
    with pytest.raises(KxError):
        evaluate_segmenter(nlp, ["共同"], [], progress=False)


@pytest.mark.slow
def test_segmenter_real_component(tmp_path, tiny_mlm_dir):
    from spacy.util import registry

    try:
        registry.factories.get("zh.kx_segmenter")
    except Exception:
        try:
            registry.factories.get("kx_segmenter")
        except Exception:
            pytest.skip("kx_segmenter is not available yet")
    from kx_spacy.pipeline_builder import build_pipeline

    nlp = build_pipeline("zh", str(tiny_mlm_dir), ["kx_segmenter"])
    lines = ["共同创造美好的新世纪。", "", "2001年新年"]
    gold = [["共同", "创造", "美好", "的", "新", "世纪", "。"], [], ["2001年", "新年"]]
    result = evaluate_segmenter(nlp, lines, gold, {"共同"}, progress=False)
    assert 0.0 <= result["f"] <= 1.0 and result["gold_words"] == 9


@pytest.mark.slow
def test_cli_commands_write_metrics(tmp_path, conllu_path, tiny_mlm_dir):
    from typer.testing import CliRunner

    from kx_spacy.cli import app

    runner = CliRunner()
    out = tmp_path / "metrics" / "parser.json"
    res = runner.invoke(app, ["evaluate-parser", str(conllu_path), "--encoder", str(tiny_mlm_dir),
                              "--max-words", "3", "--scorings", "kx", "--output", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text(encoding="utf8"))
    assert data["n_sentences"] == 3 and data["max_words"] == 3  # sentence d has 10 words
    assert data["max_words_mode"] == "content"
    out_all = tmp_path / "metrics" / "parser_all.json"
    res_all = runner.invoke(app, ["evaluate-parser", str(conllu_path), "--encoder", str(tiny_mlm_dir), "--max-words",
                                  "3", "--max-words-mode", "all", "--scorings", "kx", "--output", str(out_all)])
    assert res_all.exit_code == 0, res_all.output
    assert json.loads(out_all.read_text(encoding="utf8"))["n_sentences"] == 2  # 'the cat sat .' has 4 words
    bad = runner.invoke(app, ["evaluate-parser", str(conllu_path), "--max-words-mode", "some"])
    assert bad.exit_code != 0 and "max-words-mode" in bad.output
    assert "right-chain" in res.output and "star" in res.output
    gold = tmp_path / "gold.utf8"
    gold.write_bytes("共同  创造  美好  的  。\r\n新  世纪\r\n".encode("utf8"))
    raw = tmp_path / "raw.utf8"
    raw.write_bytes("共同创造美好的。\r\n新世纪\r\n".encode("utf8"))
    seg_out = tmp_path / "metrics" / "seg.json"
    res = runner.invoke(app, ["evaluate-segmenter", str(raw), str(gold), "--encoder", str(tiny_mlm_dir),
                              "--limit", "1", "--config", '{"threshold": 0.0}', "--output", str(seg_out)])
    assert res.exit_code == 0, res.output
    seg = json.loads(seg_out.read_text(encoding="utf8"))
    assert seg["lines"] == 1 and seg["gold_words"] == 5
    # threshold 0 joins every scored pair; punctuation stays apart -> '共同创造美好的' + '。'
    assert seg["pred_words"] == 2 and seg["correct"] == 1


def test_load_impacts_checks_the_sentence_count(conllu_path, tmp_path):
    from kx_spacy.cli.evaluate_perturbed import _load_impacts

    sents = read_conllu(conllu_path)
    evaluate_parser(sents, backbone=None, scorings=("kx",), root_strategy="root_row", progress=False,
                    engine=oracle_engine(sents), save_impacts=tmp_path / "m.npz")
    loaded = _load_impacts(tmp_path / "m.npz", len(sents))
    assert list(loaded) == ["kx"] and len(loaded["kx"]) == 4
    engine = oracle_engine(sents)
    engine.compute_impacts = None  # never called: the loaded matrices are decoded
    engine.precomputed = loaded
    again = evaluate_parser(sents, backbone=None, scorings=("kx",), root_strategy="root_row", progress=False,
                            engine=engine)
    assert _row(again, "eisner", "kx", "gold")["uas"] == 1.0
    with pytest.raises(KxError, match="--max-words"):
        _load_impacts(tmp_path / "m.npz", 3)
    engine.precomputed = {"official": loaded["kx"]}
    with pytest.raises(KxError, match="no 'kx' matrices"):
        evaluate_parser(sents, backbone=None, scorings=("kx",), progress=False, engine=engine)
