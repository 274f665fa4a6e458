"""The model wheels en_kx_demo / zh_kx_demo (project commands package-en-demo / package-zh-demo).

The sources and wheels are those of the CI-sized all-cpu workflow run (conftest's `all_cpu_run`,
tests/workflow_data.py): a tiny random MLM (its own copy, deleted after the run), and a textcat
and two generators trained a few steps by the workflow's `spacy train` steps with the project's
own CPU configs; its package-en-demo / package-zh-demo steps (project.yml as committed)
assemble and package both pipelines. The wheels are installed into a fresh venv and must
annotate 20 texts each exactly as the source pipelines do.
"""
import json
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
from weasel.util import load_project_config

ROOT = Path(__file__).resolve().parents[1]

EN_TEXTS = [
    "the cat sat on the mat .", "I liked this movie very much .", "a terrible , boring film .",
    "the dog ran in the park .", "she gave a book to the child .", "the story was good but too long .",
    "what a wonderful and funny film !", "I hate this awful plot .", "the man saw a big red car .",
    "they went to the city after school .", "the music was beautiful .", "we read the book last year .",
    "the acting was bad .", "an old house behind the tree .", "he found the small bird .",
    "the film is quite short .", "people love this great story .", "the lazy fox jumps over the dog .",
    "my first day at the new school .", "it was a sad movie .",
]
ZH_TEXTS = [
    "今天天气很好", "我爱中国", "北京市海淀区", "春天来了", "山水美丽", "电影非常精彩", "服务态度很好",
    "酒店房间干净", "外卖送餐速度快", "价格便宜", "我喜欢吃苹果", "南开大学研究生", "花鸟快乐", "秋月明",
    "朋友老师同学", "经济发展", "社会科技文化", "工作生活幸福", "红绿青白黑", "东西上下左右",
]

# Runs in this process (on the saved pipeline folders) and in the fresh venv (on the installed
# packages): every annotation the pipelines write, as JSON.
ANNOTATE = r'''
import json, sys

def annotate(nlp, texts):
    import torch
    torch.set_num_threads(1)
    out = []
    for doc in nlp.pipe(texts, batch_size=8):
        rec = {"words": [t.text for t in doc], "heads": [t.head.i for t in doc], "deps": [t.dep_ for t in doc],
               "cats": dict(doc.cats)}
        if doc.has_extension("kx_attributions") and doc._.kx_attributions is not None:
            rec["attributions"] = {k: dict(v) for k, v in doc._.kx_attributions.items()}
        if doc.has_extension("kx_generation") and doc._.kx_generation is not None:
            rec["generation"] = dict(doc._.kx_generation)
        out.append(json.loads(json.dumps(rec)))
    return out

if __name__ == "__main__":
    import spacy
    result = {}
    for name, texts in json.loads(open(sys.argv[1], encoding="utf8").read()).items():
        nlp = spacy.load(name)
        result[name] = {"pipes": nlp.pipe_names, "file": spacy.util.get_package_path(name).as_posix(),
                        "listening": nlp.get_pipe("transformer").listening_components,
                        "docs": annotate(nlp, texts)}
    open(sys.argv[2], "w", encoding="utf8").write(json.dumps(result))
'''


def _annotate(nlp, texts):
    namespace = {}
    exec(ANNOTATE, namespace)
    return namespace["annotate"](nlp, texts)


def _same(a, b, path="doc"):
    """Equal annotations: discrete values exactly, floats to 1e-6 (relative) / 1e-9."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (path, sorted(a), sorted(b) if isinstance(b, dict) else b)
        for key in a:
            _same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), (path, a, b)
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and not isinstance(b, bool):
        assert b == pytest.approx(a, rel=1e-6, abs=1e-9), (path, a, b)
    else:
        assert a == b, (path, a, b)


@pytest.fixture(scope="module")
def sources(all_cpu_run):
    """The pipelines the all-cpu workflow trained (conftest's `all_cpu_run`) and fed to its
    package commands: the SST-2 textcat and the AG News and couplets generators."""
    run = all_cpu_run["run"]
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    project = all_cpu_run["project"]
    vars_ = load_project_config(project, overrides={f"vars.{k}": v for k, v in all_cpu_run["overrides"].items()})["vars"]
    return {"project": project, "version": vars_["package_version"], "vars": vars_,
            **{key: project / vars_[name] for key, name in (("textcat", "en_demo_textcat"),
                                                             ("en_generator", "en_demo_generator"),
                                                             ("zh_generator", "zh_demo_generator"))}}


@pytest.fixture(scope="module")
def packaged(sources):
    """The wheels of `package-en-demo` and `package-zh-demo` (steps of the all-cpu workflow)."""
    project, version = sources["project"], sources["version"]
    wheels = {lang: next((project / "packages").glob(f"{lang}_kx_demo-{version}/dist/*.whl")) for lang in ("en", "zh")}
    return {"project": project, "wheels": wheels}


def _fresh_venv(path: Path) -> Path:
    """A fresh venv that sees this environment's packages (installed packages are not
    re-downloaded: no network in tests) but none of its installed pipelines."""
    venv.EnvBuilder(with_pip=True).create(path)
    py = path / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import site; print(site.getsitepackages()[0])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    ours = [p for p in sys.path if p.endswith("site-packages")]
    # ensurepip's old setuptools would shadow the parent's (torch needs a newer one)
    subprocess.run([str(py), "-m", "pip", "uninstall", "-q", "-y", "setuptools"], capture_output=True)
    (Path(site) / "kx_parent_env.pth").write_text("".join(f"import site; site.addsitedir({p!r})\n" for p in ours))
    return py


@pytest.mark.slow
def test_assembled_pipelines_share_one_transformer_and_keep_the_trained_components(sources, packaged):
    import spacy

    training = packaged["project"] / "training"
    en = spacy.load(training / "en_kx_demo")
    assert en.pipe_names == ["transformer", "kx_parser", "textcat", "kx_attributor", "kx_generator"]
    assert sorted(en.get_pipe("transformer").listening_components) == ["kx_generator", "textcat"]
    # the source paths as the package command passed them (relative to the project)
    textcat, generator = sources["vars"]["en_demo_textcat"], sources["vars"]["en_demo_generator"]
    assert en.meta["kx_sources"] == {"transformer": textcat, "textcat": textcat, "kx_generator": generator}
    ours = _annotate(en, EN_TEXTS)
    # the trained components annotate as they did in their own pipelines
    for source, key in ((sources["textcat"], "cats"), (sources["en_generator"], "generation")):
        theirs = _annotate(spacy.load(source), EN_TEXTS)
        _same([d[key] for d in ours], [d[key] for d in theirs])
    assert {d["generation"]["stopped_by"] for d in ours} <= {"eos", "max_length"}
    assert all(d["attributions"] for d in ours) and any(h != i for d in ours for i, h in enumerate(d["heads"]))

    zh = spacy.load(training / "zh_kx_demo")
    assert zh.pipe_names == ["kx_segmenter", "transformer", "kx_parser", "kx_generator"]
    assert zh.get_pipe("transformer").listening_components == ["kx_generator"]
    words = _annotate(zh, ZH_TEXTS)
    assert any(len(w) > 1 for d in words for w in d["words"])  # the segmenter merged characters
    assert ["".join(d["words"]) for d in words] == ZH_TEXTS
    with zh.select_pipes(disable=["kx_segmenter", "kx_parser"]):  # on characters: the trained generator's input
        chars = _annotate(zh, ZH_TEXTS)
    theirs = _annotate(spacy.load(sources["zh_generator"]), ZH_TEXTS)
    _same([d["generation"] for d in chars], [d["generation"] for d in theirs])


@pytest.mark.slow
def test_wheels_install_in_a_fresh_venv_and_annotate_as_the_sources(sources, packaged, tmp_path):
    import spacy

    for lang, wheel in packaged["wheels"].items():
        with zipfile.ZipFile(wheel) as zf:
            meta = next(n for n in zf.namelist() if n.endswith("METADATA"))
            requires = [l for l in zf.read(meta).decode().splitlines() if l.startswith("Requires-Dist")]
        assert any("kx_spacy" in r or "kx-spacy" in r for r in requires), (lang, requires)
    py = _fresh_venv(tmp_path / "fresh")
    # pip resolves the wheels' requirements (spacy, spacy-transformers, kx_spacy) against what is visible
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-index", *map(str, packaged["wheels"].values())],
                   check=True, capture_output=True)
    (tmp_path / "annotate.py").write_text(ANNOTATE, encoding="utf8")
    (tmp_path / "texts.json").write_text(json.dumps({"en_kx_demo": EN_TEXTS, "zh_kx_demo": ZH_TEXTS}), encoding="utf8")
    run = subprocess.run([str(py), str(tmp_path / "annotate.py"), str(tmp_path / "texts.json"), str(tmp_path / "out.json")],
                         capture_output=True, text=True, cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert run.returncode == 0, run.stderr[-3000:]
    installed = json.loads((tmp_path / "out.json").read_text(encoding="utf8"))
    training = packaged["project"] / "training"
    for name, texts in (("en_kx_demo", EN_TEXTS), ("zh_kx_demo", ZH_TEXTS)):
        got = installed[name]
        assert str(tmp_path / "fresh") in got["file"]  # loaded from the fresh venv, not from a path
        source = spacy.load(training / name)
        assert got["pipes"] == source.pipe_names
        assert sorted(got["listening"]) == sorted(source.get_pipe("transformer").listening_components)
        expected = _annotate(source, texts)
        assert len(got["docs"]) == len(expected) == 20
        _same(got["docs"], expected, name)


@pytest.mark.slow
def test_assembly_refuses_a_component_trained_on_another_encoder(sources, tmp_path):
    import spacy
    import torch

    from kx_spacy.errors import PipelineAssemblyError
    from kx_spacy.pipeline_builder import assemble_pipeline

    other = spacy.load(sources["en_generator"])
    with torch.no_grad():
        next(other.get_pipe("transformer").model.transformer.parameters()).add_(0.01)  # "fine-tuned"
    other.to_disk(tmp_path / "other")
    with pytest.raises(PipelineAssemblyError, match="different encoder.*weights"):
        assemble_pipeline(ROOT / "configs/package/en_kx_demo.cfg",
                          {"paths.textcat": str(sources["textcat"]), "paths.generator": str(tmp_path / "other")})


def test_assembly_from_a_missing_pipeline_is_a_clear_error(tmp_path):
    from kx_spacy.errors import PipelineAssemblyError
    from kx_spacy.pipeline_builder import assemble_pipeline

    with pytest.raises(PipelineAssemblyError, match="not a saved pipeline"):
        assemble_pipeline(ROOT / "configs/package/zh_kx_demo.cfg", {"paths.generator": str(tmp_path / "nothing")})
