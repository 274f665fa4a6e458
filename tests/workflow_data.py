"""A tiny synthetic data folder with the layout of ../shared/data (tests never read the real one).

``make_fake_data(root)`` writes small, well-formed stand-ins of every file the all-cpu workflow
reads: CoNLL-U, bakeoff input / gold, sentiment TSV / CSV, couplets, AG News CSV,
tinyshakespeare and MNIST (IDX test images, ``train_images_recon_*.npz``). The text uses words
and characters of the tiny test tokenizer (kx_spacy/testing.py).
"""
from __future__ import annotations

import csv
import gzip
import random
import struct
from pathlib import Path

import numpy as np

from kx_spacy.testing import CHINESE_CHARS

EN_WORDS = "the cat sat on a mat dog ran in park good bad movie film story was very funny boring".split()
ZH_WORDS = ["北京", "大学", "研究", "生命", "起源", "我", "爱", "中国", "人民", "银行", "今天", "天气", "很", "好",
            "喜欢", "吃", "苹果", "电影", "非常", "精彩", "服务", "态度", "酒店", "房间", "干净"]


def _zh_words(rng: random.Random, n: int) -> list:
    return [rng.choice(ZH_WORDS) for _ in range(n)]


def _conllu_sentence(words) -> str:
    rows = [f"{i}\t{w}\t{w}\tNOUN\t_\t_\t{0 if i == 1 else 1}\t{'root' if i == 1 else 'dep'}\t_\t_"
            for i, w in enumerate(words, start=1)]
    return "# text = " + " ".join(words) + "\n" + "\n".join(rows) + "\n\n"


def make_fake_data(root, *, seed: int = 0) -> Path:
    rng = random.Random(seed)
    root = Path(root)

    def write(rel: str, text: str) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf8")

    # UD English EWT and the Chinese UD folders
    for split in ("dev", "test"):
        write(f"ud/UD_English-EWT/en_ewt-ud-{split}.conllu",
              "".join(_conllu_sentence([rng.choice(EN_WORDS) for _ in range(rng.randint(3, 8))]) for _ in range(12)))
    for rel in ("UD_Chinese-GSDSimp/zh_gsdsimp-ud-dev", "UD_Chinese-GSDSimp/zh_gsdsimp-ud-test", "UD_Chinese-PUD/zh_pud-ud-test"):
        sents = [_zh_words(rng, rng.randint(3, 8)) for _ in range(10)]
        write(f"ud/{rel}.conllu", "".join(_conllu_sentence(s) for s in sents))
        write(f"ud/{rel}.seg.txt", "".join(" ".join(s) + "\n" for s in sents))
        write(f"ud/{rel}.raw.txt", "".join("".join(s) + "\n" for s in sents))
    # SIGHAN 2005 PKU: input, gold (words split by double spaces, CRLF), training word list
    lines = [_zh_words(rng, rng.randint(4, 12)) for _ in range(20)]
    write("icwb2/testing/pku_test.utf8", "".join("".join(w) + "\r\n" for w in lines))
    write("icwb2/gold/pku_test_gold.utf8", "".join("  ".join(w) + "\r\n" for w in lines))
    write("icwb2/gold/pku_training_words.utf8", "".join(w + "\r\n" for w in ZH_WORDS[:15]))

    # sentiment
    def en_sentence(label: int) -> str:
        return " ".join([rng.choice(EN_WORDS) for _ in range(5)] + ["good" if label else "bad"])

    write("sst2/train.tsv", "label\tsentence\r\n" + "".join(f"{l}\t{en_sentence(l)}\r\n" for l in [i % 2 for i in range(80)]))
    for split in ("dev", "test"):
        write(f"sst2/{split}.tsv", "label\tcontent\n" + "".join(f"{l}\t{en_sentence(l)}\n" for l in [i % 2 for i in range(30)]))
    zh_review = lambda: "".join(_zh_words(rng, 6))  # noqa: E731
    write("chnsenticorp/train.tsv", "label\ttext_a\n" + "".join(f"{i % 2}\t{zh_review()}\n" for i in range(40)))
    write("chnsenticorp/dev.tsv", "qid\tlabel\ttext_a\n" + "".join(f"{i}\t{i % 2}\t{zh_review()}\n" for i in range(20)))
    write("chnsenticorp/test.tsv", "qid\ttext_a\n" + "".join(f"{i}\t{zh_review()}\n" for i in range(20)))
    write("chnsenticorp_htl_all/ChnSentiCorp_htl_all.csv", "label,review\n" + "".join(f"{i % 2},{zh_review()}\n" for i in range(20)))
    write("waimai_10k/waimai_10k.csv", "label,review\n" + "".join(f"{i % 2},{zh_review()}\n" for i in range(20)))

    # couplets: prepare-generator keeps the first 1,000 training pairs as dev
    chars = list(dict.fromkeys(CHINESE_CHARS))[:200]
    def couplet() -> str:
        n = rng.randint(4, 7)
        upper = "".join(rng.choice(chars) for _ in range(n))
        return upper + "\t" + "".join(rng.choice(chars) for _ in range(n))
    write("couplets/train_60k.tsv", "".join(couplet() + "\n" for _ in range(1100)))
    test = [couplet() for _ in range(20)]
    write("couplets/test.tsv", "".join(p + "\n" for p in test))
    write("couplets/test_in.txt", "".join(" ".join(p.split("\t")[0]) + "\n" for p in test))
    write("couplets/test_out.txt", "".join(" ".join(p.split("\t")[1]) + "\n" for p in test))

    # AG News: "class","title","description", no header
    (root / "ag_news_test").mkdir(parents=True, exist_ok=True)
    with (root / "ag_news_test" / "test.csv").open("w", encoding="utf8", newline="") as fh:
        writer = csv.writer(fh, quoting=csv.QUOTE_ALL)
        for i in range(120):
            writer.writerow([str(i % 4 + 1), " ".join(rng.choice(EN_WORDS) for _ in range(4)),
                             " ".join(rng.choice(EN_WORDS) for _ in range(12))])
    # tinyshakespeare
    write("tinyshakespeare/input.txt", "".join(f"FIRST CITIZEN:\n{en_sentence(i % 2)}, {en_sentence(1)}.\n\n" for i in range(200)))

    # MNIST: IDX test images / labels and the DERIVED training parts
    mnist = root / "mnist"
    mnist.mkdir(parents=True, exist_ok=True)
    nprng = np.random.default_rng(seed)
    test_images = (nprng.random((40, 28, 28)) < 0.2).astype(np.uint8) * 255
    with gzip.open(mnist / "t10k-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(struct.pack(">IIII", 2051, *test_images.shape) + test_images.tobytes())
    for name, n in (("t10k-labels-idx1-ubyte.gz", 40), ("train-labels-idx1-ubyte.gz", 6 * 20)):
        with gzip.open(mnist / name, "wb") as fh:
            fh.write(struct.pack(">II", 2049, n) + bytes(i % 10 for i in range(n)))
    for i in range(6):
        images = (nprng.random((20, 28, 28)) < 0.2).astype(np.uint8) * 255
        np.savez(mnist / f"train_images_recon_{i}.npz", images=images)
    return root


# every cpu_* size var of project.yml turned down to CI size
TINY_VARS = {
    "cpu_mlm_minutes": 0.1, "cpu_mlm_steps": 3, "cpu_mlm_width": 16, "cpu_mlm_layers": 1, "cpu_mlm_min_count": 1,
    "cpu_segment_lines": 3, "cpu_parse_sentences": 4, "cpu_train_rows": 40, "cpu_dev_rows": 8, "cpu_generator_dev_rows": 4, "cpu_train_steps": 2, "cpu_generator_steps": 2, "cpu_eval_every": 2,
    "cpu_eval_rows": 4, "cpu_explain_n": 1, "cpu_generator_random": 2, "cpu_generator_max_l": 8,
    "cpu_nvae_minutes": 0.02, "cpu_nvae_k": 2, "cpu_nvae_images": 4,
    "cpu_lm_minutes": 0.05, "cpu_lm_steps": 2, "cpu_lm_context": 32, "cpu_attention_max_t": 128,
}


def run_all_cpu_workflow(tmp: Path, encoder: Path) -> dict:
    """`spacy project run all-cpu` at CI size in a scratch copy of the project (project.yml
    copied; configs/ and kx_spacy/ linked, since commands name files there as deps), on a
    synthetic data folder. The encoder is copied and the copy removed after the run, so
    whatever later loads the workflow's pipelines or wheels cannot lean on it.

    Returns the project folder, the overrides, the subprocess result, the files of kx_spacy/
    before and after, and the wall-clock seconds.
    """
    import os
    import shutil
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parents[1]
    project = tmp / "project"
    project.mkdir()
    shutil.copy(root / "project.yml", project / "project.yml")
    for linked in ("configs", "kx_spacy"):
        os.symlink(root / linked, project / linked)
    data = make_fake_data(tmp / "data")
    mlm = Path(shutil.copytree(encoder, tmp / "encoder"))
    overrides = {**TINY_VARS, "data_dir": str(data), "python": sys.executable,
                 "english_encoder": str(mlm), "chinese_encoder": str(mlm)}
    args = [a for k, v in overrides.items() for a in (f"--vars.{k}", str(v))]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1", "KX_DATA": str(data),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    snapshot = lambda: {p for p in (root / "kx_spacy").rglob("*") if "__pycache__" not in p.parts}  # noqa: E731
    repo_before = snapshot()
    start = time.time()
    run = subprocess.run([sys.executable, "-m", "spacy", "project", "run", "all-cpu", str(project), *args],
                         cwd=project, env=env, capture_output=True, text=True, timeout=2400)
    seconds = time.time() - start
    shutil.rmtree(mlm)
    return {"project": project, "overrides": overrides, "run": run, "seconds": seconds,
            "repo_before": repo_before, "repo_after": snapshot()}
