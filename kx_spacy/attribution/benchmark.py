"""The ``bench-attribution`` benchmark (also ``benchmarks/bench_attribution.py``).

(a) Time per example of kx_attributor against Captum's ``LayerIntegratedGradients`` on the
    same model (the same encoder and the same thinc textcat head, joined by
    ``ClassifierBridge``) and the same inputs, in the same run, with each method's
    completeness error measured on the same F(x) - F(x').
(b) The completeness error distribution against the number of steps (fixed Gauss-Legendre
    and trapezoid rules, and the adaptive rules at tolerance 1 %).
(c) Deletion curves on SST-2 dev: remove the top 10 %, 20 %, ... 50 % of a doc's tokens by
    each method's score and measure the drop of the predicted label's probability; AOPC is the
    mean drop. Methods: IG, gradient x input, plain gradient (L2 norm per token), random.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy

FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5)


def _percentiles(values: Sequence[float]) -> Dict[str, float]:
    arr = numpy.asarray(values, dtype="float64")
    return {
        "median": float(numpy.median(arr)),
        "p95": float(numpy.percentile(arr, 95)),
        "max": float(arr.max()),
        "share_le_1pct": float((arr <= 0.01).mean()),
    }


def _ig(nlp, docs, **kwargs):
    from ..backbone import Backbone
    from .classifier_bridge import ClassifierBridge
    from .integrated_gradients import integrated_gradients

    return integrated_gradients(Backbone.from_nlp(nlp), ClassifierBridge(nlp, "textcat"), docs, **kwargs)


def captum_attribute(nlp, doc, label_index: int, n_steps: int = 50):
    """Captum LayerIntegratedGradients on the pipeline's encoder + textcat head for one doc.

    RETURNS (Tuple[float, float]): (sum of attributions, Captum's convergence delta).
    """
    import torch
    from captum.attr import LayerIntegratedGradients

    from ..backbone import Backbone
    from .classifier_bridge import ClassifierBridge

    backbone = Backbone.from_nlp(nlp)
    bridge = ClassifierBridge(nlp, "textcat")
    wp = backbone.doc_wordpieces(doc)
    ids = torch.as_tensor(wp.input_ids, dtype=torch.long)
    mask = torch.as_tensor(wp.attention_mask, dtype=torch.long)
    moved = numpy.zeros(wp.input_ids.size, dtype=bool)
    for rows in wp.token_rows:
        moved[rows] = True
    base = ids.clone()
    base[torch.as_tensor(moved.reshape(ids.shape))] = backbone.special_ids.pad
    module = backbone.module

    def forward(input_ids, attention_mask):
        hidden = module(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        n = hidden.shape[0]
        return bridge.scores([doc] * n, [hidden[i : i + 1] for i in range(n)])

    lig = LayerIntegratedGradients(forward, module.get_input_embeddings())
    with backbone.eval_mode(), backbone._frozen_parameters():
        attr, delta = lig.attribute(
            inputs=ids, baselines=base, additional_forward_args=(mask,), target=label_index,
            n_steps=n_steps, return_convergence_delta=True,
        )
    return float(attr.sum()), float(delta.sum())


def _delete(doc, remove: set) -> str:
    return "".join(t.text_with_ws for t in doc if t.i not in remove).strip()


def _gradient_scores(nlp, docs, labels: List[int]):
    """Per doc: (gradient x input per token, gradient L2 norm per token) at the input."""
    import torch

    from ..backbone import Backbone
    from .classifier_bridge import ClassifierBridge
    from .integrated_gradients import make_pad_baseline, prepare_inputs

    backbone = Backbone.from_nlp(nlp)
    bridge = ClassifierBridge(nlp, "textcat")
    out = []
    for doc, k in zip(docs, labels):
        inp = prepare_inputs(backbone, doc, make_pad_baseline())
        x = inp.x.clone().requires_grad_(True)
        with torch.enable_grad():
            hidden = backbone.encode(inputs_embeds=x, attention_mask=inp.attention_mask, token_type_ids=inp.token_type_ids, grad=True)
            score = bridge.scores([doc], [hidden])[0, k]
            (g,) = torch.autograd.grad(score, x)
        gxi = (g * inp.x).sum(-1).reshape(-1).double().numpy()
        norm = (g**2).sum(-1).reshape(-1).double().numpy()
        out.append(
            (
                [float(gxi[r].sum()) for r in inp.token_rows],
                [float(math.sqrt(norm[r].sum())) for r in inp.token_rows],
            )
        )
    return out


def run_benchmark(
    model: Path,
    *,
    data_dir: Optional[str] = None,
    n_time: int = 64,
    n_errors: int = 200,
    n_deletion: int = 200,
    seed: int = 0,
    threads: Optional[int] = None,
    parts: str = "abc",
    captum_steps: Sequence[int] = (50, 32, 16),
) -> Dict:
    """Run (a), (b), (c) on SST-2 dev with a trained pipeline; prints tables, returns results.

    parts (str): which parts to run ("abc" = all).
    captum_steps (Sequence[int]): Captum step counts timed in (a); the first is the reference.
    """
    import spacy
    import torch

    from .workflow import read_sentiment

    if threads:
        torch.set_num_threads(threads)
    nlp = spacy.load(model)
    rows = read_sentiment("sst2", "dev", data_dir)
    n_all = max(n_time, n_errors, n_deletion)
    with nlp.select_pipes(enable=["transformer", "textcat"]):
        docs = list(nlp.pipe([t for t, _ in rows[:n_all]], batch_size=64))
    labels = list(nlp.get_pipe("textcat").labels)
    results: Dict = {
        "model": str(model), "device": str(torch.device("cpu")), "torch_threads": torch.get_num_threads(),
    }

    if "a" in parts:
        results["speed"] = _part_a(nlp, docs[:n_time], labels, captum_steps)
    if "b" in parts:
        results["completeness"] = _part_b(nlp, docs[:n_errors])
    if "c" in parts:
        results["deletion"] = _part_c(nlp, docs[:n_deletion], labels, seed)
    return results


def _part_a(nlp, tdocs, labels, captum_steps):
    """(a) speed vs Captum on the same docs."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    ours = _ig(nlp, tdocs)
    t_ours = (time.perf_counter() - t0) / len(tdocs)
    t0 = time.perf_counter()
    ours_single = [_ig(nlp, [d])[0] for d in tqdm(tdocs, desc="kx one doc at a time")]
    t_single = (time.perf_counter() - t0) / len(tdocs)
    recs = [next(iter(r.values())) for r in ours]
    recs_single = [next(iter(r.values())) for r in ours_single]
    rows_a = [
        ("kx_attributor (default: adaptive Simpson, batched)", t_ours, [r.error for r in recs], float(numpy.mean([r.steps for r in recs]))),
        ("kx_attributor (adaptive Simpson, one doc a call)", t_single, [r.error for r in recs_single], float(numpy.mean([r.steps for r in recs_single]))),
    ]
    for n_steps in captum_steps:
        errs = []
        t0 = time.perf_counter()
        for doc, rec in tqdm(list(zip(tdocs, recs)), desc=f"captum n_steps={n_steps}"):
            total, _ = captum_attribute(nlp, doc, labels.index(rec.label), n_steps=n_steps)
            errs.append(abs(total - rec.delta) / max(abs(rec.delta), 1e-12))
        t_captum = (time.perf_counter() - t0) / len(tdocs)
        name = f"Captum LayerIntegratedGradients n_steps={n_steps}" + (" (default)" if n_steps == 50 else "")
        rows_a.append((name, t_captum, errs, float(n_steps)))
    captum_default = rows_a[2][1]
    print("\n(a) time per example, same model and inputs, this run")
    print(f"{'method':<48}{'ms/ex':>9}{'x vs Captum':>12}{'steps':>7}{'err med':>9}{'err p95':>9}{'<=1%':>7}")
    speed = []
    for name, t, errs, steps in rows_a:
        p = _percentiles(errs)
        print(f"{name:<48}{t * 1000:>9.1f}{captum_default / t:>12.2f}{steps:>7.1f}{p['median']:>9.2e}{p['p95']:>9.2e}{p['share_le_1pct']:>7.1%}")
        speed.append({"method": name, "seconds_per_example": t, "speedup_vs_captum_default": captum_default / t, "mean_steps": steps, **p})

    return speed


def _part_b(nlp, edocs):
    """(b) completeness error vs steps."""
    from tqdm import tqdm

    from .integrated_gradients import AdaptiveSimpson, AdaptiveTrapezoid, GaussLegendre, RiemannTrapezoid

    table = []
    fixed = [(quad, n) for quad, ns in ((GaussLegendre, (2, 4, 8, 16)), (RiemannTrapezoid, (4, 8, 16))) for n in ns]
    for quad, n in tqdm(fixed, desc="fixed rules"):
        rule = quad(min_steps=n)
        res = _ig(nlp, edocs, quadrature=rule, tolerance=0.0, max_steps=rule.evaluations(n))
        errs = [next(iter(r.values())).error for r in res]
        table.append({"rule": rule.name, "steps": rule.evaluations(n), "adaptive": False, **_percentiles(errs)})
    for label, rule in (
        ("gauss_legendre adaptive 4,8,16,32", GaussLegendre(4)),
        ("adaptive_trapezoid (from 2)", AdaptiveTrapezoid(2)),
        ("adaptive_simpson (default)", AdaptiveSimpson()),
    ):
        arecs = [next(iter(r.values())) for r in _ig(nlp, edocs, quadrature=rule)]
        table.append({"rule": label + ", tol 1%", "steps": float(numpy.mean([r.steps for r in arecs])), "adaptive": True, **_percentiles([r.error for r in arecs])})
    print(f"\n(b) completeness error vs steps, {len(edocs)} SST-2 dev examples")
    print(f"{'rule':<42}{'steps':>7}{'median':>10}{'p95':>10}{'max':>10}{'<=1%':>7}")
    for row in table:
        print(f"{row['rule']:<42}{row['steps']:>7.1f}{row['median']:>10.2e}{row['p95']:>10.2e}{row['max']:>10.2e}{row['share_le_1pct']:>7.1%}")
    return table


def _part_c(nlp, ddocs, labels, seed):
    """(c) deletion curves."""
    ig = _ig(nlp, ddocs)
    ig_recs = [next(iter(r.values())) for r in ig]
    label_idx = [labels.index(r.label) for r in ig_recs]
    grads = _gradient_scores(nlp, ddocs, label_idx)
    rng = numpy.random.default_rng(seed)
    methods = {
        "integrated gradients": [r.scores for r in ig_recs],
        "gradient x input": [g[0] for g in grads],
        "plain gradient (norm)": [g[1] for g in grads],
        "random": [list(rng.random(len(d))) for d in ddocs],
    }
    base_p = [r.f_x for r in ig_recs]
    curves = {}
    for name, scores in methods.items():
        texts, owners = [], []
        for i, (doc, s) in enumerate(zip(ddocs, scores)):
            order = list(numpy.argsort(-numpy.asarray(s), kind="stable"))
            for f in FRACTIONS:
                k = max(1, math.ceil(f * len(doc)))
                texts.append(_delete(doc, set(int(j) for j in order[:k])))
                owners.append(i)
        with nlp.select_pipes(enable=["transformer", "textcat"]):
            probs = [d.cats.get(labels[label_idx[o]], 0.0) if len(d) else 0.5 for d, o in zip(nlp.pipe(texts, batch_size=64), owners)]
        drops = numpy.asarray([base_p[o] - p for o, p in zip(owners, probs)]).reshape(len(ddocs), len(FRACTIONS))
        curves[name] = {"drop_by_fraction": [float(v) for v in drops.mean(0)], "aopc": float(drops.mean())}
    print(f"\n(c) deletion curves, {len(ddocs)} SST-2 dev examples: mean drop of the predicted label's probability")
    print(f"{'method':<24}" + "".join(f"{f'{int(f * 100)}%':>8}" for f in FRACTIONS) + f"{'AOPC':>8}")
    for name, c in sorted(curves.items(), key=lambda kv: -kv[1]["aopc"]):
        print(f"{name:<24}" + "".join(f"{v:>8.4f}" for v in c["drop_by_fraction"]) + f"{c['aopc']:>8.4f}")
    return curves
