"""`spacy package` turns a kx pipeline into a wheel that installs and loads elsewhere."""
import json
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_project_package_builds_a_wheel_that_installs_in_a_fresh_venv(tiny_mlm_dir, tmp_path):
    """`spacy project run package` (project.yml as committed, encoder overridden to the tiny
    model) -> a wheel that requires kx_spacy, installs in a fresh venv and loads there."""
    import os
    import shutil

    import spacy

    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "project.yml", project / "project.yml")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    subprocess.run(
        [sys.executable, "-m", "spacy", "project", "run", "package", str(project),
         "--vars.english_encoder", str(tiny_mlm_dir), "--vars.package_name", "kxtest", "--vars.package_version", "0.0.1"],
        check=True, capture_output=True, env=env, cwd=project,
    )
    nlp = spacy.load(project / "training" / "kxtest")
    expected = [t.head.i for t in nlp("the cat sat on the mat .")]
    (wheel,) = (project / "packages").glob("*/dist/*.whl")
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith("METADATA"))
        requires = [l for l in zf.read(meta).decode().splitlines() if l.startswith("Requires-Dist")]
    assert any("kx_spacy" in r or "kx-spacy" in r for r in requires), requires

    # A fresh venv that sees this environment's packages (installed packages are not
    # re-downloaded: no network in tests) but none of its installed pipelines.
    fresh = tmp_path / "fresh"
    venv.EnvBuilder(with_pip=True).create(fresh)
    py = fresh / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import site; print(site.getsitepackages()[0])"], capture_output=True, text=True, check=True).stdout.strip()
    ours = [p for p in sys.path if p.endswith("site-packages")]
    # ensurepip's old setuptools would shadow the parent's (torch needs a newer one)
    subprocess.run([str(py), "-m", "pip", "uninstall", "-q", "-y", "setuptools"], capture_output=True)
    (Path(site) / "kx_parent_env.pth").write_text("".join(f"import site; site.addsitedir({p!r})\n" for p in ours))
    # pip resolves the wheel's requirements (spacy, spacy-transformers, kx_spacy) against what is visible
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-index", str(wheel)], check=True, capture_output=True)
    code = (
        "import json, spacy\n"
        "nlp = spacy.load('en_kxtest')\n"
        "doc = nlp('the cat sat on the mat .')\n"
        "print(json.dumps({'pipes': nlp.pipe_names, 'heads': [t.head.i for t in doc], 'file': spacy.util.get_package_path('en_kxtest').as_posix()}))\n"
    )
    result = json.loads(subprocess.run([str(py), "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path).stdout.strip().splitlines()[-1])
    assert result["pipes"] == ["transformer", "kx_parser"]
    assert result["heads"] == expected
    assert str(fresh) in result["file"]  # loaded from the fresh venv, not from a path
