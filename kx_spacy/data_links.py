"""Offline stand-in for ``spacy project assets``: link a local copy of the data where the assets land.

project.yml lists every data file the commands read as an asset whose ``dest`` is
``${vars.data_dir}/<folder>/<file>`` with the md5 ``checksum`` weasel checks. With internet,
``spacy project assets`` downloads the public ones; without it, :func:`link_data` symlinks
``SRC/<folder>/<file>`` to ``DEST/<folder>/<file>`` for each asset, after checking its md5, and
says which files are missing from SRC or differ from the recorded checksum.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Union

from .errors import KxError

DATA_PREFIX = "${vars.data_dir}/"


class DataLinkError(KxError):
    """The project file has no data assets, or a destination is in the way."""


@dataclass
class DataAsset:
    path: str  # relative to the data folder
    checksum: Optional[str]
    url: Optional[str] = None
    description: str = ""


@dataclass
class LinkReport:
    linked: List[str] = field(default_factory=list)     # newly linked (or copied)
    present: List[str] = field(default_factory=list)    # already at DEST with the right checksum
    missing: List[str] = field(default_factory=list)    # not in SRC
    differs: Dict[str, str] = field(default_factory=dict)  # path -> what differs

    @property
    def ok(self) -> bool:
        return not self.missing and not self.differs

    def to_dict(self) -> dict:
        return {"linked": self.linked, "present": self.present, "missing": self.missing,
                "differs": self.differs, "ok": self.ok}


def md5sum(path: Union[str, Path], chunk: int = 1 << 20) -> str:
    """The md5 of a file, as weasel's ``checksum`` of an asset."""
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def data_assets(project_file: Union[str, Path]) -> List[DataAsset]:
    """The assets of a project.yml that land in ``${vars.data_dir}``, in file order."""
    import srsly

    project_file = Path(project_file)
    if project_file.is_dir():
        project_file = project_file / "project.yml"
    if not project_file.exists():
        raise DataLinkError(f"No project file at {project_file}")
    raw = srsly.read_yaml(project_file) or {}
    assets = []
    for entry in raw.get("assets", []) or []:
        dest = str(entry.get("dest", ""))
        if dest.startswith(DATA_PREFIX):
            assets.append(DataAsset(dest[len(DATA_PREFIX):], entry.get("checksum"), entry.get("url"),
                                    entry.get("description", "")))
    if not assets:
        raise DataLinkError(f"{project_file} lists no assets under {DATA_PREFIX!r}")
    return assets


def link_data(src: Union[str, Path], dest: Union[str, Path], assets: List[DataAsset], *,
              copy: bool = False) -> LinkReport:
    """Link (or copy) each asset from ``src`` to ``dest`` after checking its checksum.

    A file missing from ``src`` or whose md5 differs from the asset's checksum is reported and
    not linked. A file already at ``dest`` with the right checksum is left alone; one with a wrong
    checksum is reported, never overwritten. ``src`` may equal ``dest``: then this only verifies.
    RETURNS (LinkReport): what was linked, present, missing and different.
    """
    src, dest = Path(src), Path(dest)
    if not src.is_dir():
        raise DataLinkError(f"Data folder not found: {src}")
    report = LinkReport()
    for asset in assets:
        source, target = src / asset.path, dest / asset.path
        if target.exists():
            got = md5sum(target)
            if asset.checksum is None or got == asset.checksum:
                report.present.append(asset.path)
            else:
                report.differs[asset.path] = f"{target} has md5 {got}, expected {asset.checksum} (left as it is)"
            continue
        if not source.is_file():
            report.missing.append(asset.path)
            continue
        got = md5sum(source)
        if asset.checksum is not None and got != asset.checksum:
            report.differs[asset.path] = f"{source} has md5 {got}, expected {asset.checksum} (not linked)"
            continue
        if target.is_symlink():  # a dangling link from an earlier run
            target.unlink()
        target.parent.mkdir(parents=True, exist_ok=True)
        if copy:
            shutil.copyfile(source, target)
        else:
            os.symlink(source.resolve(), target)
        report.linked.append(asset.path)
    return report
