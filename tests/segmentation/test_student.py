"""The self-trained student: it segments unseen text, round-trips, and refuses bad folders."""
import json

import numpy
import pytest

from kx_spacy.segmentation.self_training import self_train, train_student
from kx_spacy.segmentation.student import STUDENT_VERSION, SegmenterStudent, StudentFormatError

from .test_self_training import WORDS, _corpus, _joins


def _noisy_impacts(lines, golds, seed=2):
    rng = numpy.random.default_rng(seed)
    out = []
    for ws in golds:
        truth = numpy.array(_joins(ws), dtype=float)
        noisy = numpy.where(rng.random(truth.size) < 0.2, 1 - truth, truth)
        out.append(noisy * 5 + rng.random(truth.size))
    return out


@pytest.fixture(scope="module")
def trained():
    teach, gold_t = _corpus(120, 0)
    impacts = _noisy_impacts(teach, gold_t)
    student, stats = train_student(teach, impacts, teach, high=0.6, low=0.4, epochs=3, rounds=1)
    return teach, impacts, student


def test_the_student_segments_as_self_train_does(trained):
    teach, impacts, student = trained
    words, _ = self_train(teach, impacts, teach, high=0.6, low=0.4, epochs=3, rounds=1)
    assert [student.segment(t) for t in teach] == words


def test_unseen_lines_and_characters_get_defined_results(trained):
    _, _, student = trained
    unseen, gold = _corpus(30, 9)  # new orders of the words, not lines it was taught on
    pred = [student.segment(t) for t in unseen]
    acc = numpy.mean([numpy.mean(numpy.array(_joins(p)) == numpy.array(_joins(g))) for p, g in zip(pred, gold)])
    assert acc > 0.8
    for text in ["魑魅魍魉", "我们喜欢Python3.5和北京！", "", "好", "我们。。喜欢", "ﾃｽﾄ테스트我们"]:
        words = student.segment(text)
        assert "".join(words) == text and all(words)
    assert student.segment("我们喜欢Python3.5和北京！")[-1] == "！"
    assert "Python3.5" in student.segment("我们喜欢Python3.5和北京！")
    long = "".join(WORDS) * 500  # 11k characters in one line: linear, no window
    assert "".join(student.segment(long)) == long


def test_round_trips_and_bad_folders(trained, tmp_path):
    teach, _, student = trained
    again = SegmenterStudent.from_bytes(student.to_bytes())
    assert numpy.array_equal(again.weights, student.weights) and again.threshold == student.threshold
    folder = tmp_path / "student"
    student.to_disk(folder)
    loaded = SegmenterStudent.from_disk(folder)
    assert [loaded.segment(t) for t in teach[:20]] == [student.segment(t) for t in teach[:20]]
    assert loaded.meta["stats"]["pseudo_labelled"] > 0
    with pytest.raises(StudentFormatError, match="No student folder"):
        SegmenterStudent.from_disk(tmp_path / "nowhere")
    meta = json.loads((folder / "meta.json").read_text(encoding="utf8"))
    (folder / "meta.json").write_text(json.dumps({**meta, "version": STUDENT_VERSION + 1}), encoding="utf8")
    with pytest.raises(StudentFormatError, match="version"):
        SegmenterStudent.from_disk(folder)
    (folder / "meta.json").write_text(json.dumps({**meta, "format": "other"}), encoding="utf8")
    with pytest.raises(StudentFormatError, match="not a kx_spacy segmenter student"):
        SegmenterStudent.from_disk(folder)
    (folder / "student.msgpack").unlink()
    with pytest.raises(StudentFormatError, match="lacks student.msgpack"):
        SegmenterStudent.from_disk(folder)
    with pytest.raises(StudentFormatError):
        SegmenterStudent.from_bytes(b"\x00garbage")


# ------------------------------------------------------------------ the pipe
@pytest.fixture(scope="module")
def student_dir(trained, tmp_path_factory):
    folder = tmp_path_factory.mktemp("student") / "zh_student"
    trained[2].to_disk(folder)
    return folder


def _nlp(student_dir=None):
    import spacy

    nlp = spacy.blank("zh")
    nlp.add_pipe("kx_self_trained_segmenter", config={"student_path": None if student_dir is None else str(student_dir)})
    return nlp


def test_pipe_battery(trained, student_dir, tmp_path):
    import spacy

    from kx_spacy.segmentation.component import StudentNotLoadedError

    teach, _, student = trained
    nlp = _nlp()
    with pytest.raises(StudentNotLoadedError):
        nlp("我们喜欢")
    with pytest.raises(StudentNotLoadedError):
        nlp.initialize()
    nlp = _nlp(student_dir)
    nlp.initialize()
    docs = list(nlp.pipe(teach[:40], batch_size=7))
    assert [[t.text for t in d] for d in docs] == [student.segment(t) for t in teach[:40]]
    assert [t.text for t in nlp(teach[3])] == [t.text for t in docs[3]]  # batch independent
    assert len(nlp("")) == 0 and [t.text for t in nlp("好")] == ["好"]
    spaced = nlp("我们喜欢 北京天气")  # whitespace always separates
    assert "".join(t.text_with_ws for t in spaced) == "我们喜欢 北京天气"
    assert not any(" " in t.text for t in spaced)
    assert [[t.text for t in d] for d in nlp.pipe(teach[:8], n_process=2)] == [[t.text for t in d] for d in docs[:8]]
    nlp.to_disk(tmp_path / "pipeline")
    loaded = spacy.load(tmp_path / "pipeline")
    assert [[t.text for t in d] for d in loaded.pipe(teach[:10])] == [[t.text for t in d] for d in docs[:10]]
    other = _nlp()
    other.from_bytes(nlp.to_bytes())
    assert [t.text for t in other(teach[5])] == [t.text for t in docs[5]]


def test_pipe_initialize_from_the_config_section(student_dir):
    nlp = _nlp()
    nlp.config["initialize"]["components"]["kx_self_trained_segmenter"] = {"student_path": str(student_dir)}
    nlp.initialize()
    assert len(nlp("我们喜欢北京天气")) < 8


def test_save_model_from_the_command_and_evaluate_through_the_pipe(tmp_path):
    """The component's F on the command's lines equals the command's F."""
    from typer.testing import CliRunner

    from kx_spacy.cli import app

    lines, golds = _corpus(60, 5)
    raw, gold = tmp_path / "raw.utf8", tmp_path / "gold.utf8"
    raw.write_text("\n".join(lines) + "\n", encoding="utf8")
    gold.write_text("\n".join("  ".join(g) for g in golds) + "\n", encoding="utf8")
    runner = CliRunner()
    res = runner.invoke(app, ["self-train-segmenter", str(raw), "--gold", str(gold), "--teacher", "nvbe", "--teach-limit", "0",
                              "--high", "0.8", "--low", "0.3", "--save-model", str(tmp_path / "st"),
                              "--output", str(tmp_path / "st.json")])
    assert res.exit_code == 0, res.output
    command = json.loads((tmp_path / "st.json").read_text(encoding="utf8"))
    res = runner.invoke(app, ["evaluate-segmenter", str(raw), str(gold), "--student", str(tmp_path / "st"),
                              "--output", str(tmp_path / "ev.json")])
    assert res.exit_code == 0, res.output
    through_pipe = json.loads((tmp_path / "ev.json").read_text(encoding="utf8"))
    assert through_pipe["f"] == command["f"] and through_pipe["segmenter"] == "kx_self_trained_segmenter"
    assert through_pipe["chars_per_s"] > 0
    res = runner.invoke(app, ["evaluate-segmenter", str(raw), str(gold), "--student", str(tmp_path / "missing")])
    assert res.exit_code == 1 and "StudentFormatError" in res.output
