"""project.yml stays valid: commands resolve, scripts keep their lines, repo deps exist."""
import re
from pathlib import Path

import srsly
from weasel.util import load_project_config

ROOT = Path(__file__).resolve().parents[1]


def test_project_config_resolves_and_keeps_script_lines():
    raw = srsly.read_yaml(ROOT / "project.yml")
    resolved = load_project_config(ROOT)
    names = [c["name"] for c in raw["commands"]]
    assert len(names) == len(set(names))
    for before, after in zip(raw["commands"], resolved["commands"]):
        for field in ("script", "deps", "outputs"):
            assert len(before.get(field, [])) == len(after.get(field, [])), (before["name"], field)
    for workflow, steps in resolved.get("workflows", {}).items():
        assert set(steps) <= set(names), workflow


def test_deps_inside_the_repository_exist():
    resolved = load_project_config(ROOT)
    data_dir = resolved["vars"]["data_dir"]
    made = set()
    for command in resolved["commands"]:
        for dep in command.get("deps", []):
            if dep.startswith(data_dir) or any(dep.startswith(m) for m in made):
                continue  # shared data, or an output of an earlier command
            if dep.split("/")[0] in ("training", "corpus", "metrics", "packages"):
                continue  # workflow outputs
            assert (ROOT / dep).exists(), (command["name"], dep)
        made.update(command.get("outputs", []))


def test_readme_project_section_is_current(tmp_path):
    import shutil
    import subprocess
    import sys

    copy = tmp_path / "README.md"
    shutil.copy(ROOT / "README.md", copy)
    subprocess.run([sys.executable, "-m", "spacy", "project", "document", str(ROOT), "--output", str(copy),
                    "--no-emoji"], check=True, capture_output=True)
    # `spacy project document` links a local asset only when the file exists (the data dir is
    # beside some checkouts, not others): compare with those links written as plain paths
    def unlinked(text):
        return re.sub(r"\[(`[^`\]]+`)\]\(([^)\s]+)\)", lambda m: m.group(1) if m.group(1).strip("`") == m.group(2) else m.group(0), text)

    assert unlinked(copy.read_text(encoding="utf8")) == unlinked((ROOT / "README.md").read_text(encoding="utf8")), \
        "README's generated section is stale: run `spacy project run document`"
