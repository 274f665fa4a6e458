"""A CI-sized run of the whole `all-cpu` workflow: every declared output is written, nothing else is.

The project runs in a scratch copy (project.yml copied; configs/ and kx_spacy/ linked, since
commands name files there as deps), on a tiny synthetic data folder with the real layout
(tests/workflow_data.py) and tiny offline encoders, with every cpu_* size var turned down.
"""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import srsly
from weasel.util import load_project_config

from workflow_data import make_fake_data

ROOT = Path(__file__).resolve().parents[1]

TINY_VARS = {
    "cpu_mlm_minutes": 0.1, "cpu_mlm_steps": 3, "cpu_mlm_width": 16, "cpu_mlm_layers": 1, "cpu_mlm_min_count": 1,
    "cpu_segment_lines": 3, "cpu_parse_sentences": 4, "cpu_train_rows": 40, "cpu_dev_rows": 8, "cpu_generator_dev_rows": 4, "cpu_train_steps": 2, "cpu_generator_steps": 2, "cpu_eval_every": 2,
    "cpu_eval_rows": 4, "cpu_explain_n": 1, "cpu_generator_random": 2, "cpu_generator_max_l": 8,
    "cpu_nvae_minutes": 0.02, "cpu_nvae_k": 2, "cpu_nvae_images": 4,
    "cpu_lm_minutes": 0.05, "cpu_lm_steps": 2, "cpu_lm_context": 32, "cpu_attention_max_t": 128,
}
IGNORED = {"project.yml", "project.lock", "configs", "kx_spacy"}


def _written(project: Path):
    out = set()
    for path in project.rglob("*"):
        rel = path.relative_to(project)
        if rel.parts[0] in IGNORED or "__pycache__" in rel.parts or not path.is_file():
            continue
        out.add(rel.as_posix())
    return out


@pytest.mark.slow
def test_all_cpu_workflow_writes_exactly_its_declared_outputs(tmp_path, tiny_mlm_dir):
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "project.yml", project / "project.yml")
    for linked in ("configs", "kx_spacy"):
        os.symlink(ROOT / linked, project / linked)
    data = make_fake_data(tmp_path / "data")
    overrides = {**TINY_VARS, "data_dir": str(data), "python": sys.executable,
                 "english_encoder": str(tiny_mlm_dir), "chinese_encoder": str(tiny_mlm_dir)}
    args = [a for k, v in overrides.items() for a in (f"--vars.{k}", str(v))]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1", "KX_DATA": str(data)}
    repo_before = {p for p in (ROOT / "kx_spacy").rglob("*") if "__pycache__" not in p.parts}
    start = time.time()
    run = subprocess.run([sys.executable, "-m", "spacy", "project", "run", "all-cpu", str(project), *args],
                         cwd=project, env=env, capture_output=True, text=True, timeout=2400)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-6000:]
    print(f"all-cpu (CI size): {time.time() - start:.0f} s")

    config = load_project_config(project, overrides={f"vars.{k}": v for k, v in overrides.items()})
    commands = {c["name"]: c for c in config["commands"]}
    steps = config["workflows"]["all-cpu"]
    declared = set()
    for name in steps:
        for output in commands[name].get("outputs", []):
            path = project / output
            assert path.exists(), f"{name} declares {output} but did not write it"
            declared.add(Path(output).as_posix())
    written = _written(project)
    undeclared = {f for f in written if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in declared)}
    assert not undeclared, f"written but declared by no all-cpu command: {sorted(undeclared)}"
    # nothing lands in the repository through the linked kx_spacy/ folder
    repo_after = {p for p in (ROOT / "kx_spacy").rglob("*") if "__pycache__" not in p.parts}
    assert repo_after == repo_before
    # every step ran (the lock file records each command)
    lock = srsly.read_yaml(project / "project.lock")
    assert set(steps) <= set(lock)
    # the evaluations end with a summary table, the metrics are JSON, the page exists
    assert (project / "metrics" / "demo.html").read_text(encoding="utf8").count("<img") >= 2
    for name in ("segmenter_pku_test", "parser_ewt_test_w10", "textcat_sst2_test", "generator_agnews",
                 "generator_couplets", "nvae_eval", "la_lm_linear"):
        assert isinstance(srsly.read_json(project / "metrics" / "cpu" / f"{name}.json"), dict)
