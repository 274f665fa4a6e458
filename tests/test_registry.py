"""Entry points, registries and import cost: what `pip install kx_spacy` users meet first."""
import ast
import configparser
import importlib
import json
import re
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import spacy

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "kx_spacy"

GROUP_TO_REGISTRY = {
    "spacy_factories": "factories",
    "spacy_architectures": "architectures",
    "spacy_misc": "misc",
    "spacy_readers": "readers",
    "spacy_scorers": "scorers",
    "spacy_displacy_colors": "displacy_colors",
    "thinc_optimizers": "optimizers",
}


def declared_entry_points():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    declared = {}
    for group in GROUP_TO_REGISTRY:
        raw = cfg.get("options.entry_points", group, fallback="")
        pairs = {}
        for line in raw.strip().splitlines():
            if line.strip():
                name, target = (part.strip() for part in line.split("=", 1))
                pairs[name] = target
        declared[group] = pairs
    return declared


def load_target(target):
    module, attr = target.split(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def test_every_entry_point_resolves_through_spacy():
    for group, pairs in declared_entry_points().items():
        if group == "spacy_factories":
            continue  # spaCy loads factories when a pipeline is made: checked below
        registry = getattr(spacy.registry, GROUP_TO_REGISTRY[group])
        for name, target in pairs.items():
            assert registry.get(name) is load_target(target), f"{group}: {name}"


def test_factories_are_found_without_importing_kx_spacy():
    # What users do: spacy.blank(...) then add_pipe("kx_..."), with no import of kx_spacy.
    factories = sorted(declared_entry_points()["spacy_factories"])
    assert factories
    code = (
        "import json, sys, spacy\n"
        "from spacy.language import Language\n"
        f"names = {factories!r}\n"
        "before = [Language.has_factory(n) for n in names]\n"
        "nlp = spacy.blank('en')\n"
        "print(json.dumps({'before': before, 'after': [Language.has_factory(n) for n in names],"
        " 'meta': [Language.get_factory_meta(n).factory for n in names]}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["before"] == [False] * len(factories)  # nothing registered at `import spacy`
    assert result["after"] == [True] * len(factories)
    assert result["meta"] == factories


def test_installed_entry_points_match_setup_cfg():
    for group, pairs in declared_entry_points().items():
        installed = {ep.name: ep.value for ep in entry_points(group=group) if ep.value.startswith("kx_spacy")}
        assert installed == pairs, f"{group}: reinstall (pip install -e .) or fix setup.cfg"


def registered_in_source():
    """Every kx name registered by a decorator in the package source."""
    found = {group: set() for group in GROUP_TO_REGISTRY}
    reg = re.compile(r"registry\.(\w+)\(\s*[\"'](kx_spacy\.[^\"']+)[\"']")
    fac = re.compile(r"Language\.(?:factory|component)\(\s*[\"'](\w+)[\"']")
    reverse = {v: k for k, v in GROUP_TO_REGISTRY.items()}
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text(encoding="utf8")
        for reg_name, name in reg.findall(text):
            if reg_name in reverse:
                found[reverse[reg_name]].add(name)
        for name in fac.findall(text):
            found["spacy_factories"].add(name)
    return found


def test_every_registered_name_has_an_entry_point():
    declared = declared_entry_points()
    for group, names in registered_in_source().items():
        missing = names - set(declared[group])
        assert not missing, f"registered in code but missing from setup.cfg [{group}]: {sorted(missing)}"


def test_registered_names_follow_the_naming_scheme():
    for group, names in registered_in_source().items():
        for name in names:
            if group == "spacy_factories":
                assert name.startswith("kx_") and name == name.lower()
            else:
                assert re.fullmatch(r"kx_spacy\.[A-Z][A-Za-z0-9]*\.v\d+", name), name


def _module_level_imports(tree):
    """Imports that run when the module is imported (not inside functions / TYPE_CHECKING)."""
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            yield from _module_level_imports(ast.Module(body=getattr(node, "body", []), type_ignores=[]))


HEAVY = ("torch", "transformers", "spacy_transformers", "captum", "tokenizers", "ray")
ENTRY_GROUPS = tuple(GROUP_TO_REGISTRY)


def _loaded_at_import_time():
    """The kx_spacy modules that `import kx_spacy`, its CLI and every entry point load.

    Pure torch modules (models/, the engine's internals, the generation core) import torch at
    module level by design: they are loaded only when a component or command uses them.
    """
    code = (
        "import sys, kx_spacy, kx_spacy.cli\n"
        "from importlib.metadata import entry_points\n"
        f"for group in {ENTRY_GROUPS!r}:\n"
        "    for ep in entry_points(group=group):\n"
        "        if ep.value.startswith('kx_spacy'):\n"
        "            ep.load()\n"
        "print('\\n'.join(sorted(getattr(m, '__file__', None) or '' for n, m in list(sys.modules.items()) if n.startswith('kx_spacy'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return sorted(Path(line) for line in out.stdout.split() if line.endswith(".py"))


def test_import_time_modules_are_found():
    loaded = _loaded_at_import_time()
    assert PACKAGE / "__init__.py" in loaded and PACKAGE / "cli" / "__init__.py" in loaded


@pytest.mark.parametrize("path", _loaded_at_import_time(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_heavy_import_at_module_level(path):
    tree = ast.parse(path.read_text(encoding="utf8"))
    for node in _module_level_imports(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        for name in names:
            assert name.split(".")[0] not in HEAVY, f"{path.name}:{node.lineno} imports {name} at import time"


def test_importing_kx_spacy_adds_no_heavy_modules():
    # thinc imports torch whenever it is installed, so `import spacy` alone brings torch in;
    # what kx_spacy controls is that it adds none of the heavy modules on top.
    code = (
        "import sys, spacy\n"
        "before = set(sys.modules)\n"
        "import kx_spacy, kx_spacy.cli\n"
        "from importlib.metadata import entry_points\n"
        f"for group in {ENTRY_GROUPS!r}:\n"
        "    for ep in entry_points(group=group):\n"
        "        if ep.value.startswith('kx_spacy'):\n"
        "            ep.load()\n"
        f"heavy = sorted(m for m in set(sys.modules) - before if m.split('.')[0] in {HEAVY!r})\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
