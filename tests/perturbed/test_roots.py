"""Lexical, language-aware root predictors (kx_spacy.perturbed.roots) on tiny inputs."""
import numpy
import pytest
from spacy.util import registry

from kx_spacy.errors import KxError
from kx_spacy.perturbed.impact import predict_root
from kx_spacy.perturbed.roots import (
    LEXICONS,
    ROOT_WEIGHTS,
    LanguageRoot,
    LexicalRoot,
    bind_root_strategy,
    feature_names,
    fit_root_weights,
    lexical_features,
    root_accuracy,
)


def zeros(n):
    return numpy.zeros((n + 1, n + 1))


def test_features_of_a_tiny_sentence():
    words = ["I", "watched", "the", "movie", "."]
    f = lexical_features(words, "en")
    assert sorted(f) == sorted(feature_names("en"))
    assert all(v.shape == (5,) for v in f.values())
    assert f["prev_subj"].tolist() == [0, 1, 0, 0, 0]  # after "I"
    assert f["next_det"].tolist() == [0, 1, 0, 0, 0]  # before "the"
    assert f["self_det"].tolist() == [0, 0, 1, 0, 0]
    assert f["first_content"].tolist() == [1, 0, 0, 0, 0]
    assert f["last_content"].tolist() == [0, 0, 0, 1, 0]  # "." is punctuation
    assert f["first_open"].tolist() == [0, 1, 0, 0, 0]  # first word in no closed class
    assert f["next_end"].tolist() == [0, 0, 0, 1, 1]
    assert f["suf_ed"].tolist() == [0, 1, 0, 0, 0]
    assert f["rel_pos"][0] == 0.0 and f["rel_pos"][-1] == 1.0
    assert f["title"].tolist() == [0, 0, 0, 0, 0]  # "I" is one letter: not title case
    assert lexical_features(["Hello", "WORLD", "x1", "a@b.com"], "en")["odd"].tolist() == [0, 0, 0, 1]
    # Chinese: the classes of its own lexicon
    zf = lexical_features(["他", "看", "了", "书"], "zh")
    assert zf["next_asp"].tolist() == [0, 1, 0, 0] and zf["self_pron"].tolist() == [1, 0, 0, 0]
    assert lexical_features([], "en")["log_pos"].shape == (0,)


def test_lexical_root_on_tiny_sentences():
    en = LexicalRoot("en")
    assert en(zeros(5), ["I", "watched", "the", "movie", "."]) == 2
    assert en(zeros(4), ["She", "likes", "green", "tea"]) == 2
    assert en(zeros(3), ["The", "food", "!"]) == 2  # a noun phrase: its last word, never "!"
    assert en(zeros(0), []) == 0 and en(zeros(1), ["Hi"]) == 1
    assert en(zeros(2), [".", "!"]) in (1, 2)  # only punctuation: still a defined word
    # through predict_root, as kx_parser calls it
    assert predict_root(zeros(4), en, words=["we", "love", "this", "place"]) == 2
    # a heavy weight decides: only the last word
    last = LexicalRoot("en", {"last_content": 5.0})
    assert last(zeros(4), ["we", "love", "this", "place"]) == 4


def test_lexical_root_bad_input():
    with pytest.raises(KxError, match="No root lexicon"):
        LexicalRoot("xx")
    with pytest.raises(KxError, match="no fitted weights"):
        LEXICONS["xx"] = LEXICONS["en"]
        try:
            LexicalRoot("xx")
        finally:
            del LEXICONS["xx"]
    with pytest.raises(KxError, match="unknown features"):
        LexicalRoot("en", {"next_asp": 1.0})  # a Chinese class
    with pytest.raises(KxError, match="finite"):
        LexicalRoot("en", {"log_pos": float("nan")})
    with pytest.raises(KxError, match="every weight is 0"):
        LexicalRoot("en", {"log_pos": 0.0})
    with pytest.raises(KxError, match="numbers"):
        LexicalRoot("en", {"log_pos": "left"})
    en = LexicalRoot("en")
    with pytest.raises(KxError, match="reads the words"):
        en(zeros(3), None)
    with pytest.raises(KxError, match="2 words for a matrix of 3"):
        en(zeros(3), ["a", "b"])
    # impact features may be weighed too; the ones needing extra inputs say so
    mixed = LexicalRoot("en", {"log_pos": -1.0, "masking_effect": 1.0})
    assert mixed.needs == ("effects",)
    with pytest.raises(KxError, match="effects"):
        mixed(zeros(3), ["a", "b", "c"])
    assert mixed(zeros(3), ["a", "b", "c"], effects=[0.0, 0.0, 9.0]) == 3
    M = zeros(3)
    M[0, 2] = 1.0
    assert LexicalRoot("en", {"root_row": 1.0})(M, ["a", "b", "c"]) == 2


def test_language_root_binds_per_language():
    lr = LanguageRoot()
    assert isinstance(lr.for_language("en"), LexicalRoot) and lr.for_language("en").lang == "en"
    assert lr.for_language("zh").lang == "zh"
    assert lr.for_language("fr") == "centrality"
    assert LanguageRoot("root_row").for_language("fr") == "root_row"
    assert bind_root_strategy("centrality", "en") == "centrality"  # plain strategies pass through
    # unbound, it acts as its fallback
    M = numpy.zeros((4, 4))
    M[1:, 1:] = [[0, 2, 0.5], [2, 0, 2], [0.5, 2, 0]]  # "b" is the hub
    assert lr(M, ["a", "b", "c"]) == predict_root(M, "centrality", words=["a", "b", "c"]) == 2
    with pytest.raises(KxError, match="fallback"):
        LanguageRoot("scored")
    with pytest.raises(KxError, match="fallback"):
        LanguageRoot("nope")


def test_registered_predictors_resolve_from_config():
    got = registry.resolve({"r": {"@misc": "kx_spacy.LexicalRoot.v1", "lang": "zh"}})["r"]
    assert isinstance(got, LexicalRoot) and got.weights == ROOT_WEIGHTS["zh"]
    own = registry.resolve({"r": {"@misc": "kx_spacy.LexicalRoot.v1", "weights": {"log_pos": -1.0}}})["r"]
    assert own.weights == {"log_pos": -1.0} and own(zeros(3), ["x", "y", "z"]) == 1
    lang = registry.resolve({"r": {"@misc": "kx_spacy.LanguageRoot.v1"}})["r"]
    assert isinstance(lang, LanguageRoot) and lang.fallback == "centrality"


def test_fit_recovers_a_rule_and_scores_it():
    # toy corpus: the root is always the word right after "the" (a rule the features can say)
    rng = numpy.random.default_rng(0)
    vocab = ["cat", "dog", "tree", "house", "bird"]
    sents, roots = [], []
    for _ in range(40):
        n = int(rng.integers(3, 7))
        words = [str(rng.choice(vocab)) for _ in range(n)]
        k = int(rng.integers(0, n - 1))
        words[k] = "the"
        sents.append(words)
        roots.append(k + 2)
    w = fit_root_weights(sents, roots, "en", features=["prev_det", "log_pos", "rel_pos"])
    assert set(w) == {"prev_det", "log_pos", "rel_pos"} and w["prev_det"] > 1.0
    assert root_accuracy(LexicalRoot("en", w), sents, roots) == 1.0
    assert root_accuracy(LexicalRoot("en", {"log_pos": -1.0}), sents, roots) < 0.5
    with pytest.raises(KxError, match="unknown features"):
        fit_root_weights(sents, roots, "en", features=["nope"])
    with pytest.raises(KxError, match="sentences but"):
        fit_root_weights(sents, roots[:-1], "en")
    with pytest.raises(KxError, match="no sentence"):
        fit_root_weights([["a"]], [1], "en")
    with pytest.raises(KxError, match="no sentences"):
        root_accuracy(LexicalRoot("en"), [], [])


def _conllu(sentences):
    out = []
    for words, root in sentences:
        for i, w in enumerate(words, start=1):
            head = 0 if i == root else root
            out.append(f"{i}\t{w}\t{w}\tX\t_\t_\t{head}\t{'root' if head == 0 else 'dep'}\t_\t_")
        out.append("")
    return "\n".join(out) + "\n"


def test_fit_root_predictor_command(tmp_path):
    import json

    from typer.testing import CliRunner

    from kx_spacy.cli import app

    # the root is the word after "the"; a second file to report on
    sents = [(["a", "the", "cat", "b"], 3), (["the", "dog", "c"], 2), (["x", "y", "the", "bird"], 4),
             (["the", "tree", "d", "e"], 2), (["f", "the", "house"], 3), (["g", "h", "the", "sun"], 4)]
    dev, test = tmp_path / "dev.conllu", tmp_path / "test.conllu"
    dev.write_text(_conllu(sents), encoding="utf8")
    test.write_text(_conllu(sents[:2]), encoding="utf8")
    out = tmp_path / "w.json"
    res = CliRunner().invoke(app, ["fit-root-predictor", str(dev), "--l2", "0.001,0.01", "--folds", "3",
                                   "--report", str(test), "--output", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text(encoding="utf8"))
    assert data["l2"] in (0.001, 0.01) and set(data["cv"]) == {"0.001", "0.01"}
    assert data["accuracy"][str(dev)] == 1.0 and data["accuracy"][str(test)] == 1.0
    assert data["weights"]["prev_det"] > 0 and "(chosen)" in res.output
    bad = CliRunner().invoke(app, ["fit-root-predictor", str(dev), "--lang", "xx", "--folds", "3", "--output", str(out)])
    assert bad.exit_code == 1 and "No root lexicon" in bad.output
    bad = CliRunner().invoke(app, ["fit-root-predictor", str(dev), "--folds", "9", "--output", str(out)])
    assert bad.exit_code == 1 and "folds" in bad.output
