"""kx_spacy annotate: resumable, verified DocBin shards from the local and Ray engines."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from spacy.tokens import DocBin

from kx_spacy.annotation.engines import annotate
from kx_spacy.errors import KxError
from kx_spacy.annotation.shards import AnnotateError, finished_shards, index_corpus

WORDS = "the cat sat on a mat while dogs ran far away".split()


def _texts(n):
    return [" ".join(WORDS[(i + k) % len(WORDS)] for k in range(3 + i % 4)) + " ." for i in range(n)]


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory, tiny_mlm_dir):
    import spacy

    from kx_spacy.testing import transformer_config

    nlp = spacy.blank("en")
    nlp.add_pipe("transformer", config=transformer_config(str(tiny_mlm_dir)))
    nlp.add_pipe("kx_parser")
    nlp.initialize()
    out = tmp_path_factory.mktemp("pipeline") / "nlp"
    nlp.to_disk(out)
    return out


def _read(out_dir):
    import spacy

    vocab = spacy.blank("en").vocab
    docs = []
    for (start, _), path in sorted(finished_shards(out_dir).items()):
        docs += list(DocBin().from_bytes(path.read_bytes()).get_docs(vocab))
    return docs


def _annotations(docs):
    return [(d.text, [t.head.i for t in d], [t.dep_ for t in d], d.user_data.get("kx_record")) for d in docs]


def test_local_engine_writes_every_record_once_and_resumes(pipeline_dir, tmp_path):
    corpus = tmp_path / "corpus.txt"
    texts = _texts(11) + [""]  # an empty line is an empty doc: record numbers stay line numbers
    corpus.write_text("\n".join(texts) + "\n", encoding="utf8")
    out = tmp_path / "out"
    report = annotate(str(pipeline_dir), corpus, out, shard_size=5, progress=False)
    assert (report.records, report.shards, report.docs_written) == (12, 3, 12)
    assert sorted(p.name for p in out.glob("*.spacy")) == [
        "000000000-000000005.spacy", "000000005-000000010.spacy", "000000010-000000012.spacy"]
    docs = _read(out)
    assert [d.text for d in docs] == texts
    assert all(t.dep_ in ("ROOT", "dep") for d in docs for t in d)
    # a rerun does nothing; a lost shard is remade alone, identical
    again = annotate(str(pipeline_dir), corpus, out, shard_size=5, progress=False)
    assert (again.shards_skipped, again.docs_written) == (3, 0)
    (out / "000000005-000000010.spacy").unlink()
    (out / ".000000000-000000005.spacy.123.tmp").write_bytes(b"half-written")
    redo = annotate(str(pipeline_dir), corpus, out, shard_size=5, progress=False)
    assert (redo.shards_skipped, redo.docs_written) == (2, 5)
    assert _annotations(_read(out)) == _annotations(docs)
    assert not list(out.glob(".*.tmp"))


def test_output_of_another_run_is_refused(pipeline_dir, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(_texts(4)) + "\n", encoding="utf8")
    annotate(str(pipeline_dir), corpus, tmp_path / "out", shard_size=2, progress=False)
    with pytest.raises(AnnotateError, match="shard_size"):
        annotate(str(pipeline_dir), corpus, tmp_path / "out", shard_size=3, progress=False)


def test_jsonl_keeps_the_other_fields(pipeline_dir, tmp_path):
    corpus = tmp_path / "c.jsonl"
    rows = [{"id": i, "text": t} for i, t in enumerate(_texts(3))]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf8")
    annotate(str(pipeline_dir), corpus, tmp_path / "out", shard_size=2, progress=False)
    docs = _read(tmp_path / "out")
    assert [d.user_data["kx_record"]["id"] for d in docs] == [0, 1, 2]
    assert [d.text for d in docs] == [r["text"] for r in rows]


@pytest.mark.parametrize("line, message", [
    ('{"text": "bad \\udfff here"}', "c.jsonl:2: column 5: a lone surrogate"),
    ('{"txt": "no text field"}', "c.jsonl:2: expected an object"),
    ("not json", "c.jsonl:2: not a JSON object"),
])
def test_bad_records_name_file_and_line(pipeline_dir, tmp_path, line, message):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "fine ."}\n' + line + "\n", encoding="utf8")
    with pytest.raises(KxError, match=message):
        annotate(str(pipeline_dir), corpus, tmp_path / "out", shard_size=1, progress=False)
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_lone_surrogates_can_be_replaced(pipeline_dir, tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "bad \\udfff here"}\n', encoding="utf8")
    annotate(str(pipeline_dir), corpus, tmp_path / "out", on_invalid="replace", progress=False)
    assert _read(tmp_path / "out")[0].text == "bad \ufffd here"


def test_invalid_settings(pipeline_dir, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("a b .\n", encoding="utf8")
    with pytest.raises(AnnotateError, match="engine"):
        annotate(str(pipeline_dir), corpus, tmp_path / "o", engine="spark")
    with pytest.raises(AnnotateError, match="shard_size"):
        index_corpus(corpus, 0)
    with pytest.raises(AnnotateError, match="does not exist"):
        annotate(str(pipeline_dir), tmp_path / "missing.txt", tmp_path / "o")


def _actor_pids():
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().decode("utf8", "replace")
            except OSError:
                continue
            if cmd.startswith("ray::") and "ShardAnnotator" in cmd:
                pids.append(int(proc.name))
    return pids


@pytest.mark.slow
def test_ray_engine_survives_a_killed_actor_and_matches_local(pipeline_dir, tmp_path):
    pytest.importorskip("ray")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(_texts(60)) + "\n", encoding="utf8")
    annotate(str(pipeline_dir), corpus, tmp_path / "local", shard_size=2, progress=False)
    cmd = [sys.executable, "-m", "kx_spacy", "annotate", str(pipeline_dir), str(corpus), str(tmp_path / "ray"),
           "--engine", "ray", "--actors", "2", "--num-cpus", "2", "--shard-size", "2"]
    env = {**os.environ, "RAY_DEDUP_LOGS": "0"}
    run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    killed, done_at_kill = None, None
    deadline = time.time() + 240
    while run.poll() is None and time.time() < deadline:
        if len(finished_shards(tmp_path / "ray")) >= 2 and killed is None:
            pids = _actor_pids()
            if pids:
                killed, done_at_kill = pids[0], len(finished_shards(tmp_path / "ray"))
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    out, _ = run.communicate(timeout=60)
    assert run.returncode == 0, out[-3000:]
    assert killed is not None, "the run ended before an actor could be killed: make the corpus longer"
    assert done_at_kill < 30 and "output verified" in out  # killed mid-run, and the run still completed
    assert _annotations(_read(tmp_path / "ray")) == _annotations(_read(tmp_path / "local"))
