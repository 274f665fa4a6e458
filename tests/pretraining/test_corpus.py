import pytest

from kx_spacy.errors import KxError
from kx_spacy.pretraining.corpus import Corpus, CorpusStats, Source, is_heldout
from kx_spacy.pretraining.errors import CorpusError, InvalidUTF8Error, PretrainConfigError


def test_lines_reader_streams_and_counts(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("\ufeff第一行\n\n  第二行  \r\n三\n", encoding="utf-8")
    stats = CorpusStats()
    texts = list(Corpus([str(p)]).iter_texts(stats))
    assert texts == ["第一行", "第二行", "三"]
    f = stats.files[str(p)]
    assert (f.lines, f.texts, f.chars) == (4, 3, 7)
    assert stats.to_dict()["total_chars"] == 7


def test_tsv_csv_conllu_readers(tmp_path):
    tsv = tmp_path / "r.tsv"
    tsv.write_text("label\ttext_a\n1\t好\"评\n0\t差评\n", encoding="utf-8")
    pairs = tmp_path / "c.tsv"
    pairs.write_text("上联一\t下联一\n上联二\t下联二\n", encoding="utf-8")
    csv_ = tmp_path / "r.csv"
    csv_.write_text('label,review\n1,"有逗号,的评论"\n0,"跨\n行"\n', encoding="utf-8")
    conllu = tmp_path / "t.conllu"
    conllu.write_text("# sent_id = 1\n# text = 我爱你\n1\t我\t_\n\n# text = 好\n1\t好\n", encoding="utf-8")
    sources = [
        {"path": str(tsv), "reader": "tsv", "columns": ["text_a"]},
        {"path": str(pairs), "reader": "tsv", "header": False, "columns": [0, 1]},
        {"path": str(csv_), "reader": "csv", "columns": ["review"]},
        {"path": str(conllu), "reader": "conllu_text"},
    ]
    assert list(Corpus(sources)) == ['好"评', "差评", "上联一", "下联一", "上联二", "下联二",
                                     "有逗号,的评论", "跨\n行", "我爱你", "好"]


def test_glob_and_reader_prefix(tmp_path):
    for i in range(3):
        (tmp_path / f"part{i}.txt").write_text(f"文本{i}\n", encoding="utf-8")
    assert list(Corpus([str(tmp_path / "part*.txt")])) == ["文本0", "文本1", "文本2"]
    src = Source.from_any("lines:" + str(tmp_path / "part0.txt"))
    assert src.reader == "lines"
    with pytest.raises(CorpusError, match="matches no file"):
        Corpus([str(tmp_path / "nothing*.txt")]).check()


def test_missing_empty_and_bad_config(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        list(Corpus([str(tmp_path / "missing.txt")]))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(CorpusError, match="empty"):
        Corpus([str(empty)]).check()
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n")
    with pytest.raises(CorpusError, match="gave no text"):
        list(Corpus([str(blank)]))
    with pytest.raises(PretrainConfigError, match="Unknown reader"):
        list(Corpus([{"path": str(blank), "reader": "xml"}]))
    with pytest.raises(PretrainConfigError, match="columns"):
        list(Corpus([{"path": str(blank), "reader": "tsv"}]))
    with pytest.raises(PretrainConfigError):
        Corpus([str(blank)], on_invalid="ignore")
    with pytest.raises(CorpusError):
        Corpus([])


def test_invalid_utf8_skip_and_fail(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_bytes("好的\n".encode() + b"\xff\xfe broken\n" + "再见\n".encode())
    stats = CorpusStats()
    assert list(Corpus([str(p)], on_invalid="skip").iter_texts(stats)) == ["好的", "再见"]
    assert stats.files[str(p)].invalid_lines == [2]
    assert stats.to_dict()["files"][0]["invalid_utf8_lines"] == 1
    with pytest.raises(InvalidUTF8Error, match=r"bad\.txt:2") as info:
        list(Corpus([str(p)], on_invalid="fail"))
    assert isinstance(info.value, KxError)


def test_heldout_split_is_deterministic_and_sized():
    texts = [f"句子{i}" for i in range(5000)]
    held = [t for t in texts if is_heldout(t, 50)]
    assert held == [t for t in texts if is_heldout(t, 50)]
    assert 50 < len(held) < 150
    assert not any(is_heldout(t, 0) for t in texts)
