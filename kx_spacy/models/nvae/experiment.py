"""A time-budgeted NVAE run with the MLP VAE baseline trained for the same wall-clock time in
the same call, then both evaluated at the same training times by the importance-weighted
bound on the same, once-binarised test images.

The settings come as a plain dict (the sections of ``configs/nvae/*.cfg``: ``nvae``,
``nvae_training``, ``baseline``, ``training``, ``evaluation``, ``sampling``); the CLI only
parses the file. Training runs on the shared engine (kx_spacy.training).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn

from .config import NVAEConfig, NVAEError
from .data import TEST_SEED, binarize_fixed, first, load_mnist_test, load_mnist_train
from .evaluation import importance_weighted_nll, save_grid
from .mlp_vae import MLPVAE
from .model import NVAE, count_parameters
from .sampling import sample_images
from .task import MLPVAETask, NVAETask, unwrap

BINARISATION = (
    "training images dynamically binarised (fresh Bernoulli(grey/255) draw per batch); test "
    "images binarised once, Bernoulli(grey/255) with numpy PCG64(seed={seed})"
)

DEFAULTS: Dict[str, Dict[str, Any]] = {
    "nvae": {},
    "nvae_training": {
        "batch_size": 64, "lr": 1e-2, "lr_min_ratio": 0.01, "warmup_steps": 100,
        "weight_decay": 3e-4, "eps": 1e-3, "kl_anneal_portion": 0.3, "kl_constant_portion": 1e-4,
        "kl_min": 1e-4, "kl_balance": True, "reg_coeff": 1e-2,
        "reg_every": 1,
    },
    "baseline": {
        "enabled": True, "hidden": [200, 200], "latent": 50, "batch_size": 100, "lr": 1e-3,
        "eps": 1e-4, "lr_min_ratio": 0.1, "warmup_steps": 0,
    },
    "training": {
        "max_time_minutes": 10.0, "max_steps": 0, "precision": "auto", "clip_mode": "global_norm",
        "clip_threshold": 200.0, "max_bad_steps": 20, "checkpoint_every": 500, "seed": 0,
        "num_threads": 1, "progress": True, "marks_seconds": [60, 150, 300, 450], "clock": "wall",
    },
    "evaluation": {
        "test_seed": TEST_SEED, "k": 1000, "num_images": 2000, "batch_size": 2000,
        "marks_k": 100, "marks_num_images": 500, "baseline_num_images": 0, "holdout": 0,
    },
    "sampling": {
        "temperatures": [0.6, 0.8, 1.0], "num_samples": 64, "readjust_bn": True,
        "readjust_samples": 100, "readjust_iterations": 20, "num_reconstructions": 32,
    },
}


def merge_config(cfg: Optional[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """DEFAULTS overlaid with ``cfg`` (section by section); unknown sections/keys → NVAEError."""
    out = {k: dict(v) for k, v in DEFAULTS.items()}
    for section, values in (cfg or {}).items():
        if section not in out:
            raise NVAEError(f"unknown config section [{section}]; known: {sorted(out)}")
        if section != "nvae":
            unknown = sorted(set(values) - set(out[section]))
            if unknown:
                raise NVAEError(f"unknown key(s) {unknown} in [{section}]; known: {sorted(out[section])}")
        out[section].update(values)
    NVAEConfig.from_dict(out["nvae"])  # validate early
    return out


def load_config(path: Optional[Union[str, Path]] = None,
                overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Dict[str, Any]]:
    """Read a ``configs/nvae/*.cfg`` file (confection syntax), apply dotted ``overrides``
    (``{"training.max_time_minutes": 2}``) and fill the defaults.

    RETURNS (dict): the merged, validated sections.
    """
    raw: Dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise NVAEError(f"config file not found: {path}")
        from confection import Config

        try:
            raw = {k: dict(v) for k, v in Config().from_disk(path).items()}
        except Exception as err:  # confection raises several error types
            raise NVAEError(f"invalid NVAE config {path}: {err}") from err
    for key, value in (overrides or {}).items():
        section, _, name = key.partition(".")
        if not name or "." in name:
            raise NVAEError(f"override {key!r}: use section.key (e.g. training.max_time_minutes)")
        raw.setdefault(section, {})[name] = value
    return merge_config(raw)


def build_nvae(cfg: Dict[str, Dict[str, Any]]) -> NVAE:
    model = NVAE(NVAEConfig.from_dict(cfg["nvae"]))
    if model.config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def build_baseline(cfg: Dict[str, Dict[str, Any]]) -> MLPVAE:
    b = cfg["baseline"]
    return MLPVAE((1, 28, 28), tuple(b["hidden"]), int(b["latent"]))


def save_model(module: nn.Module, kind: str, cfg: Dict[str, Dict[str, Any]], path: Union[str, Path],
               extra: Optional[Dict[str, Any]] = None) -> Path:
    """Write ``{kind, config, state_dict}`` (weights on CPU) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in unwrap(module).state_dict().items()}
    torch.save({"kind": kind, "config": cfg, "state_dict": state, **(extra or {})}, path)
    return path


def load_model(path: Union[str, Path], map_location: str = "cpu") -> nn.Module:
    """Rebuild a model written by save_model (an NVAE or the MLP baseline), in eval mode."""
    path = Path(path)
    if not path.exists():
        raise NVAEError(f"model file not found: {path}")
    blob = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(blob, dict) or blob.get("kind") not in ("nvae", "baseline"):
        raise NVAEError(f"{path} is not an NVAE / baseline model file")
    cfg = merge_config(blob["config"])
    model = build_nvae(cfg) if blob["kind"] == "nvae" else build_baseline(cfg)
    try:
        model.load_state_dict(blob["state_dict"])
    except RuntimeError as err:
        raise NVAEError(f"{path}: weights do not match the stored config ({err})") from err
    return model.eval()


def test_images(data_dir: Union[str, Path], limit: int, seed: int) -> torch.Tensor:
    """The first ``limit`` test images, binarised once with ``seed``."""
    return torch.from_numpy(binarize_fixed(first(load_mnist_test(data_dir), limit), seed=seed))


def split_holdout(train: "Any", holdout: int, data_dir: Union[str, Path], seed: int):
    """``(training images, eval_images(limit))``: with ``holdout`` > 0 the last ``holdout``
    training images are kept out of training and ``eval_images`` gives the first ``limit`` of
    them, binarised once with ``seed`` like the test images (for development pilots: choices
    made on them never see the test set); with 0 it gives the test images."""
    if holdout < 0 or holdout >= len(train):
        raise NVAEError(f"[evaluation] holdout must be in [0, {len(train)}) (the training images), got {holdout}")
    if not holdout:
        return train, lambda limit: test_images(data_dir, limit, seed)
    held = train[-holdout:]

    def eval_images(limit: int) -> torch.Tensor:
        if limit > holdout:
            raise NVAEError(f"{limit} evaluation images asked for, [evaluation] holdout keeps {holdout}")
        return torch.from_numpy(binarize_fixed(first(held, limit), seed=seed))

    return train[:-holdout], eval_images


def _engine():
    """The shared training engine (kx_spacy.training.Trainer / TrainingConfig)."""
    from ...training import Trainer, TrainingConfig, WarmupDecay

    return Trainer, TrainingConfig, WarmupDecay


def train_one(kind: str, cfg: Dict[str, Dict[str, Any]], train: "Any", output_dir: Path,
              max_seconds: float, resume: bool, log: Callable[[str], None]) -> Dict[str, Any]:
    """Train one model (``kind`` "nvae" or "baseline") on the engine for ``max_seconds`` of
    training time; returns its task (for the snapshots), module and the engine's result."""
    t = cfg["training"]
    torch.manual_seed(int(t["seed"]))
    if not int(t["max_steps"]) and not max_seconds:
        raise NVAEError("training needs a step budget, a time budget, or both")
    marks = [m for m in t["marks_seconds"] if m < max_seconds] if max_seconds else []
    if kind == "nvae":
        n = cfg["nvae_training"]
        model = build_nvae(cfg)
        task = NVAETask(
            model, train, int(n["batch_size"]), n["kl_anneal_portion"],
            n["kl_constant_portion"], n["kl_min"], bool(n["kl_balance"]), n["reg_coeff"],
            seed=int(t["seed"]), marks=marks, reg_every=int(n["reg_every"]),
        )
        def opt(m):
            return torch.optim.Adamax(m.parameters(), lr=n["lr"], eps=n["eps"], weight_decay=n["weight_decay"],
                                      foreach=True)
        sched = n
    else:
        b = cfg["baseline"]
        model = build_baseline(cfg)
        task = MLPVAETask(model, train, int(b["batch_size"]), seed=int(t["seed"]), marks=marks)
        def opt(m):
            return torch.optim.Adam(m.parameters(), lr=b["lr"], eps=b["eps"], foreach=True)
        sched = b
    Trainer, TrainingConfig, WarmupDecay = _engine()
    max_steps = int(t["max_steps"]) or None  # None: a pure time budget (the schedule decays by time)

    def scheduler(o):
        return WarmupDecay(o, decay="cosine", warmup_steps=int(sched["warmup_steps"]),
                           max_steps=max_steps, min_lr_ratio=float(sched["lr_min_ratio"]))

    tc = TrainingConfig(
        max_steps=max_steps,
        max_time_minutes=(max_seconds / 60.0) or None,
        desc=kind,
        precision=t["precision"],
        clip_mode=t["clip_mode"],
        clip_threshold=float(t["clip_threshold"]),
        max_bad_steps=int(t["max_bad_steps"]),
        checkpoint_every=int(t["checkpoint_every"]),
        seed=int(t["seed"]),
        num_threads=int(t["num_threads"]) or None,
        progress=bool(t["progress"]),
        clock=str(t["clock"]),
    )
    identity = {"kind": kind, "nvae": cfg["nvae"], "baseline": cfg["baseline"],
                "nvae_training": cfg["nvae_training"]} if kind == "nvae" else {
                "kind": kind, "baseline": cfg["baseline"]}
    trainer = Trainer(task, tc, output_dir=output_dir / kind, optimizer=opt, scheduler=scheduler,
                      identity=identity)
    t0 = time.perf_counter()
    result = trainer.run(resume=resume)
    log(f"{kind}: {result.steps} steps, {result.elapsed_s:.0f} s on the {t['clock']} clock "
        f"({time.perf_counter() - t0:.0f} s wall; {count_parameters(task.module)} parameters, "
        f"{result.items_seen / max(result.elapsed_s, 1e-9):.0f} img per {t['clock']}-clock s)")
    return {"task": task, "module": task.module, "result": result, "progress": trainer.progress}


def evaluate_snapshots(kind: str, cfg: Dict[str, Dict[str, Any]], task, module: nn.Module,
                       images_final: torch.Tensor, images_marks: torch.Tensor,
                       log: Callable[[str], None]) -> List[Dict[str, Any]]:
    """IW bound of every kept snapshot (marks: marks_k on marks_num_images; final: k on
    num_images)."""
    e = cfg["evaluation"]
    rows = []
    model = build_nvae(cfg) if kind == "nvae" else build_baseline(cfg)
    for snap in task.snapshots(final_module=module):
        model.load_state_dict(snap["state"])
        final = snap["mark"] is None
        imgs = images_final if final else images_marks
        k = int(e["k"] if final else e["marks_k"])
        t0 = time.perf_counter()
        res = importance_weighted_nll(model, imgs, k=k, batch_size=int(e["batch_size"]))
        row = {"model": kind, "mark_seconds": snap["mark"], "train_seconds": round(snap["seconds"], 1),
               "step": snap["step"], **res.to_dict(), "eval_seconds": round(time.perf_counter() - t0, 1)}
        rows.append(row)
        log(f"  {kind} @ {row['train_seconds']:>6.1f} s (step {row['step']}): IW-{k} NLL "
            f"{res.nll:.2f} nats on {res.num_images} images (−ELBO {res.elbo_nll:.2f})")
    return rows


def write_pictures(model: NVAE, cfg: Dict[str, Dict[str, Any]], images: torch.Tensor,
                   out_dir: Union[str, Path]) -> List[str]:
    """PNG grids: samples at each temperature (with and without BN re-adjustment) and
    reconstructions (top rows data, bottom rows reconstructed means)."""
    s = cfg["sampling"]
    out_dir = Path(out_dir)
    paths = []
    torch.manual_seed(0)
    for t in s["temperatures"]:
        for readjust in sorted({False, bool(s["readjust_bn"])}):
            res = sample_images(model, int(s["num_samples"]), float(t), readjust_bn=readjust,
                                readjust_samples=int(s["readjust_samples"]),
                                readjust_iterations=int(s["readjust_iterations"]))
            tag = "bn-readjusted" if res.readjusted else ("bn-fallback" if res.fallback else "train-bn")
            p = save_grid(res.images, out_dir / f"samples_t{t:g}_{tag}.png",
                          title=f"samples, temperature {t:g}, {tag}")
            paths.append(str(p))
    n = min(int(s["num_reconstructions"]), images.shape[0])
    model.eval()
    with torch.no_grad():
        x = images[:n].to(next(model.parameters()).device)
        recon = model(x).likelihood.mean().cpu()
    rows = []
    for i in range(0, n, 8):  # a row of test images, then the row of their reconstructions
        rows += [x[i : i + 8].cpu(), recon[i : i + 8]]
    paths.append(str(save_grid(torch.cat(rows), out_dir / "reconstructions.png", nrow=8,
                               title="rows: test images / their reconstructions (pixel means)")))
    return paths


def run_experiment(cfg: Optional[Dict[str, Any]], data_dir: Union[str, Path], output_dir: Union[str, Path],
                   metrics_path: Optional[Union[str, Path]] = None, resume: bool = False,
                   minutes: Optional[float] = None, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Train the NVAE and (same time budget) the MLP baseline, evaluate both at the marks and
    at the end, save the models and the pictures, and write a metrics JSON.

    cfg (dict | None): config sections (see DEFAULTS).
    data_dir (str | Path): folder with ``mnist/``.
    output_dir (str | Path): checkpoints, ``nvae/model.pt``, ``baseline/model.pt``, pictures.
    metrics_path (str | Path | None): where to write the metrics JSON.
    resume (bool): continue from the engine's checkpoints in output_dir.
    minutes (float | None): override the time budget.
    RETURNS (dict): the metrics (also written to metrics_path).
    """
    cfg = merge_config(cfg)
    if minutes is not None:
        cfg["training"]["max_time_minutes"] = float(minutes)
    t, e = cfg["training"], cfg["evaluation"]
    max_seconds = float(t["max_time_minutes"]) * 60.0
    output_dir = Path(output_dir)
    train = load_mnist_train(data_dir)
    seed = int(e["test_seed"])
    train, eval_images = split_holdout(train, int(e["holdout"]), data_dir, seed)
    images_final = eval_images(int(e["num_images"]))
    n_marks = int(e["marks_num_images"]) or images_final.shape[0]
    images_marks = images_final[:n_marks] if n_marks <= images_final.shape[0] else eval_images(n_marks)
    if int(t["num_threads"]):
        torch.set_num_threads(int(t["num_threads"]))
    metrics: Dict[str, Any] = {
        "binarisation": BINARISATION.format(seed=seed),
        "evaluated_on": (f"held-out training images (the last {int(e['holdout'])}, not trained on; "
                         "binarised once like the test images): a development run, not a test figure"
                         if int(e["holdout"]) else "test images"),
        "time_budget_seconds": max_seconds,
        "clock": t["clock"],
        "num_threads": int(t["num_threads"]),
        "evaluation": {k: e[k] for k in ("k", "num_images", "marks_k", "marks_num_images",
                                         "baseline_num_images")},
        "rows": [],
    }
    kinds = ["nvae"] + (["baseline"] if cfg["baseline"]["enabled"] else [])
    # under torchrun every rank trains; only rank 0 evaluates, saves and draws
    is_main = int(os.environ.get("RANK", "0")) == 0
    for kind in kinds:
        run = train_one(kind, cfg, train, output_dir, max_seconds, resume, log)
        if not is_main:
            continue
        extra = {"train_seconds": run["progress"].elapsed_s, "steps": run["progress"].step}
        save_model(run["module"], kind, cfg, output_dir / kind / "model.pt", extra)
        metrics[f"{kind}_parameters"] = count_parameters(run["module"])
        metrics["rows"] += evaluate_snapshots(kind, cfg, run["task"], run["module"], images_final,
                                              images_marks, log)
        if kind == "baseline" and int(e["baseline_num_images"]) > images_final.shape[0]:
            wide = eval_images(int(e["baseline_num_images"]))
            res = importance_weighted_nll(unwrap(run["module"]), wide, k=int(e["k"]),
                                          batch_size=int(e["batch_size"]))
            row = {"model": kind, "mark_seconds": None, "train_seconds": round(run["progress"].elapsed_s, 1),
                   "step": run["progress"].step, **res.to_dict()}
            metrics["rows"].append(row)
            log(f"  {kind} final: IW-{res.k} NLL {res.nll:.2f} nats on {res.num_images} images")
        if kind == "nvae":
            metrics["pictures"] = write_pictures(unwrap(run["module"]), cfg, images_final,
                                                 output_dir / "pictures")
    if metrics_path and is_main:
        Path(metrics_path).parent.mkdir(parents=True, exist_ok=True)
        Path(metrics_path).write_text(json.dumps(metrics, indent=2))
    return metrics


def evaluate_model(model_path: Union[str, Path], data_dir: Union[str, Path], k: int = 1000,
                   num_images: int = 2000, batch_size: int = 2000, test_seed: int = TEST_SEED,
                   num_threads: int = 1) -> Dict[str, Any]:
    """IW-k NLL of a saved model on the first ``num_images`` test images (binarised once)."""
    if num_threads:
        torch.set_num_threads(num_threads)
    model = load_model(model_path)
    images = test_images(data_dir, num_images, test_seed)
    res = importance_weighted_nll(model, images, k=k, batch_size=batch_size)
    return {"model": str(model_path), **res.to_dict(), "binarisation": BINARISATION.format(seed=test_seed)}


def sample_model(model_path: Union[str, Path], out_dir: Union[str, Path],
                 temperatures: Sequence[float] = (0.6, 0.8, 1.0), num_samples: int = 64,
                 readjust_bn: bool = True, seed: int = 0) -> List[str]:
    """PNG grids of samples of a saved model at each temperature (see write_pictures)."""
    for t in temperatures:
        if not t > 0:
            raise NVAEError(f"temperature must be > 0, got {t!r}")
    model = load_model(model_path)
    torch.manual_seed(seed)
    paths = []
    for t in temperatures:
        res = sample_images(model, num_samples, float(t), readjust_bn=readjust_bn)
        tag = "bn-readjusted" if res.readjusted else ("bn-fallback" if res.fallback else "train-bn")
        paths.append(str(save_grid(res.images, Path(out_dir) / f"samples_t{t:g}_{tag}.png",
                                   title=f"samples, temperature {t:g}, {tag}")))
    return paths
