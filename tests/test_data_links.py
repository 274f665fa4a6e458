"""kx_spacy link-data: the offline stand-in for `spacy project assets`, on a tiny fake data dir."""
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import srsly

from kx_spacy.data_links import DataLinkError, data_assets, link_data

ROOT = Path(__file__).resolve().parents[1]


def _md5(text: str) -> str:
    return hashlib.md5(text.encode("utf8")).hexdigest()


@pytest.fixture
def fake_project(tmp_path):
    """A project.yml with three data assets and a data copy in which one differs and one is absent."""
    files = {"sst2/dev.tsv": "label\tsentence\n1\tgood\n", "tinyshakespeare/input.txt": "To be.\n",
             "mnist/t10k-labels-idx1-ubyte.gz": "not really gzip"}
    assets = [{"dest": f"${{vars.data_dir}}/{p}", "checksum": _md5(t), "url": f"https://example.org/{p}"}
              for p, t in files.items()]
    assets.append({"dest": "training/not_data.bin", "checksum": "0" * 32})  # not under data_dir: ignored
    srsly.write_yaml(tmp_path / "project.yml", {"vars": {"data_dir": "data"}, "assets": assets, "commands": []})
    src = tmp_path / "copy"
    (src / "sst2").mkdir(parents=True)
    (src / "sst2" / "dev.tsv").write_text(files["sst2/dev.tsv"], encoding="utf8")
    (src / "tinyshakespeare").mkdir()
    (src / "tinyshakespeare" / "input.txt").write_text("To be or not.\n", encoding="utf8")  # wrong checksum
    return tmp_path, src


def test_link_data_links_verified_files_and_reports_the_rest(fake_project):
    root, src = fake_project
    assets = data_assets(root / "project.yml")
    assert [a.path for a in assets] == ["sst2/dev.tsv", "tinyshakespeare/input.txt", "mnist/t10k-labels-idx1-ubyte.gz"]
    dest = root / "data"
    report = link_data(src, dest, assets)
    assert report.linked == ["sst2/dev.tsv"]
    assert (dest / "sst2" / "dev.tsv").is_symlink()
    assert (dest / "sst2" / "dev.tsv").read_text(encoding="utf8").startswith("label")
    assert list(report.differs) == ["tinyshakespeare/input.txt"]
    assert not (dest / "tinyshakespeare" / "input.txt").exists()  # a mismatching file is not linked
    assert report.missing == ["mnist/t10k-labels-idx1-ubyte.gz"]
    assert not report.ok
    again = link_data(src, dest, assets)  # idempotent: the linked file is now present
    assert again.linked == [] and again.present == ["sst2/dev.tsv"]


def test_link_data_never_overwrites_a_wrong_destination_file(fake_project):
    root, src = fake_project
    dest = root / "data"
    (dest / "sst2").mkdir(parents=True)
    (dest / "sst2" / "dev.tsv").write_text("stale\n", encoding="utf8")
    report = link_data(src, dest, data_assets(root))
    assert "sst2/dev.tsv" in report.differs and "left as it is" in report.differs["sst2/dev.tsv"]
    assert (dest / "sst2" / "dev.tsv").read_text(encoding="utf8") == "stale\n"


def test_link_data_cli_exit_code_and_messages(fake_project):
    root, src = fake_project
    (src / "tinyshakespeare" / "input.txt").write_text("To be.\n", encoding="utf8")  # now right
    run = subprocess.run([sys.executable, "-m", "kx_spacy", "link-data", str(src), str(root / "data"),
                          "--project", str(root / "project.yml"), "--copy"], capture_output=True, text=True)
    assert run.returncode == 1  # one file is still missing
    assert "2 copied" in run.stdout and "1 missing" in run.stdout
    assert "missing: mnist/t10k-labels-idx1-ubyte.gz" in run.stderr
    assert not (root / "data" / "sst2" / "dev.tsv").is_symlink()
    with pytest.raises(DataLinkError):
        link_data(root / "nowhere", root / "data", data_assets(root))


def test_project_data_assets_cover_every_data_dep():
    """Every ${vars.data_dir} file a command depends on is an asset with a checksum."""
    raw = srsly.read_yaml(ROOT / "project.yml")
    assets = {a.path: a for a in data_assets(ROOT / "project.yml")}
    assert all(a.checksum and len(a.checksum) == 32 for a in assets.values())
    for command in raw["commands"]:
        for dep in command.get("deps", []):
            if dep.startswith("${vars.data_dir}/"):
                assert dep[len("${vars.data_dir}/"):] in assets, (command["name"], dep)
