"""The attribution workflow helpers and CLI on tiny models and a fake data folder."""
import json

import pytest

from kx_spacy.errors import KxError


@pytest.fixture
def fake_data(tmp_path):
    root = tmp_path / "data"
    (root / "sst2").mkdir(parents=True)
    (root / "sst2" / "train.tsv").write_text("label\tsentence\r\n1\ta good movie\r\n0\ta bad -lrb- awful -rrb- film\r\n", encoding="utf8")
    (root / "sst2" / "dev.tsv").write_text("label\tcontent\n1\ti liked it\n0\tboring\n1\tgreat music\n", encoding="utf8")
    return root


def test_read_sentiment(fake_data):
    from kx_spacy.attribution.workflow import read_sentiment

    rows = read_sentiment("sst2", "train", str(fake_data))
    assert rows == [("a good movie", 1), ("a bad ( awful ) film", 0)]
    assert len(read_sentiment("sst2", "dev", str(fake_data), limit=2)) == 2
    with pytest.raises(KxError):
        read_sentiment("sst2", "test", str(fake_data))  # file missing
    with pytest.raises(KxError):
        read_sentiment("imdb", "train", str(fake_data))


def test_evaluate_and_explain_cli(tiny_mlm_dir, fake_data, tmp_path):
    from typer.testing import CliRunner

    from kx_spacy.attribution.textcat import add_textcat
    from kx_spacy.attribution.workflow import cats, evaluate, read_sentiment, write_docbin
    from kx_spacy.cli import app
    from kx_spacy.testing import make_pipeline

    rows = read_sentiment("sst2", "dev", str(fake_data))
    assert write_docbin(rows, "en", tmp_path / "dev.spacy") == 3
    nlp = make_pipeline("en", tiny_mlm_dir)
    add_textcat(nlp, [(t, cats(y)) for t, y in rows], random_seed=0)
    scores = evaluate(nlp, rows)
    assert scores["n"] == 3 and 0.0 <= scores["accuracy"] <= 1.0
    assert 0.0 <= scores["f1_macro"] <= 1.0
    nlp.to_disk(tmp_path / "model")
    runner = CliRunner()
    out = tmp_path / "metrics" / "m.json"
    res = runner.invoke(app, ["evaluate-textcat", str(tmp_path / "model"), "sst2", "--split", "dev", "--data-dir", str(fake_data), "--output", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["accuracy"] == pytest.approx(scores["accuracy"])
    page = tmp_path / "page.html"
    res = runner.invoke(app, ["explain", str(tmp_path / "model"), str(page), "--text", "<b>great</b> music"])
    assert res.exit_code == 0, res.output
    html = page.read_text(encoding="utf8")
    assert "<b>" not in html and "&lt;" in html and "&gt;" in html
