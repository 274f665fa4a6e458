"""Gradient clipping at a large learning rate (Zhang et al., ICLR 2020), on the character LM.

Every mode trains the same model from the same seed on the same batches for the same step
budget; only the clipping differs: "none", "per_array" (each parameter tensor clipped to its
own norm, as thinc's ``grad_clip``), "global_norm" and "smooth" (γ/(‖g‖+γ), the engine's).
The result: training loss against step (PNG), validation loss at each evaluation, and the first
evaluated step at which the validation loss reaches ``target_loss``.
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

MODES = ("none", "per_array", "global_norm", "smooth")


def run_clipping_bench(cfg: Dict, output_dir: Union[str, Path], *, modes: Sequence[str] = MODES,
                       target_loss: float = 3.2) -> Dict:
    """Train once per clipping mode and compare.

    cfg (Dict): a character-LM config (``load_lm_config``); training.clip_mode is replaced.
    output_dir (Path): one engine folder per mode below it.
    modes (Sequence[str]): the clipping modes.
    target_loss (float): the validation loss whose first reaching step is reported.
    RETURNS (Dict): per mode: steps_to_target, final / best validation loss, bad steps, curves.
    """
    from ..training import NonFiniteLossError, read_metrics
    from .char_lm import train_char_lm

    output_dir = Path(output_dir)
    runs: Dict[str, Dict] = {}
    for mode in modes:
        run_dir = output_dir / mode
        status = "ok"
        summary: Dict = {}
        try:
            summary = train_char_lm(copy.deepcopy(cfg), run_dir, clip_mode=mode)
        except NonFiniteLossError as err:
            status = f"diverged: {err}"
        steps = read_metrics(run_dir, "step") if (run_dir / "metrics.jsonl").exists() else []
        evals = read_metrics(run_dir, "eval") if (run_dir / "metrics.jsonl").exists() else []
        runs[mode] = {
            "status": status,
            "steps_to_target": None,
            "final_val_loss": evals[-1]["val_loss"] if evals else None,
            "best_val_loss": min((e["val_loss"] for e in evals), default=None),
            "bad_steps": summary.get("bad_steps"),
            "steps": summary.get("steps", len(steps)),
            "elapsed_s": summary.get("elapsed_s"),
            "train_curve": [[r["step"], r["loss"]] for r in steps],
            "grad_norm_curve": [[r["step"], r.get("grad_norm")] for r in steps],
            "val_curve": [[e["step"], e["val_loss"]] for e in evals],
        }
    t = cfg["training"]
    result = {"target_loss": target_loss, "lr": t["lr"], "clip_threshold": t["clip_threshold"],
              "optimizer": t.get("optimizer", "adamw"), "max_steps": t["max_steps"], "seed": t["seed"],
              "model": cfg["model"], "runs": runs}
    return steps_to_target(result, target_loss)


def steps_to_target(result: Dict, target_loss: float) -> Dict:
    """Recompute every run's first evaluated step with validation loss ≤ ``target_loss``."""
    result = dict(result, target_loss=target_loss)
    for r in result["runs"].values():
        r["steps_to_target"] = next((s for s, l in r["val_curve"] if l is not None and l <= target_loss), None)
    return result


def format_clipping_table(result: Dict) -> str:
    lines = [f"{result.get('optimizer', 'adamw')} lr {result['lr']}, threshold {result['clip_threshold']}, budget {result['max_steps']} steps, "
             f"seed {result['seed']}; target validation loss {result['target_loss']}",
             f"{'mode':<12} {'steps to target':>15} {'final val':>10} {'best val':>9} {'bad steps':>9}  status"]
    for mode, r in result["runs"].items():
        def f(x, fmt):
            return "-" if x is None else format(x, fmt)
        lines.append(f"{mode:<12} {f(r['steps_to_target'], 'd'):>15} {f(r['final_val_loss'], '.4f'):>10} "
                     f"{f(r['best_val_loss'], '.4f'):>9} {f(r['bad_steps'], 'd'):>9}  {r['status'][:60]}")
    return "\n".join(lines)


def plot_clipping(result: Dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    for i, (mode, r) in enumerate(result["runs"].items()):
        c = f"C{i}"
        if r["train_curve"]:
            s, l = zip(*r["train_curve"])
            ax1.plot(s, l, c, alpha=0.35, lw=0.8)
            k = 10
            sm = [sum(l[max(0, j - k + 1): j + 1]) / len(l[max(0, j - k + 1): j + 1]) for j in range(len(l))]
            ax1.plot(s, sm, c, lw=1.6, label=f"{mode} (train, 10-step mean)")
        if r["val_curve"]:
            s, l = zip(*r["val_curve"])
            ax2.plot(s, l, c + "-o", ms=3, label=mode)
    finite = [l for r in result["runs"].values() for _, l in r["train_curve"] + r["val_curve"]
              if l is not None and math.isfinite(l)]
    low = min(finite, default=0.0)
    for ax in (ax1, ax2):
        ax.axhline(result["target_loss"], color="grey", ls="--", lw=0.8)
        ax.set_xlabel("optimizer step")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_ylim(max(0.0, low - 0.2), 6.0)     # diverging runs leave the top of the panel
    ax1.set_ylabel("training loss (nats/char)")
    ax2.set_ylabel("validation loss (nats/char)")
    fig.suptitle(f"clipping, {result.get('optimizer', 'adamw')} at lr {result['lr']} (threshold {result['clip_threshold']}, seed {result['seed']}): "
                 f"char LM, {result['model']['attention']} attention")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_clipping(result: Dict, metrics_dir: Path, stem: str = "bench_clipping") -> List[Path]:
    metrics_dir.mkdir(parents=True, exist_ok=True)
    paths = [metrics_dir / f"{stem}.json", metrics_dir / f"{stem}.txt", metrics_dir / f"{stem}.png"]
    paths[0].write_text(json.dumps(result, indent=2), encoding="utf8")
    paths[1].write_text(format_clipping_table(result) + "\n", encoding="utf8")
    plot_clipping(result, paths[2])
    return paths
