"""kx_spacy.text: lone surrogates and bad bytes are rejected (or replaced) with file and line."""
import pytest

from kx_spacy.errors import KxError
from kx_spacy.text import clean_lines, clean_text, decode_utf8, find_lone_surrogate, read_text_file, InvalidTextError

BAD = b"\xe5\x85\xb1\xe5\x90\x8c\n\xe6\x96\xb0\xed\xbf\xbf\xe4\xb8\x96\n"  # 共同 / 新<encoded U+DFFF>世


def test_clean_text_rejects_or_replaces_lone_surrogates():
    assert clean_text("plain 中文") == "plain 中文"
    assert find_lone_surrogate("ab\udfffc") == 2 and find_lone_surrogate("ab") is None
    with pytest.raises(InvalidTextError, match=r"in\.txt:7: column 3: a lone surrogate U\+DFFF"):
        clean_text("ab\udfffc", where="in.txt", line=7)
    assert clean_text("ab\udfffc\ud800", on_invalid="replace") == "ab\ufffdc\ufffd"
    with pytest.raises(InvalidTextError, match=r"lines:2"):
        list(clean_lines(["ok", "x\udfff"], where="lines"))
    with pytest.raises(KxError, match="on_invalid"):
        clean_text("a", on_invalid="drop")


def test_bad_bytes_name_the_file_line_and_column(tmp_path):
    path = tmp_path / "bad.utf8"
    path.write_bytes(BAD)
    with pytest.raises(InvalidTextError, match=r"bad\.utf8: line 2, column 2: an encoded surrogate"):
        read_text_file(path)
    assert read_text_file(path, on_invalid="replace").startswith("共同\n新\ufffd")
    with pytest.raises(InvalidTextError, match=r"line 1, column 1: invalid UTF-8"):
        decode_utf8(b"\xff")
    assert decode_utf8("\ufeffok".encode("utf-8")) == "ok"


def test_every_text_reading_command_names_the_line(tmp_path):
    """Issue 16 item 2: readers, self-train-segmenter, evaluate-segmenter and the pretraining corpus."""
    from kx_spacy.cli.evaluate_perturbed import evaluate_segmenter
    from kx_spacy.pretraining.corpus import Corpus
    from kx_spacy.pretraining.errors import InvalidUTF8Error
    from kx_spacy.readers import read_conllu, read_sighan
    from kx_spacy.segmentation.workflow import run_self_training

    bad = tmp_path / "bad.utf8"
    bad.write_bytes(BAD)
    with pytest.raises(InvalidTextError, match=r"bad\.utf8: line 2"):
        read_sighan(bad, segmented=False)
    with pytest.raises(InvalidTextError, match=r"bad\.utf8: line 2"):
        read_conllu(bad)
    good = tmp_path / "good.utf8"
    good.write_text("共同创造美好的新世纪\n", encoding="utf-8")
    with pytest.raises(InvalidTextError, match=r"bad\.utf8: line 2"):
        run_self_training(bad, teacher="pmi", teach_limit=0)
    with pytest.raises(InvalidTextError, match=r"bad\.utf8: line 2"):
        run_self_training(good, teacher="pmi", teach_limit=0, extra=[bad])
    with pytest.raises(InvalidUTF8Error, match=r"bad\.utf8:2: column 2: an encoded surrogate"):
        list(Corpus([str(bad)], on_invalid="fail"))
    import spacy

    nlp = spacy.blank("zh")
    with pytest.raises(InvalidTextError, match=r"input lines:2: column 2"):
        evaluate_segmenter(nlp, ["共同", "新\udfff世"], [["共同"], ["新", "世"]], progress=False)
