"""Integrated gradients (Sundararajan et al. 2017) in the encoder's word-embedding space.

For a doc with word-embedding input x (position and token-type embeddings are added by the
encoder and stay as they are), a baseline x' and a label score F, the attribution of input
row i is

    A_i = (x_i - x'_i) . integral_0^1 dF/dx_i (x' + a (x - x')) da

and completeness says sum_i A_i = F(x) - F(x'). The integral is computed with a registered
quadrature rule (Gauss-Legendre, trapezoid, or the adaptive trapezoid / Simpson rules that
refine only where the local completeness error is large), refined per doc until the
completeness error

    |sum_i A_i - (F(x) - F(x'))| / |F(x) - F(x')|

is at most ``tolerance`` or the step cap is reached. Where |F(x) - F(x')| is below
``ZERO_DELTA`` the error is reported as an absolute one (``error_kind == "absolute"``): no
division by zero. Every doc's error is reported, converged or not.

Only content pieces that spaCy tokens align to are moved along the path; special tokens and
padding keep their embeddings, so their attribution is exactly zero and the token-level sums
(a piece shared by k tokens gives each 1/k) keep completeness. All path points of all docs
that are still refining go through the encoder together, in batches of similar lengths;
gradients come from ``torch.autograd.grad`` only.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple

import numpy
from spacy.util import registry

from ..backbone import is_out_of_memory
from ..errors import AttributionConfigError, KxError, UnknownLabelError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from spacy.tokens import Doc

    from ..backbone import Backbone
    from .classifier_bridge import ClassifierBridge

ZERO_DELTA = 1e-7

# A baseline maps (backbone, input_ids[S, L], moved[S, L] bool) to embeddings[S, L, H];
# rows where ``moved`` is False are replaced by the input's own embeddings afterwards.
BaselineFn = Callable[["Backbone", "torch.Tensor", "torch.Tensor"], "torch.Tensor"]


# ------------------------------------------------------------------- quadrature rules
class Quadrature:
    """A family of quadrature rules on [0, 1], from coarse to fine.

    name (str): shown in results.
    nested (bool): whether every level's nodes contain the previous level's (then the
        gradients already computed are reused).
    """

    name = "quadrature"
    nested = False

    def __init__(self, min_steps: int = 4, growth: int = 2):
        if int(min_steps) < 1 or int(growth) < 2:
            raise AttributionConfigError(
                f"{type(self).__name__}: min_steps must be >= 1 and growth >= 2 "
                f"(got {min_steps}, {growth})."
            )
        self.min_steps = int(min_steps)
        self.growth = int(growth)

    def rule(self, n: int) -> Tuple[numpy.ndarray, numpy.ndarray]:
        """Nodes and weights of the n-step rule on [0, 1]."""
        raise NotImplementedError

    def evaluations(self, n: int) -> int:
        """Gradient evaluations of the n-step rule."""
        return n

    def _split_fraction(self, split: float) -> float:
        """The adaptive rules' ``split`` setting, checked to lie in (0, 1]."""
        if not 0.0 < float(split) <= 1.0:
            raise AttributionConfigError(f"{type(self).__name__}: split must be in (0, 1], got {split}.")
        return float(split)

    def _check_budget(self, max_steps: int) -> None:
        if self.evaluations(self.min_steps) > max_steps:
            raise AttributionConfigError(
                f"max_steps ({max_steps}) is below the coarsest {self.name} rule "
                f"({self.evaluations(self.min_steps)} evaluations)."
            )

    # The refinement protocol the IG loop drives (one state per doc and label).
    def start(self, max_steps: int) -> Dict:
        """A fresh refinement state using at most ``max_steps`` gradient evaluations."""
        return {"levels": self.levels(max_steps), "level": 0}

    def current(self, state: Dict) -> Tuple[numpy.ndarray, numpy.ndarray]:
        """Nodes and weights of the state's current rule."""
        return state["levels"][state["level"]]

    def refine(self, state: Dict, derivative: Dict[float, float], score: Dict[float, float]) -> bool:
        """Move to a finer rule; False when the step cap leaves none.

        derivative / score (Dict[float, float]): dF/dalpha and F at every node evaluated.
        """
        if state["level"] + 1 >= len(state["levels"]):
            return False
        state["level"] += 1
        return True

    def levels(self, max_steps: int) -> List[Tuple[numpy.ndarray, numpy.ndarray]]:
        """The successive rules, the finest using at most ``max_steps`` evaluations."""
        self._check_budget(max_steps)
        out = []
        n = self.min_steps
        while self.evaluations(n) <= max_steps:
            out.append(self.rule(n))
            n *= self.growth
        return out


class GaussLegendre(Quadrature):
    """Gauss-Legendre rules with min_steps, min_steps*growth, ... nodes (not nested)."""

    name = "gauss_legendre"

    def rule(self, n: int) -> Tuple[numpy.ndarray, numpy.ndarray]:
        x, w = numpy.polynomial.legendre.leggauss(n)
        return (x + 1.0) / 2.0, w / 2.0


class RiemannTrapezoid(Quadrature):
    """Composite trapezoid rules with min_steps, min_steps*growth, ... intervals.

    Nested: refining reuses every gradient already computed (n intervals take n + 1
    evaluations, endpoints included).
    """

    name = "riemann_trapezoid"
    nested = True

    def rule(self, n: int) -> Tuple[numpy.ndarray, numpy.ndarray]:
        alphas = numpy.linspace(0.0, 1.0, n + 1)
        weights = numpy.full(n + 1, 1.0 / n)
        weights[0] = weights[-1] = 0.5 / n
        return alphas, weights

    def evaluations(self, n: int) -> int:
        return n + 1


class AdaptiveTrapezoid(Quadrature):
    """Trapezoid rule on a non-uniform grid, refined where the path integrand is hard.

    Every gradient evaluation at a node alpha also gives the score F(alpha), so on each
    interval [a, b] the trapezoid estimate of the integral of dF/dalpha can be compared
    with the exact F(b) - F(a): the local completeness error is known. Each refinement
    bisects the intervals whose local error is at least ``split`` times the largest one;
    every gradient computed is kept. Suits saturated classifiers whose score changes
    sharply on a short stretch of the path.

    min_steps (int): intervals of the first, uniform grid.
    split (float): intervals with local error >= split * max are bisected.
    """

    name = "adaptive_trapezoid"
    nested = True

    def __init__(self, min_steps: int = 2, split: float = 0.5):
        super().__init__(min_steps, 2)
        self.split = self._split_fraction(split)

    def evaluations(self, n: int) -> int:
        return n + 1

    def rule(self, n: int) -> Tuple[numpy.ndarray, numpy.ndarray]:
        return self._weights(numpy.linspace(0.0, 1.0, n + 1))

    @staticmethod
    def _weights(alphas: numpy.ndarray) -> Tuple[numpy.ndarray, numpy.ndarray]:
        widths = numpy.diff(alphas)
        weights = numpy.zeros(len(alphas))
        weights[:-1] += widths / 2
        weights[1:] += widths / 2
        return alphas, weights

    def start(self, max_steps: int) -> Dict:
        self._check_budget(max_steps)
        return {"alphas": numpy.linspace(0.0, 1.0, self.min_steps + 1), "budget": int(max_steps)}

    def current(self, state: Dict) -> Tuple[numpy.ndarray, numpy.ndarray]:
        return self._weights(state["alphas"])

    def refine(self, state: Dict, derivative: Dict[float, float], score: Dict[float, float]) -> bool:
        alphas = state["alphas"]
        room = state["budget"] - len(alphas)
        if room <= 0:
            return False
        phi = numpy.asarray([derivative[_alpha_key(a)] for a in alphas])
        f = numpy.asarray([score[_alpha_key(a)] for a in alphas])
        local = numpy.abs(numpy.diff(alphas) * (phi[:-1] + phi[1:]) / 2 - numpy.diff(f))
        order = numpy.argsort(-local, kind="stable")
        chosen = [i for i in order if local[i] >= self.split * local[order[0]]][:room]
        mids = (alphas[chosen] + alphas[numpy.asarray(chosen) + 1]) / 2
        state["alphas"] = numpy.sort(numpy.concatenate([alphas, mids]))
        return True


class AdaptiveSimpson(Quadrature):
    """Composite Simpson rule on panels refined where the local completeness error is large.

    Each panel [a, b] uses the nodes a, (a + b) / 2, b with weights (b - a) (1, 4, 1) / 6.
    As in ``AdaptiveTrapezoid``, the scores at a and b give the exact F(b) - F(a), so each
    panel's error is known; panels with error >= ``split`` times the largest are halved,
    which adds their two quarter points and keeps every gradient computed.

    min_steps (int): panels of the first, uniform grid (2 * min_steps + 1 evaluations).
    split (float): panels with local error >= split * max are halved.
    """

    name = "adaptive_simpson"
    nested = True

    def __init__(self, min_steps: int = 1, split: float = 1.0):
        super().__init__(min_steps, 2)
        self.split = self._split_fraction(split)

    def evaluations(self, n: int) -> int:
        return 2 * n + 1

    def rule(self, n: int) -> Tuple[numpy.ndarray, numpy.ndarray]:
        return self._rule(numpy.linspace(0.0, 1.0, n + 1))

    @staticmethod
    def _rule(edges: numpy.ndarray) -> Tuple[numpy.ndarray, numpy.ndarray]:
        mids = (edges[:-1] + edges[1:]) / 2
        widths = numpy.diff(edges)
        alphas = numpy.empty(2 * len(edges) - 1)
        alphas[0::2], alphas[1::2] = edges, mids
        weights = numpy.zeros(len(alphas))
        weights[0:-1:2] += widths / 6
        weights[2::2] += widths / 6
        weights[1::2] += 4 * widths / 6
        return alphas, weights

    def start(self, max_steps: int) -> Dict:
        self._check_budget(max_steps)
        return {"edges": numpy.linspace(0.0, 1.0, self.min_steps + 1), "budget": int(max_steps)}

    def current(self, state: Dict) -> Tuple[numpy.ndarray, numpy.ndarray]:
        return self._rule(state["edges"])

    def refine(self, state: Dict, derivative: Dict[float, float], score: Dict[float, float]) -> bool:
        edges = state["edges"]
        used = 2 * len(edges) - 1
        room = (state["budget"] - used) // 2
        if room <= 0:
            return False
        alphas, _ = self._rule(edges)
        phi = numpy.asarray([derivative[_alpha_key(a)] for a in alphas])
        widths = numpy.diff(edges)
        simpson = widths * (phi[0:-1:2] + 4 * phi[1::2] + phi[2::2]) / 6
        exact = numpy.diff([score[_alpha_key(a)] for a in edges])
        local = numpy.abs(simpson - exact)
        order = numpy.argsort(-local, kind="stable")
        chosen = [i for i in order if local[i] >= self.split * local[order[0]]][:room]
        mids = (edges[chosen] + edges[numpy.asarray(chosen) + 1]) / 2
        state["edges"] = numpy.sort(numpy.concatenate([edges, mids]))
        return True


@registry.misc("kx_spacy.GaussLegendre.v1")
def make_gauss_legendre(min_steps: int = 4, growth: int = 2) -> Quadrature:
    """Gauss-Legendre quadrature, refined by multiplying the node count by ``growth``.

    min_steps (int): nodes of the first rule.
    growth (int): factor between successive rules.
    RETURNS (Quadrature): the rule family.
    """
    return GaussLegendre(min_steps, growth)


@registry.misc("kx_spacy.AdaptiveTrapezoid.v1")
def make_adaptive_trapezoid(min_steps: int = 2, split: float = 0.5) -> Quadrature:
    """Trapezoid quadrature refined by bisecting the intervals with the largest local
    completeness error (known exactly from the scores at the nodes).

    min_steps (int): intervals of the first, uniform grid.
    split (float): bisect intervals whose local error is >= split * the largest.
    RETURNS (Quadrature): the rule.
    """
    return AdaptiveTrapezoid(min_steps, split)


@registry.misc("kx_spacy.AdaptiveSimpson.v1")
def make_adaptive_simpson(min_steps: int = 1, split: float = 1.0) -> Quadrature:
    """Composite Simpson quadrature refined by halving the panels with the largest local
    completeness error (known exactly from the scores at the panel edges).

    min_steps (int): panels of the first, uniform grid.
    split (float): halve panels whose local error is >= split * the largest.
    RETURNS (Quadrature): the rule.
    """
    return AdaptiveSimpson(min_steps, split)


@registry.misc("kx_spacy.RiemannTrapezoid.v1")
def make_riemann_trapezoid(min_steps: int = 4, growth: int = 2) -> Quadrature:
    """Composite trapezoid quadrature (nested: refinement reuses earlier gradients).

    min_steps (int): intervals of the first rule.
    growth (int): factor between successive rules.
    RETURNS (Quadrature): the rule family.
    """
    return RiemannTrapezoid(min_steps, growth)


# ------------------------------------------------------------------------ baselines
def _token_baseline(token_id_fn: Callable[["Backbone"], int], name: str) -> BaselineFn:
    def baseline(backbone: "Backbone", input_ids: "torch.Tensor", moved: "torch.Tensor") -> "torch.Tensor":
        import torch

        ids = torch.full_like(input_ids, int(token_id_fn(backbone)))
        return backbone.input_embeddings(ids)

    baseline.name = name  # type: ignore[attr-defined]
    return baseline


@registry.misc("kx_spacy.PadBaseline.v1")
def make_pad_baseline() -> BaselineFn:
    """Baseline: every moved piece becomes the [PAD] token's embedding.

    RETURNS (Callable): the baseline function.
    """
    return _token_baseline(lambda backbone: backbone.special_ids.pad, "pad")


@registry.misc("kx_spacy.MaskBaseline.v1")
def make_mask_baseline() -> BaselineFn:
    """Baseline: every moved piece becomes the [MASK] token's embedding (the encoder's
    tokenizer must have a mask token).

    RETURNS (Callable): the baseline function.
    """
    return _token_baseline(lambda backbone: backbone.require_mask(), "mask")


@registry.misc("kx_spacy.ZeroBaseline.v1")
def make_zero_baseline() -> BaselineFn:
    """Baseline: the zero word embedding (position and type embeddings stay).

    RETURNS (Callable): the baseline function.
    """

    def baseline(backbone: "Backbone", input_ids: "torch.Tensor", moved: "torch.Tensor") -> "torch.Tensor":
        import torch

        return torch.zeros(
            (*input_ids.shape, backbone.hidden_size), dtype=backbone.dtype, device=backbone.device
        )

    baseline.name = "zero"  # type: ignore[attr-defined]
    return baseline


@registry.misc("kx_spacy.TokenBaseline.v1")
def make_token_baseline(token: str = "[UNK]") -> BaselineFn:
    """Baseline: every moved piece becomes the embedding of the tokenizer token ``token``.

    token (str): a token of the encoder's vocabulary.
    RETURNS (Callable): the baseline function.
    """

    def token_id(backbone: "Backbone") -> int:
        tid = backbone.tokenizer.convert_tokens_to_ids(token)
        unk = backbone.special_ids.unk
        if tid is None or (tid == unk and token != backbone.tokenizer.unk_token):
            raise AttributionConfigError(f"The baseline token {token!r} is not in the encoder's vocabulary.")
        return int(tid)

    return _token_baseline(token_id, f"token:{token}")


# -------------------------------------------------------------------------- results
@dataclass
class Attribution:
    """Integrated-gradient attribution of one label for one doc.

    label (str): the explained label.
    scores (List[float]): per spaCy token, the sum of its pieces' attributions.
    f_x (float): the classifier's score for ``label`` on the doc.
    f_baseline (float): the score on the baseline input.
    error (float): completeness error, relative to |f_x - f_baseline| (``error_kind``
        "relative") or absolute where that difference is below ``ZERO_DELTA``.
    error_kind (str): "relative" or "absolute".
    steps (int): gradient evaluations used for this doc and label.
    converged (bool): whether ``error`` reached the tolerance.
    """

    label: str
    scores: List[float]
    f_x: float
    f_baseline: float
    error: float
    error_kind: str = "relative"
    steps: int = 0
    converged: bool = True
    baseline: str = ""
    quadrature: str = ""
    pieces: Optional[List[float]] = field(default=None, repr=False)

    @property
    def delta(self) -> float:
        return self.f_x - self.f_baseline

    def to_dict(self) -> Dict:
        """Plain msgpack-able dict (what ``doc._.kx_attributions[label]`` holds)."""
        data = asdict(self)
        if data["pieces"] is None:
            data.pop("pieces")
        return data

    @classmethod
    def from_dict(cls, data: Dict) -> "Attribution":
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        for key in ("scores", "pieces"):  # msgpack (DocBin) may give tuples back
            if fields.get(key) is not None:
                fields[key] = [float(v) for v in fields[key]]
        return cls(**fields)


# ------------------------------------------------------------------------- the core
@dataclass
class _DocInputs:
    doc: "Doc"
    input_ids: "torch.Tensor"  # (S, L)
    attention_mask: "torch.Tensor"
    token_type_ids: Optional["torch.Tensor"]
    x: "torch.Tensor"  # (S, L, H) word embeddings
    base: "torch.Tensor"  # (S, L, H) baseline embeddings (== x where not moved)
    diff: "torch.Tensor"  # x - base
    token_rows: List[numpy.ndarray]
    row_share: numpy.ndarray  # (S*L,) 1 / number of tokens aligned to the row (0 if none)

    @property
    def rows(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[1])


def prepare_inputs(backbone: "Backbone", doc: "Doc", baseline: BaselineFn) -> _DocInputs:
    """Embeddings of ``doc``'s stored word pieces and of its baseline."""
    import torch

    wp = backbone.doc_wordpieces(doc)
    device = backbone.device
    ids = torch.as_tensor(wp.input_ids, dtype=torch.long, device=device)
    mask = torch.as_tensor(wp.attention_mask, dtype=torch.long, device=device)
    types = None
    if wp.token_type_ids is not None and wp.token_type_ids.size == wp.input_ids.size:
        types = torch.as_tensor(wp.token_type_ids, dtype=torch.long, device=device)
    n_flat = int(ids.numel())
    counts = numpy.zeros(n_flat, dtype="float64")
    for rows in wp.token_rows:
        counts[rows] += 1.0
    flat_mask = wp.attention_mask.reshape(-1) > 0
    moved_flat = (counts > 0) & flat_mask
    share = numpy.where(moved_flat, 1.0 / numpy.maximum(counts, 1.0), 0.0)
    moved = torch.as_tensor(moved_flat.reshape(ids.shape), device=device)
    x = backbone.input_embeddings(ids)
    base = baseline(backbone, ids, moved).to(device=device, dtype=x.dtype)
    if base.shape != x.shape:
        raise AttributionConfigError(
            f"The baseline function returned shape {tuple(base.shape)}; expected {tuple(x.shape)}."
        )
    base = torch.where(moved[..., None], base, x)
    return _DocInputs(doc, ids, mask, types, x, base, x - base, list(wp.token_rows), share)


class PathRunner:
    """Evaluates scores (and path gradients) at many (doc, alpha) points in large batches.

    backbone (Backbone): the shared encoder.
    bridge (ClassifierBridge): the classifier head.
    batch_size (int): most sequences (doc spans) per forward.
    max_batch_tokens (int): most padded pieces per forward.
    """

    def __init__(self, backbone: "Backbone", bridge: "ClassifierBridge", batch_size: int = 64, max_batch_tokens: int = 16384):
        self.backbone = backbone
        self.bridge = bridge
        self.batch_size = max(1, int(batch_size))
        self.max_batch_tokens = max(1, int(max_batch_tokens))
        self.forwards = 0  # sequences run with gradient
        self.forwards_nograd = 0

    def run(
        self, inputs: Sequence[_DocInputs], items: Sequence[Tuple[int, float, int]], grad: bool
    ) -> Tuple[List[numpy.ndarray], List[Optional[numpy.ndarray]]]:
        """items: (doc index, alpha, label index or -1). Returns per item all label scores
        and, if grad, the per-row path derivative (x - x') . dF/dx as an (S, L) array."""
        scores: List[Optional[numpy.ndarray]] = [None] * len(items)
        derivs: List[Optional[numpy.ndarray]] = [None] * len(items)
        order = sorted(range(len(items)), key=lambda i: -inputs[items[i][0]].length)
        start = 0
        while start < len(order):
            rows = 0
            width = inputs[items[order[start]][0]].length
            end = start
            while end < len(order):
                need = inputs[items[order[end]][0]].rows
                if end > start and (rows + need > self.batch_size or (rows + need) * width > self.max_batch_tokens):
                    break
                rows += need
                end += 1
            self._run_splitting(inputs, items, order[start:end], grad, scores, derivs)
            start = end
        return scores, derivs  # type: ignore[return-value]

    def _run_splitting(self, inputs, items, batch, grad, scores, derivs) -> None:
        import torch

        try:
            self._run_batch(inputs, items, batch, grad, scores, derivs)
        except Exception as err:  # noqa: BLE001 - only out-of-memory is handled
            if not is_out_of_memory(err) or len(batch) == 1:
                raise
            if self.backbone.device.type == "cuda":
                torch.cuda.empty_cache()
            half = len(batch) // 2
            self.batch_size = max(1, min(self.batch_size, sum(inputs[items[i][0]].rows for i in batch[:half])))
            self._run_splitting(inputs, items, batch[:half], grad, scores, derivs)
            self._run_splitting(inputs, items, batch[half:], grad, scores, derivs)

    def _run_batch(self, inputs, items, batch, grad, scores, derivs) -> None:
        import torch

        backbone = self.backbone
        width = max(inputs[items[i][0]].length for i in batch)
        n_rows = sum(inputs[items[i][0]].rows for i in batch)
        hidden_size = backbone.hidden_size
        device = backbone.device
        dtype = inputs[items[batch[0]][0]].x.dtype
        embeds = torch.zeros((n_rows, width, hidden_size), dtype=dtype, device=device)
        mask = torch.zeros((n_rows, width), dtype=torch.long, device=device)
        types = torch.zeros((n_rows, width), dtype=torch.long, device=device)
        spans = []
        r = 0
        for i in batch:
            d, alpha, _ = items[i]
            inp = inputs[d]
            s, L = inp.rows, inp.length
            embeds[r : r + s, :L] = inp.base + float(alpha) * inp.diff
            mask[r : r + s, :L] = inp.attention_mask
            if inp.token_type_ids is not None:
                types[r : r + s, :L] = inp.token_type_ids
            spans.append((r, s, L))
            r += s
        if grad:
            embeds.requires_grad_(True)
            self.forwards += n_rows
        else:
            self.forwards_nograd += n_rows
        ctx = torch.enable_grad() if grad else torch.no_grad()
        with ctx:
            hidden = backbone.encode(inputs_embeds=embeds, attention_mask=mask, token_type_ids=types, grad=grad)
            if not grad:
                hidden = hidden.clone()  # leave inference mode
            hiddens = [hidden[r : r + s, :L] for r, s, L in spans]
            docs = [inputs[items[i][0]].doc for i in batch]
            out = self.bridge.scores(docs, hiddens)
            if grad:
                label_idx = torch.as_tensor([items[i][2] for i in batch], device=out.device)
                objective = out.gather(1, label_idx[:, None]).sum()
                (g,) = torch.autograd.grad(objective, embeds)
        out_np = out.detach().cpu().double().numpy()
        for k, i in enumerate(batch):
            scores[i] = out_np[k]
            if grad:
                r, s, L = spans[k]
                inp = inputs[items[i][0]]
                derivs[i] = (g[r : r + s, :L] * inp.diff).sum(-1).detach().cpu().double().numpy()


def _alpha_key(alpha: float) -> float:
    return round(float(alpha), 12)


def integrated_gradients(
    backbone: "Backbone",
    bridge: "ClassifierBridge",
    docs: Sequence["Doc"],
    *,
    labels: Optional[Sequence[str]] = None,
    baseline: Optional[BaselineFn] = None,
    quadrature: Optional[Quadrature] = None,
    tolerance: float = 0.01,
    max_steps: int = 64,
    batch_size: int = 64,
    keep_pieces: bool = False,
    runner: Optional[PathRunner] = None,
) -> List[Dict[str, Attribution]]:
    """Integrated gradients of the classifier's label scores for many docs at once.

    backbone (Backbone): the shared encoder.
    bridge (ClassifierBridge): the classifier to explain.
    docs (Sequence[Doc]): docs the transformer has run on. Empty docs get an empty dict.
    labels (Sequence[str] or None): labels to explain; None: each doc's top label.
    baseline (Callable or None): baseline function; None: [PAD].
    quadrature (Quadrature or None): rule family; None: adaptive Simpson (the default of
        kx_attributor: the fewest evaluations in the benchmark).
    tolerance (float): completeness error to reach (relative, see module docstring).
    max_steps (int): most gradient evaluations of the finest rule.
    batch_size (int): most sequences per forward.
    keep_pieces (bool): also return per-piece attributions (flattened S*L rows).
    runner (PathRunner or None): reuse a runner (e.g. to read its counters).
    RETURNS (List[Dict[str, Attribution]]): per doc, label -> attribution.
    """
    if not tolerance >= 0:
        raise AttributionConfigError(f"tolerance must be >= 0, got {tolerance}.")
    baseline = baseline or make_pad_baseline()
    quadrature = quadrature or AdaptiveSimpson()
    quadrature.start(int(max_steps))  # validates max_steps against the rule
    all_labels = list(bridge.labels)
    if not all_labels:
        raise KxError(f"The classifier '{bridge.name}' has no labels: initialise or train it first.")
    if labels is not None:
        unknown = [l for l in labels if l not in all_labels]
        if unknown:
            raise UnknownLabelError(
                f"Label(s) {unknown} are not labels of the classifier '{bridge.name}' "
                f"(its labels: {all_labels})."
            )
    runner = runner or PathRunner(backbone, bridge, batch_size)
    results: List[Dict[str, Attribution]] = [{} for _ in docs]
    active = [i for i, doc in enumerate(docs) if len(doc) > 0]
    if not active:
        return results
    inputs = [prepare_inputs(backbone, docs[i], baseline) for i in active]
    # Endpoint scores: F(x') at alpha 0 and F(x) at alpha 1, all labels, no gradient.
    ends = [(d, a, -1) for d in range(len(inputs)) for a in (0.0, 1.0)]
    end_scores, _ = runner.run(inputs, ends, grad=False)
    f_base = [end_scores[2 * d] for d in range(len(inputs))]
    f_x = [end_scores[2 * d + 1] for d in range(len(inputs))]
    # Jobs: (doc index, label index); each refines its own level.
    jobs: List[Tuple[int, int]] = []
    for d in range(len(inputs)):
        if labels is None:
            jobs.append((d, int(numpy.argmax(f_x[d]))))
        else:
            jobs.extend((d, all_labels.index(l)) for l in labels)
    cache: List[Dict[float, numpy.ndarray]] = [{} for _ in jobs]
    phi: List[Dict[float, float]] = [{} for _ in jobs]  # dF/dalpha at each node
    f_at: List[Dict[float, float]] = [{} for _ in jobs]  # F at each node
    states = [quadrature.start(int(max_steps)) for _ in jobs]
    final: List[Optional[Tuple[numpy.ndarray, float, str, bool]]] = [None] * len(jobs)
    pending = list(range(len(jobs)))
    while pending:
        items, owners = [], []
        for j in pending:
            d, k = jobs[j]
            alphas, _ = quadrature.current(states[j])
            for a in alphas:
                if _alpha_key(a) not in cache[j]:
                    items.append((d, float(a), k))
                    owners.append(j)
        scores, derivs = runner.run(inputs, items, grad=True)
        for (d, a, k), j, score, deriv in zip(items, owners, scores, derivs):
            cache[j][_alpha_key(a)] = deriv
            phi[j][_alpha_key(a)] = float(deriv.sum())
            f_at[j][_alpha_key(a)] = float(score[k])
        still = []
        for j in pending:
            d, k = jobs[j]
            alphas, weights = quadrature.current(states[j])
            rows = sum(w * cache[j][_alpha_key(a)] for a, w in zip(alphas, weights))
            delta = float(f_x[d][k] - f_base[d][k])
            total = float(rows.sum())
            if abs(delta) < ZERO_DELTA:
                error, kind = abs(total - delta), "absolute"
            else:
                error, kind = abs(total - delta) / abs(delta), "relative"
            ok = error <= tolerance
            if ok or not quadrature.refine(states[j], phi[j], f_at[j]):
                final[j] = (rows, error, kind, ok)
            else:
                still.append(j)
        pending = still
    for j, (d, k) in enumerate(jobs):
        rows, error, kind, ok = final[j]  # type: ignore[misc]
        inp = inputs[d]
        flat = rows.reshape(-1) * (inp.row_share > 0)
        shared = flat * inp.row_share
        token_scores = [float(shared[r].sum()) for r in inp.token_rows]
        label = all_labels[k]
        results[active[d]][label] = Attribution(
            label=label,
            scores=token_scores,
            f_x=float(f_x[d][k]),
            f_baseline=float(f_base[d][k]),
            error=float(error),
            error_kind=kind,
            steps=len(cache[j]),
            converged=bool(ok),
            baseline=getattr(baseline, "name", ""),
            quadrature=quadrature.name,
            pieces=[float(v) for v in flat] if keep_pieces else None,
        )
    return results
