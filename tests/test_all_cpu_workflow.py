"""A CI-sized run of the whole `all-cpu` workflow: every declared output is written, nothing else is.

The run itself is the session fixture `all_cpu_run` (tests/workflow_data.py: a scratch copy of
the project on a tiny synthetic data folder with the real layout, tiny offline encoders, every
cpu_* size var turned down); tests/test_package.py checks the two wheels it builds.
"""
from pathlib import Path

import pytest
import srsly
from weasel.util import load_project_config

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
def test_all_cpu_workflow_writes_exactly_its_declared_outputs(all_cpu_run):
    project, overrides, run = all_cpu_run["project"], all_cpu_run["overrides"], all_cpu_run["run"]
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-6000:]
    print(f"all-cpu (CI size): {all_cpu_run['seconds']:.0f} s")

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
    assert all_cpu_run["repo_after"] == all_cpu_run["repo_before"]
    # every step ran (the lock file records each command)
    lock = srsly.read_yaml(project / "project.lock")
    assert set(steps) <= set(lock)
    # the evaluations end with a summary table, the metrics are JSON, the page exists
    assert (project / "metrics" / "demo.html").read_text(encoding="utf8").count("<img") >= 2
    for name in ("segmenter_pku_test", "parser_ewt_test_w10", "textcat_sst2_test", "generator_agnews",
                 "generator_couplets", "nvae_eval", "la_lm_linear"):
        assert isinstance(srsly.read_json(project / "metrics" / "cpu" / f"{name}.json"), dict)
