"""Speed and memory of kx linear attention against torch SDPA (and fla when installed).

``run_attention_benchmark`` times forward and forward+backward of the attention core on
(B, H, T, D) tensors for a range of sequence lengths, measures peak memory, and times
step-by-step decoding (recurrent linear attention vs a KV-cache softmax decoder with the same
parameters). Everything is measured in one run, the reference beside kx.

Peak memory. On CUDA: ``torch.cuda.max_memory_allocated`` around one forward+backward. On the
CPU, torch keeps no allocator statistics, so every (method, T) point runs in a fresh Python
subprocess which reports ``ru_maxrss`` (the process's peak resident set) after one
forward+backward minus its resident set just before it (inputs already allocated): the extra
memory that the computation needed, in MiB.
"""
from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

from .linear_attention import (
    KVCache,
    LinearAttention,
    SoftmaxAttention,
    fla_available,
    linear_attention,
)

CPU_LENGTHS = [128, 256, 512, 1024, 2048, 4096, 8192]
GPU_LENGTHS = [512, 1024, 2048, 4096, 8192, 16384, 32768, 65536]
DECODE_POSITIONS = [16, 512, 1024, 2048, 4096, 8192]


def _methods(device: str, chunk_size: int) -> Dict[str, Callable]:
    def kx(causal: bool, algorithm: str = "auto"):
        return lambda q, k, v: linear_attention(q, k, v, causal=causal, chunk_size=chunk_size,
                                                algorithm=algorithm)

    methods = {
        "kx_causal": kx(True),                      # "auto": the fused form on the CPU
        "kx_causal_cumsum": kx(True, "cumsum"),
        "kx_causal_loop": kx(True, "loop"),
        "kx_noncausal": kx(False),
        "sdpa_causal": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        "sdpa_noncausal": lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
    }
    if device == "cuda":
        del methods["kx_causal_cumsum"]         # "auto" is the cumsum form there
    if device == "cuda" and fla_available():
        from .linear_attention import _fla_causal

        def fla(q, k, v):
            return _fla_causal(F.elu(q) + 1, F.elu(k) + 1, v, True)

        methods["fla_causal"] = fla
    return methods


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time(fn: Callable[[], None], device: str, budget_s: float, max_repeats: int) -> float:
    """Median wall time in ms; a warm-up call unless one call alone exceeds the budget."""
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    first = time.perf_counter() - t0
    if first > budget_s:
        return first * 1000.0
    times: List[float] = []
    spent = 0.0
    while len(times) < max_repeats and (spent < budget_s or len(times) < 1):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        dt = time.perf_counter() - t0
        times.append(dt)
        spent += dt
    return statistics.median(times) * 1000.0


def _inputs(b, h, t, d, device, dtype, grad, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    return [torch.randn(b, h, t, d, generator=g).to(device=device, dtype=dtype).requires_grad_(grad)
            for _ in range(3)]


def _fwd_bwd(fn, q, k, v):
    out = fn(q, k, v)
    out.float().sum().backward()
    q.grad = k.grad = v.grad = None


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0          # kB
    raise OSError(f"{field} not in /proc/self/status")


def measure_cpu_peak_memory_child(method: str, t: int, b: int, h: int, d: int, chunk_size: int) -> float:
    """In a fresh process: extra peak RSS (MiB) of one forward+backward of ``method``.

    The high-water mark (VmHWM) is reset to the current RSS just before the computation by
    writing 5 to /proc/self/clear_refs (Linux >= 4.0), so the figure excludes the imports and
    the inputs. (``ru_maxrss`` is not used: Linux carries the parent's peak across fork+exec.)
    """
    fn = _methods("cpu", chunk_size)[method]
    q, k, v = _inputs(b, h, t, d, "cpu", torch.float32, True)
    fn(q[:, :, :8].detach(), k[:, :, :8].detach(), v[:, :, :8].detach())   # load kernels first
    before = _status_mib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    _fwd_bwd(fn, q, k, v)
    return max(_status_mib("VmHWM") - before, 0.0)


def _cpu_peak_memory(method, t, b, h, d, chunk_size, threads) -> Optional[float]:
    code = (
        "import sys, torch; torch.set_num_threads(%d); "
        "from kx_spacy.models.attention_benchmark import measure_cpu_peak_memory_child as m; "
        "print(m(%r, %d, %d, %d, %d, %d))" % (threads, method, t, b, h, d, chunk_size)
    )
    try:
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900,
                             check=True)
        return float(res.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError):
        return None


def _gpu_peak_memory(fn, q, k, v) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    _fwd_bwd(fn, q, k, v)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _decode_latency(positions, d_model, n_heads, b, device, dtype, steps, budget_s) -> Dict[str, List]:
    """Per-token latency (ms) of one attention layer's step at each position."""
    torch.manual_seed(0)
    lin = LinearAttention(d_model, n_heads, causal=True).to(device=device, dtype=dtype).eval()
    soft = SoftmaxAttention(d_model, n_heads, causal=True).to(device=device, dtype=dtype).eval()
    soft.load_state_dict(lin.state_dict())
    hd = d_model // n_heads
    out: Dict[str, List] = {"position": list(positions), "linear_recurrent_ms": [], "softmax_kv_cache_ms": []}
    x = torch.randn(steps, b, d_model, device=device, dtype=dtype)
    with torch.inference_mode():
        for p in positions:
            # timing does not depend on the cached values: fill the state / cache at position p
            state = lin.init_state(b)
            cap = p + steps
            cache = KVCache(
                torch.randn(b, n_heads, cap, hd, device=device, dtype=dtype),
                torch.randn(b, n_heads, cap, hd, device=device, dtype=dtype),
                torch.ones(b, cap, dtype=torch.bool, device=device),
                p,
            )

            def run_lin():
                s = state
                for i in range(steps):
                    _, s = lin.step(x[i], s)

            def run_soft():
                c = KVCache(cache.k, cache.v, cache.valid, p)
                for i in range(steps):
                    _, c = soft.step(x[i], c)

            out["linear_recurrent_ms"].append(_time(run_lin, device, budget_s, 5) / steps)
            out["softmax_kv_cache_ms"].append(_time(run_soft, device, budget_s, 5) / steps)
    return out


def interleaved_ratio(t: int = 8192, repeats: int = 3, *, batch: int = 2, heads: int = 16, head_dim: int = 64,
                      chunk_size: int = 64, threads: int = 1, progress: Optional[Callable[[str], None]] = None) -> Dict:
    """kx causal (the CPU default, fused) against SDPA causal at one length, timed in turns in one
    process (kx fwd, kx fwd+bwd, SDPA fwd, SDPA fwd+bwd; ``repeats`` rounds after a warm-up), in
    CPU seconds of this process (fair on a loaded machine with one thread) and wall seconds.

    RETURNS (Dict): medians in ms per method and clock, the SDPA / kx ratios and the load averages.
    """
    torch.set_num_threads(threads)
    q, k, v = _inputs(batch, heads, t, head_dim, "cpu", torch.float32, True)
    fns = _methods("cpu", chunk_size)
    kx, sdpa = fns["kx_causal"], fns["sdpa_causal"]

    def fwd(fn):
        with torch.no_grad():
            fn(q, k, v)

    calls = {"kx_forward": lambda: fwd(kx), "kx_forward_backward": lambda: _fwd_bwd(kx, q, k, v),
             "sdpa_forward": lambda: fwd(sdpa), "sdpa_forward_backward": lambda: _fwd_bwd(sdpa, q, k, v)}
    calls["kx_forward"]()
    calls["kx_forward_backward"]()
    load_start = list(os.getloadavg())
    times: Dict[str, Dict[str, List[float]]] = {name: {"cpu": [], "wall": []} for name in calls}
    for i in range(repeats):
        for name, call in calls.items():
            c0, w0 = time.process_time(), time.perf_counter()
            call()
            times[name]["cpu"].append((time.process_time() - c0) * 1e3)
            times[name]["wall"].append((time.perf_counter() - w0) * 1e3)
        if progress is not None:
            progress(f"round {i + 1}/{repeats}: " + "  ".join(
                f"{n} {v['cpu'][-1]:.0f} / {v['wall'][-1]:.0f} ms" for n, v in times.items()))
    med = {n: {clock: statistics.median(xs) for clock, xs in v.items()} for n, v in times.items()}
    ratios = {f"{mode}_{clock}": med[f"sdpa_{mode}"][clock] / med[f"kx_{mode}"][clock]
              for mode in ("forward", "forward_backward") for clock in ("cpu", "wall")}
    return {"T": t, "batch": batch, "heads": heads, "head_dim": head_dim, "chunk_size": chunk_size,
            "threads": threads, "repeats": repeats, "median_ms": med, "sdpa_over_kx": ratios, "times_ms": times,
            "loadavg_start": load_start, "loadavg_end": list(os.getloadavg())}


def _fit_exponent(ts: List[int], ys: List[Optional[float]]) -> Optional[float]:
    pts = [(math.log(t), math.log(y)) for t, y in zip(ts, ys) if y is not None and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    den = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / den if den else None


def summarise(result: Dict) -> Dict:
    """Crossover lengths, speed-ups at the longest length, memory exponents, decoding figures."""
    ts = result["lengths"]
    rows = result["rows"]
    summ: Dict = {}

    def series(method, key):
        by_t = {r["T"]: r[key] for r in rows if r["method"] == method}
        return [by_t.get(t) for t in ts]

    for mode in ("forward_ms", "forward_backward_ms"):
        kx, ref = series("kx_causal", mode), series("sdpa_causal", mode)
        cross = next((t for t, a, b_ in zip(ts, kx, ref) if a is not None and b_ is not None and a < b_), None)
        summ[f"crossover_T_causal_{mode}"] = cross
        for tag, (a_, b_) in (("causal", (kx, ref)), ("noncausal", (series("kx_noncausal", mode),
                                                                    series("sdpa_noncausal", mode)))):
            both = [(t, x, y) for t, x, y in zip(ts, a_, b_) if x and y]
            if both:
                t_last, x, y = both[-1]
                summ[f"speedup_{tag}_{mode}_at_T{t_last}"] = y / x
        for other in ("kx_causal_cumsum", "kx_causal_loop"):
            alt = series(other, mode)
            if any(alt) and any(kx):
                summ[f"{other}_over_kx_causal_{mode}"] = [x / c if x and c else None for x, c in zip(alt, kx)]
    for method in sorted({r["method"] for r in rows}):
        summ[f"memory_exponent_{method}"] = _fit_exponent(ts, series(method, "peak_memory_mib"))
        summ[f"time_exponent_fwd_bwd_{method}"] = _fit_exponent(
            [t for t in ts if t >= 1024], [y for t, y in zip(ts, series(method, "forward_backward_ms")) if t >= 1024]
        )
    dec = result.get("decode")
    if dec and dec["position"]:
        lin, soft = dec["linear_recurrent_ms"], dec["softmax_kv_cache_ms"]
        summ["decode_speedup_at_last_position"] = soft[-1] / lin[-1]
        summ["decode_linear_last_over_first"] = lin[-1] / lin[0]
        summ["decode_softmax_last_over_first"] = soft[-1] / soft[0]
    return summ


def run_attention_benchmark(
    device: str = "cpu",
    lengths: Optional[List[int]] = None,
    *,
    batch: int = 2,
    heads: int = 16,
    head_dim: int = 64,
    dtype: Optional[str] = None,
    chunk_size: int = 64,
    threads: int = 1,
    memory: bool = True,
    decode_positions: Optional[List[int]] = None,
    decode_steps: int = 16,
    budget_s: float = 1.0,
    max_repeats: int = 5,
    methods: Optional[List[str]] = None,
    method_max_t: Optional[Dict[str, int]] = None,
    memory_max_t: int = 0,
    progress: Optional[Callable[[str], None]] = None,
    checkpoint: Optional[Callable[[Dict], None]] = None,
) -> Dict:
    """Time and measure every method at every length; decoding latency by position.

    device (str): "cpu" or "cuda".
    lengths (Optional[List[int]]): sequence lengths (default 128…8192 on CPU, 512…65536 on GPU).
    batch, heads, head_dim (int): the attention shape (B, H, D).
    dtype (Optional[str]): "float32" / "bfloat16" / "float16" (default fp32 on CPU, bf16 on GPU).
    chunk_size (int): the causal chunk length.
    threads (int): torch CPU threads.
    memory (bool): measure peak memory (CPU: one subprocess per point).
    decode_positions (Optional[List[int]]): positions for the decoding latency (empty: skip).
    decode_steps (int): steps timed at each position.
    budget_s (float): time spent per timing (median of up to ``max_repeats`` calls).
    methods (Optional[List[str]]): a subset of the methods (default all).
    method_max_t (Optional[Dict[str, int]]): the longest T timed for a method (e.g. the
        quadratic references on a slow machine); longer points are left out.
    memory_max_t (int): measure memory only up to this T (0: every T).
    progress (Optional[Callable[[str], None]]): called with a line per point.
    checkpoint (Optional[Callable[[Dict], None]]): called with the partial result after every
        point (so that an interrupted run keeps what it measured).
    RETURNS (Dict): {"meta", "lengths", "rows", "decode", "summary"}.
    """
    if device == "cuda" and not torch.cuda.is_available():
        from ..errors import AttentionKernelError

        raise AttentionKernelError("--device cuda asked for, but torch sees no CUDA device")
    torch.set_num_threads(threads)
    lengths = lengths or (GPU_LENGTHS if device == "cuda" else CPU_LENGTHS)
    tdtype = getattr(torch, dtype) if dtype else (torch.bfloat16 if device == "cuda" else torch.float32)
    all_methods = _methods(device, chunk_size)
    names = [m for m in all_methods if methods is None or m in methods]
    rows = []
    say = progress or (lambda s: None)
    limits = method_max_t or {}
    meta = _meta(device, tdtype, batch, heads, head_dim, chunk_size, threads, limits, memory_max_t)
    for t in lengths:
        for name in names:
            if name in limits and t > limits[name]:
                continue
            fn = all_methods[name]
            q, k, v = _inputs(batch, heads, t, head_dim, device, tdtype, False)
            with torch.no_grad():
                fwd = _time(lambda: fn(q, k, v), device, budget_s, max_repeats)
            qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))
            fb = _time(lambda: _fwd_bwd(fn, qg, kg, vg), device, budget_s, max_repeats)
            mem = None
            if memory and (not memory_max_t or t <= memory_max_t):
                if device == "cuda":
                    mem = _gpu_peak_memory(fn, qg, kg, vg)
                else:
                    mem = _cpu_peak_memory(name, t, batch, heads, head_dim, chunk_size, threads)
            del q, k, v, qg, kg, vg
            rows.append({"method": name, "T": t, "forward_ms": fwd, "forward_backward_ms": fb,
                         "peak_memory_mib": mem})
            say(f"T={t:>6} {name:<15} fwd {fwd:10.2f} ms  fwd+bwd {fb:10.2f} ms  mem "
                + ("-" if mem is None else f"{mem:9.1f} MiB"))
            if checkpoint is not None:
                checkpoint({"meta": meta, "lengths": list(lengths), "rows": rows, "decode": None, "summary": {}})
    decode = None
    positions = DECODE_POSITIONS if decode_positions is None else decode_positions
    if positions:
        decode = _decode_latency(positions, heads * head_dim, heads, batch, device, tdtype, decode_steps, budget_s)
        for p, a, b_ in zip(decode["position"], decode["linear_recurrent_ms"], decode["softmax_kv_cache_ms"]):
            say(f"decode pos={p:>6} linear {a:8.3f} ms/token  softmax+KV {b_:8.3f} ms/token")
    meta["loadavg_end"] = os.getloadavg()
    result = {
        "meta": meta,
        "lengths": list(lengths),
        "rows": rows,
        "decode": decode,
    }
    result["summary"] = summarise(result)
    return result


def _meta(device, tdtype, batch, heads, head_dim, chunk_size, threads, limits, memory_max_t) -> Dict:
    return {
        "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "dtype": str(tdtype).replace("torch.", ""),
        "batch": batch, "heads": heads, "head_dim": head_dim, "chunk_size": chunk_size,
        "threads": threads, "torch": torch.__version__, "cpu_count": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "method_max_t": dict(limits), "memory_max_t": memory_max_t,
        "memory_method": ("torch.cuda.max_memory_allocated" if device == "cuda"
                          else "subprocess per point: VmHWM (reset via clear_refs) - VmRSS before one forward+backward"),
        "fla": fla_available(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def format_table(result: Dict) -> str:
    """A plain-text table of the rows, then the decoding figures and the summary."""
    lines = [f"{'T':>6}  {'method':<15} {'fwd ms':>10} {'fwd+bwd ms':>11} {'peak MiB':>9}"]
    for r in result["rows"]:
        mem = "-" if r["peak_memory_mib"] is None else f"{r['peak_memory_mib']:.1f}"
        lines.append(f"{r['T']:>6}  {r['method']:<15} {r['forward_ms']:>10.2f} {r['forward_backward_ms']:>11.2f} {mem:>9}")
    dec = result.get("decode")
    if dec:
        lines.append("")
        lines.append(f"{'position':>8}  {'linear ms/token':>15} {'softmax+KV ms/token':>19}")
        for p, a, b in zip(dec["position"], dec["linear_recurrent_ms"], dec["softmax_kv_cache_ms"]):
            lines.append(f"{p:>8}  {a:>15.3f} {b:>19.3f}")
    lines.append("")
    for key, value in result["summary"].items():
        if isinstance(value, list):
            value = "[" + ", ".join("-" if x is None else f"{x:.2f}" for x in value) + "]"
        elif isinstance(value, float):
            value = f"{value:.2f}"
        lines.append(f"{key}: {value}")
    return "\n".join(lines)


def plot_benchmark(result: Dict, path: Path) -> None:
    """Four panels: forward, forward+backward, peak memory vs T (log-log), decoding latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    meta = result["meta"]
    methods = list(dict.fromkeys(r["method"] for r in result["rows"]))
    styles = {"kx_causal": "C0-o", "kx_causal_cumsum": "C0--+", "kx_causal_loop": "C0:x", "kx_noncausal": "C2-s",
              "sdpa_causal": "C3-o", "sdpa_noncausal": "C1-s", "fla_causal": "C4-^"}
    for ax, key, title in zip(axes.flat[:3], ("forward_ms", "forward_backward_ms", "peak_memory_mib"),
                              ("forward (ms)", "forward + backward (ms)", "peak extra memory (MiB)")):
        for m in methods:
            pts = [(r["T"], r[key]) for r in result["rows"] if r["method"] == m and r[key] is not None]
            if pts:
                ax.plot(*zip(*pts), styles.get(m, "-"), label=m)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    ax = axes.flat[3]
    dec = result.get("decode")
    if dec:
        ax.plot(dec["position"], dec["linear_recurrent_ms"], "C0-o", label="linear, recurrent state")
        ax.plot(dec["position"], dec["softmax_kv_cache_ms"], "C3-o", label="softmax, KV cache")
        ax.set_xlabel("position")
        ax.set_ylabel("ms / token")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
        ax.grid(True, alpha=0.3)
    ax.set_title(f"decoding one attention layer (B={meta['batch']}, d={meta['heads'] * meta['head_dim']})")
    fig.suptitle(f"attention on {meta['device']} ({meta['dtype']}, B={meta['batch']}, H={meta['heads']}, "
                 f"D={meta['head_dim']}, chunk {meta['chunk_size']}, {meta['threads']} threads, torch {meta['torch']})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_benchmark(result: Dict, output_dir: Path, stem: str) -> Dict[str, Path]:
    """Write <stem>.json, <stem>.txt (the table) and <stem>.png into ``output_dir``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": output_dir / f"{stem}.json", "table": output_dir / f"{stem}.txt",
             "plot": output_dir / f"{stem}.png"}
    paths["json"].write_text(json.dumps(result, indent=2), encoding="utf8")
    paths["table"].write_text(format_table(result) + "\n", encoding="utf8")
    plot_benchmark(result, paths["plot"])
    return paths
