"""Stream a corpus through a pipeline into DocBin shards: `local` (nlp.pipe) or `ray` (Ray Data).

Both engines write the same shard files (see :mod:`kx_spacy.annotation.shards`), skip shards that
are already complete (resume), and end by checking that every input record is in exactly one
shard. ``ray`` runs ``map_batches`` over the shard list with a pool of actors, each holding one
loaded pipeline; a dead actor is restarted and its shard retried (a shard is only visible once
its atomic rename is done, so a retried shard is never counted twice). It runs unchanged
against a cluster (``address="ray://head:10001"`` or ``"auto"``) as long as every node has
kx_spacy installed and can read the pipeline and corpus paths and write the output folder.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

from .shards import (
    AnnotateError, Shard, detect_format, finished_shards, index_corpus, prepare_output, read_shard,
    verify_output, write_shard_atomic,
)

ENGINES = ("local", "ray")


@dataclass
class AnnotateReport:
    """What one annotation run did."""

    engine: str
    records: int
    shards: int
    shards_skipped: int
    docs_written: int
    seconds: float

    @property
    def docs_per_s(self) -> float:
        return self.docs_written / self.seconds if self.seconds > 0 else float("nan")

    def to_dict(self) -> Dict:
        return {**asdict(self), "docs_per_s": round(self.docs_per_s, 2)}


def _with_records(nlp, items: Iterable[Tuple[str, Optional[Dict]]], batch_size: int, n_process: int = 1):
    for doc, record in nlp.pipe(items, as_tuples=True, batch_size=batch_size, n_process=n_process):
        if record:
            doc.user_data["kx_record"] = record
        yield doc


def annotate(
    pipeline: str,
    input_path: Path,
    output_dir: Path,
    *,
    engine: str = "local",
    shard_size: int = 1000,
    batch_size: int = 64,
    n_process: int = 1,
    actors: int = 2,
    address: Optional[str] = None,
    num_cpus: Optional[int] = None,
    gpus_per_actor: float = 0.0,
    threads_per_worker: int = 1,
    fmt: str = "auto",
    text_key: str = "text",
    on_invalid: str = "error",
    progress: bool = True,
) -> AnnotateReport:
    """Annotate ``input_path`` with ``pipeline`` into DocBin shards in ``output_dir``.

    pipeline (str): a pipeline folder or installed package name (``spacy.load``).
    input_path (Path): text lines or JSON lines (``fmt``: auto / text / jsonl).
    output_dir (Path): where ``<start>-<end>.spacy`` shards go; rerunning resumes.
    engine (str): "local" (``nlp.pipe`` with ``n_process``) or "ray" (Ray Data actor pool).
    shard_size (int): records a shard. batch_size (int): docs per ``nlp.pipe`` batch.
    n_process (int): local processes. actors (int): Ray actors, one pipeline each.
    address (Optional[str]): Ray cluster address (None: start a local instance).
    num_cpus (Optional[int]): CPUs of the local Ray instance (None: Ray's default).
    gpus_per_actor (float): GPUs each actor asks Ray for (the pipeline then runs on the GPU).
    threads_per_worker (int): torch threads in each worker.
    on_invalid (str): a text with a lone surrogate: "error" (naming file and line) or "replace".
    RETURNS (AnnotateReport): counts and time; the output is verified complete.
    """
    if engine not in ENGINES:
        raise AnnotateError(f"Unknown engine {engine!r}: use {' or '.join(ENGINES)}")
    for name, value in (("batch_size", batch_size), ("n_process", n_process), ("actors", actors),
                        ("threads_per_worker", threads_per_worker)):
        if int(value) < 1:
            raise AnnotateError(f"{name} must be ≥ 1, got {value}")
    input_path, output_dir = Path(input_path), Path(output_dir)
    fmt = detect_format(input_path, fmt)
    start = time.time()
    shards, n_records = index_corpus(input_path, shard_size)
    prepare_output(output_dir, input_path, shard_size, n_records, fmt)
    done = finished_shards(output_dir)
    todo = [s for s in shards if (s.start, s.end) not in done]
    if todo:
        if engine == "local":
            _run_local(pipeline, input_path, output_dir, todo, (fmt, text_key, on_invalid), batch_size, n_process,
                       threads_per_worker, progress)
        else:
            _run_ray(pipeline, input_path, output_dir, todo, (fmt, text_key, on_invalid), batch_size, actors, address,
                     num_cpus, gpus_per_actor, threads_per_worker, progress)
    total = verify_output(output_dir, shards)
    if total != n_records:  # pragma: no cover - verify_output checks each shard's count
        raise AnnotateError(f"{total} docs written for {n_records} input records")
    return AnnotateReport(engine=engine, records=n_records, shards=len(shards), shards_skipped=len(shards) - len(todo),
                          docs_written=sum(s.end - s.start for s in todo), seconds=time.time() - start)


def _run_local(pipeline, input_path, output_dir, todo: List[Shard], reading, batch_size, n_process,
               threads, progress) -> None:
    import spacy
    import torch
    from tqdm import tqdm

    if n_process > 1:
        # forked workers deadlock in torch's thread pool unless the parent is single-threaded,
        # and fast tokenizers warn at every fork unless told not to parallelise
        torch.set_num_threads(1)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    else:
        torch.set_num_threads(threads)
    nlp = spacy.load(pipeline)

    def items() -> Iterator[Tuple[str, Optional[Dict]]]:
        for shard in todo:
            yield from read_shard(input_path, shard, *reading)

    bar = tqdm(total=sum(s.end - s.start for s in todo), unit="doc", desc="annotate (local)", disable=not progress)
    docs = _with_records(nlp, items(), batch_size, n_process)
    for shard in todo:
        batch = [next(docs) for _ in range(shard.end - shard.start)]
        write_shard_atomic(batch, output_dir, shard)
        bar.update(len(batch))
    bar.close()


class _ShardAnnotator:
    """A Ray Data actor: loads the pipeline once, then annotates whole shards."""

    def __init__(self, pipeline, input_path, output_dir, reading, batch_size, threads):
        import ray
        import spacy
        import torch

        torch.set_num_threads(threads)
        if ray.get_gpu_ids():
            spacy.require_gpu()
        self.nlp = spacy.load(pipeline)
        self.args = (Path(input_path), Path(output_dir), tuple(reading), batch_size)

    def __call__(self, batch: Dict) -> Dict:
        import numpy as np

        input_path, output_dir, reading, batch_size = self.args
        names, counts = [], []
        for start, end, offset in zip(batch["start"], batch["end"], batch["offset"]):
            shard = Shard(int(start), int(end), int(offset))
            if not (output_dir / shard.name).exists():  # a retry of a shard that did finish
                docs = list(_with_records(self.nlp, read_shard(input_path, shard, *reading), batch_size))
                write_shard_atomic(docs, output_dir, shard)
            names.append(shard.name)
            counts.append(shard.end - shard.start)
        return {"shard": np.array(names), "docs": np.array(counts)}


def _run_ray(pipeline, input_path, output_dir, todo: List[Shard], reading, batch_size, actors, address,
             num_cpus, gpus_per_actor, threads, progress) -> None:
    import ray
    from tqdm import tqdm

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, num_cpus=num_cpus if address is None else None, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    try:
        import logging

        logging.getLogger("ray.data").setLevel(logging.WARNING)  # our bar says how far it is
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        ds = ray.data.from_items([s.to_dict() for s in todo], override_num_blocks=min(len(todo), 4 * actors))
        out = ds.map_batches(
            _ShardAnnotator,
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=threads,
            num_gpus=gpus_per_actor or None,
            fn_constructor_kwargs=dict(
                pipeline=str(pipeline), input_path=str(Path(input_path).resolve()),
                output_dir=str(Path(output_dir).resolve()), reading=reading,
                batch_size=batch_size, threads=threads,
            ),
            # Ray Data's actor pool restarts a killed actor and retries its shard by default
            # (max_restarts = max_task_retries = -1); the kill test relies on it
        )
        bar = tqdm(total=sum(s.end - s.start for s in todo), unit="doc", desc=f"annotate (ray, {actors} actors)",
                   disable=not progress)
        for row in out.iter_rows():
            bar.update(int(row["docs"]))
        bar.close()
    finally:
        if started_here:
            ray.shutdown()


def benchmark_engines(pipeline: str, input_path: Path, work_dir: Path, *, shard_size: int = 200,
                      batch_size: int = 64, workers: int = 2, num_cpus: Optional[int] = None) -> List[Dict]:
    """docs/s of one process, ``nlp.pipe(n_process=workers)`` and Ray with ``workers`` actors, same input.

    RETURNS (List[Dict]): one row per setting (each writes its own fresh output folder).
    """
    import shutil

    rows = []
    settings = [("local", 1, "local, 1 process"), ("local", workers, f"local, n_process={workers}"),
                ("ray", workers, f"ray, {workers} actors")]
    for engine, n, label in settings:
        out = Path(work_dir) / label.replace(" ", "_").replace(",", "").replace("=", "")
        shutil.rmtree(out, ignore_errors=True)
        report = annotate(pipeline, input_path, out, engine=engine, shard_size=shard_size, batch_size=batch_size,
                          n_process=n if engine == "local" else 1, actors=n, num_cpus=num_cpus, progress=False)
        rows.append({"setting": label, **report.to_dict()})
    return rows
