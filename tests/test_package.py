"""The model wheels en_kx_demo / zh_kx_demo (project commands package-en-demo / package-zh-demo).

Tiny offline sources: a tiny random MLM (its own copy, deleted before the wheels are loaded),
transformer-only base pipelines on it, and a textcat and two generators trained a few steps by
`spacy train` with the project's own CPU configs. The project commands (project.yml as
committed) assemble and package both pipelines; the wheels are installed into a fresh venv and
must annotate 20 texts each exactly as the source pipelines do.
"""
import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VERSION = "0.0.1"

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


def _train(config: str, output: Path, overrides: dict) -> Path:
    """`spacy train` (in this process) with a config of the project, a few steps."""
    from spacy.cli.train import train

    common = {"training.max_epochs": 0, "training.max_steps": 4, "training.eval_frequency": 2, "system.seed": 0}
    train(ROOT / config, output, overrides={**common, **overrides})
    return output / "model-best"


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Trained tiny source pipelines: SST-2-style textcat, AG-News-style and couplets generators."""
    import torch

    from kx_spacy.attribution.workflow import write_docbin
    from kx_spacy.generation.workflow import build_base_pipeline
    from kx_spacy.testing import make_tiny_mlm

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("wheel_sources")
    mlm = make_tiny_mlm(tmp / "mlm")  # removed once the sources are built: the wheels must not need it
    build_base_pipeline("en", str(mlm), tmp / "en_base", window=24, stride=16)
    build_base_pipeline("zh", str(mlm), tmp / "zh_base", window=24, stride=16)
    rows = [("I liked this movie very much .", 1), ("a wonderful , funny film .", 1), ("the story was good .", 1),
            ("a terrible , boring film .", 0), ("I hate this awful movie .", 0), ("the plot was bad .", 0)]
    write_docbin(rows, "en", tmp / "sst.spacy")
    textcat = _train("configs/textcat/sst2_cpu.cfg", tmp / "textcat", {
        "paths.train": str(tmp / "sst.spacy"), "paths.dev": str(tmp / "sst.spacy"), "paths.base": str(tmp / "en_base"),
        "training.batcher.size": 4})
    small = {"components.kx_generator.model.d_model": 16, "components.kx_generator.model.n_heads": 2,
             "components.kx_generator.model.n_layers": 1, "components.kx_generator.min_freq": 1,
             "components.kx_generator.max_length": 8, "training.batcher.size": 4, "corpora.dev.limit": 4}
    en_pairs = [("the cat sat on the mat .", "cat sat"), ("the dog ran in the park .", "dog ran"),
                ("a man gave a book to the child .", "man gave book"), ("the city was big and old .", "big city")]
    (tmp / "en.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in en_pairs), encoding="utf8")
    en_gen = _train("configs/generator/agnews_cpu.cfg", tmp / "generator_en", {
        **small, "paths.train": str(tmp / "en.tsv"), "paths.dev": str(tmp / "en.tsv"), "paths.base": str(tmp / "en_base")})
    zh_pairs = [("春天来了", "秋月明"), ("山水美丽", "花鸟快乐"), ("今天天气很好", "我爱中国"), ("北京", "南开")]
    (tmp / "zh.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in zh_pairs), encoding="utf8")
    zh_gen = _train("configs/generator/couplets_cpu.cfg", tmp / "generator_zh", {
        **small, "paths.train": str(tmp / "zh.tsv"), "paths.dev": str(tmp / "zh.tsv"), "paths.base": str(tmp / "zh_base")})
    shutil.rmtree(mlm)
    torch.set_num_threads(threads)
    return {"tmp": tmp, "textcat": textcat, "en_generator": en_gen, "zh_generator": zh_gen}


@pytest.fixture(scope="module")
def packaged(sources):
    """`spacy project run package-en-demo` and `package-zh-demo` on a copy of the project."""
    project = sources["tmp"] / "project"
    project.mkdir()
    shutil.copy(ROOT / "project.yml", project / "project.yml")
    for name in ("configs", "kx_spacy"):  # the commands' config files and code deps
        (project / name).symlink_to(ROOT / name)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               OMP_NUM_THREADS="1")
    overrides = {"package-en-demo": ["--vars.en_demo_textcat", str(sources["textcat"]),
                                     "--vars.en_demo_generator", str(sources["en_generator"])],
                 "package-zh-demo": ["--vars.zh_demo_generator", str(sources["zh_generator"])]}
    for command, extra in overrides.items():
        run = subprocess.run([sys.executable, "-m", "spacy", "project", "run", command, str(project),
                              "--vars.package_version", VERSION, *extra],
                             capture_output=True, text=True, env=env, cwd=project)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    wheels = {lang: next((project / "packages").glob(f"{lang}_kx_demo-{VERSION}/dist/*.whl")) for lang in ("en", "zh")}
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
    assert en.meta["kx_sources"] == {"transformer": str(sources["textcat"]), "textcat": str(sources["textcat"]),
                                     "kx_generator": str(sources["en_generator"])}
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
