"""The grouped workflows of project.yml: all-cpu, all-gpu, evaluate, bench and demo.

all-gpu cannot run here (no GPU): every step exists, every config it names parses, and every
``--section.key`` override its scripts pass names a setting that the config has. The same
check runs over all-cpu, whose sizes come from those overrides.
"""
import shlex
from pathlib import Path

import pytest
from thinc.api import Config
from weasel.util import load_project_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def project():
    return load_project_config(ROOT)


def test_grouped_workflows_exist_and_old_all_is_gone(project):
    workflows = project["workflows"]
    for name in ("all-cpu", "all-gpu", "evaluate", "bench", "demo"):
        assert workflows.get(name), name
    assert "all" not in workflows
    assert workflows["demo"][-1] == "demo-html"
    assert {"package-en-demo", "package-zh-demo", "demo-html"} <= set(workflows["all-cpu"])


def _config_overrides(script_line):
    """(config path, [(section path, key)]) of a script line that names a .cfg, else None."""
    tokens = shlex.split(script_line)
    cfgs = [t for t in tokens if t.endswith(".cfg")]
    if not cfgs:
        return None
    overrides = [t[2:].split(".") for t in tokens if t.startswith("--") and "." in t[2:] and "/" not in t]
    return cfgs[0], overrides


@pytest.mark.parametrize("workflow", ["all-cpu", "all-gpu"])
def test_workflow_configs_parse_and_overrides_exist(project, workflow):
    commands = {c["name"]: c for c in project["commands"]}
    checked = 0
    for step in project["workflows"][workflow]:
        assert step in commands, step
        for line in commands[step]["script"]:
            found = _config_overrides(line)
            if not found:
                continue
            cfg_path, overrides = found
            config = Config().from_disk(ROOT / cfg_path, interpolate=False)
            for *sections, key in overrides:
                node = config
                for section in sections:
                    assert section in node, (step, cfg_path, ".".join(sections + [key]))
                    node = node[section]
                assert key in node, (step, cfg_path, ".".join(sections + [key]))
            checked += 1
    assert checked >= 4
