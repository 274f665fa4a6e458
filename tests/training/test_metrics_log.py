from kx_spacy.training import MetricsLog, read_metrics


def test_write_read_filter_and_resume_truncation(tmp_path):
    log = MetricsLog(tmp_path / "m.jsonl").open(append=False)
    for step in (1, 2, 3):
        log.write("step", step=step, loss=float("nan") if step == 2 else 1.0 / step)
    log.write("eval", step=3, heldout_loss=0.5)
    log.close()
    with (tmp_path / "m.jsonl").open("a") as f:
        f.write('{"kind": "step", "st')  # a torn last line of a killed run
    assert [r["step"] for r in read_metrics(tmp_path / "m.jsonl", "step")] == [1, 2, 3]
    assert read_metrics(tmp_path / "m.jsonl", "step")[1]["loss"] == "nan"
    assert read_metrics(tmp_path / "m.jsonl", "eval") == [{"kind": "eval", "step": 3, "heldout_loss": 0.5}]
    log = MetricsLog(tmp_path / "m.jsonl").open(append=True, keep_until_step=2)
    log.write("step", step=3, loss=0.1)
    log.close()
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "m.jsonl")] == [(1, 1.0), (2, "nan"), (3, 0.1)]
    off = MetricsLog(tmp_path / "off.jsonl", enabled=False).open(append=False)
    off.write("step", step=1)
    off.close()
    assert not (tmp_path / "off.jsonl").exists()
