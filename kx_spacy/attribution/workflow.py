"""Data and pipeline helpers behind the attribution commands (train-textcat, evaluate-textcat,
explain): reading the sentiment sets from the data folder, writing DocBins, building the base
transformer pipeline that the textcat configs source, and scoring a trained classifier."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import KxError

LABELS = ("POSITIVE", "NEGATIVE")

# dataset -> split -> (relative path, text column, label column)
DATASETS: Dict[str, Dict[str, Tuple[str, str, str]]] = {
    "sst2": {
        "train": ("sst2/train.tsv", "sentence", "label"),
        "dev": ("sst2/dev.tsv", "content", "label"),
        "test": ("sst2/test.tsv", "content", "label"),
    },
    "chnsenticorp": {
        "train": ("chnsenticorp/train.tsv", "text_a", "label"),
        # the public dev split is the labelled test set; dev is cut from train
        "test": ("chnsenticorp/dev.tsv", "text_a", "label"),
    },
}
LANGS = {"sst2": "en", "chnsenticorp": "zh"}
HELD_OUT_DEV = 600  # chnsenticorp: last rows of train kept for dev


def data_dir(path: Optional[str] = None) -> Path:
    """The data folder: ``path``, else $KX_DATA, else ../shared/data."""
    return Path(path or os.environ.get("KX_DATA") or "../shared/data")


def read_sentiment(dataset: str, split: str, path: Optional[str] = None, limit: Optional[int] = None) -> List[Tuple[str, int]]:
    """(text, label) pairs of a sentiment split; label 1 = positive.

    dataset (str): "sst2" or "chnsenticorp".
    split (str): "train", "dev" or "test".
    path (str or None): the data folder (see ``data_dir``).
    limit (int or None): keep the first ``limit`` rows.
    RETURNS (List[Tuple[str, int]]): the rows.
    """
    if dataset not in DATASETS:
        raise KxError(f"Unknown dataset {dataset!r}; choose from {sorted(DATASETS)}.")
    splits = DATASETS[dataset]
    source = split
    if dataset == "chnsenticorp" and split == "dev":
        source = "train"
    if source not in splits:
        raise KxError(f"Dataset {dataset!r} has no split {split!r}.")
    rel, text_col, label_col = splits[source]
    file = data_dir(path) / rel
    if not file.exists():
        raise KxError(f"{file} not found: set --data-dir, the project var data_dir or $KX_DATA.")
    rows: List[Tuple[str, int]] = []
    with file.open(encoding="utf8", newline="") as handle:
        header = handle.readline().rstrip("\r\n").split("\t")
        ti, li = header.index(text_col), header.index(label_col)
        for line in handle:
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) <= max(ti, li) or not parts[ti].strip():
                continue
            text = parts[ti].replace("-lrb-", "(").replace("-rrb-", ")")
            rows.append((text, int(parts[li])))
    if dataset == "chnsenticorp" and split == "train":
        rows = rows[:-HELD_OUT_DEV]
    elif dataset == "chnsenticorp" and split == "dev":
        rows = rows[-HELD_OUT_DEV:]
    if limit:
        rows = rows[: int(limit)]
    return rows


def cats(label: int) -> Dict[str, float]:
    return {"POSITIVE": float(label == 1), "NEGATIVE": float(label != 1)}


def write_docbin(rows: Sequence[Tuple[str, int]], lang: str, output: Path) -> int:
    """Write (text, label) rows as a DocBin with ``doc.cats`` set; returns the count."""
    import spacy
    from spacy.tokens import DocBin

    nlp = spacy.blank(lang)
    db = DocBin(store_user_data=False)
    for doc, (_, label) in zip(nlp.tokenizer.pipe(t for t, _ in rows), rows):
        doc.cats = cats(label)
        db.add(doc)
    output.parent.mkdir(parents=True, exist_ok=True)
    db.to_disk(output)
    return len(db)


def build_base_pipeline(lang: str, encoder: str, output: Path, *, window: int = 128, stride: int = 96) -> None:
    """Save an initialised ``transformer``-only pipeline for the textcat configs to source."""
    from ..testing import make_pipeline

    nlp = make_pipeline(lang, encoder, window=window, stride=stride)
    nlp.to_disk(output)


def evaluate(nlp, rows: Sequence[Tuple[str, int]], batch_size: int = 64, pipe: str = "textcat") -> Dict[str, float]:
    """Accuracy and F1 (positive class and macro) of the pipeline's textcat on labelled rows."""
    from tqdm import tqdm

    disable = [n for n in nlp.pipe_names if n.startswith("kx_attributor")]
    tp = fp = fn = tn = 0
    with nlp.select_pipes(disable=disable):
        docs = nlp.pipe((t for t, _ in rows), batch_size=batch_size)
        for doc, (_, gold) in tqdm(zip(docs, rows), total=len(rows), desc="evaluate"):
            pred = 1 if doc.cats.get("POSITIVE", 0.0) >= doc.cats.get("NEGATIVE", 0.0) else 0
            tp += pred == 1 and gold == 1
            fp += pred == 1 and gold != 1
            fn += pred != 1 and gold == 1
            tn += pred != 1 and gold != 1
    n = max(tp + fp + fn + tn, 1)

    def f1(t, f_p, f_n):
        return 2 * t / max(2 * t + f_p + f_n, 1)

    f_pos, f_neg = f1(tp, fp, fn), f1(tn, fn, fp)
    return {"n": n, "accuracy": (tp + tn) / n, "f1_positive": f_pos, "f1_macro": (f_pos + f_neg) / 2}
