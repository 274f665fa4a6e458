"""Tree decoders over an arc-score matrix, and the trivial baselines.

Every decoder reads ``scores``, a float array of shape (n + 1, n + 1) where index 0 is the
artificial ROOT and 1..n are the words, and ``scores[h, d]`` is the score of the arc
head ``h`` -> dependent ``d`` (the diagonal and column 0 are never used). It returns
``heads``, an int64 array of length n + 1 with ``heads[0] == -1`` and ``heads[d]`` in 0..n
for every word, forming a tree in which **exactly one** word hangs from ROOT.

``root`` (1..n or None): when given, that word is forced to be the one attached to ROOT
(gold-root evaluation, as in the perturbed-masking paper); when None the decoder chooses
it, the arc ``scores[0, r]`` counting like any other arc.

Decoders:

* ``eisner``: the best *projective* tree (Eisner 1996), O(n^3), each span length
  vectorised over all span starts and split points. The single-root constraint is exact:
  the dynamic programme runs over the words alone and ROOT then takes one word ``r`` whose
  left and right complete spans cover the sentence. ``single_root=False`` gives the classic
  variant over 0..n in which ROOT may take several children (what the official perturbed-
  masking code decodes), for like-for-like comparisons only.
* ``chu_liu_edmonds``: the best tree, projective or not (Chu-Liu/Edmonds maximum spanning
  arborescence by recursive cycle contraction, O(n^3)). The single-root constraint is exact:
  every arc from ROOT is lowered by a constant larger than any difference between two trees'
  scores, so the best arborescence uses one ROOT arc and, among those trees, the penalty is
  the same for all.
* baselines, which ignore the scores: ``right_chain`` (each word's head is the next word to
  its right, the last word is the root: the "right-branching" chain of the paper's baseline;
  the official code, dependency/dep_parsing.py, gives word i the head i + 1 and the gold root
  the head 0), ``left_chain`` (each word's head is the previous word, the first word is the
  root) and ``star`` (every word on the root word).

With a forced ``root`` the chains keep their direction everywhere except where the tree
needs it: right chain -> words left of the root chain rightwards into it (as in the official
code), words right of it chain rightwards too and the last word hangs from the root (the
official code leaves the last word pointing to n + 1, outside the sentence, which always
scores wrong; here it is a real tree and that one word may be right). Left chain is the
mirror image: words right of the root chain leftwards into it, words left of it chain
leftwards and the first word hangs from the root.

Ties: every argmax takes the first maximum (lowest split point, lowest head index, lowest
root), so results are deterministic. n = 0 gives ``[-1]``, n = 1 gives ``[-1, 0]``.
Scores: NaN or +inf raise ``InvalidScoresError``; -inf marks a forbidden arc and is replaced
by a finite value low enough that a tree avoiding it always wins where one exists.

The registered ``kx_spacy.Eisner.v1`` ... ``kx_spacy.Star.v1`` (``registry.misc``) return a
callable ``decode(scores, root=None) -> heads``, so a component's decoder is swappable from
its config; ``decode.kind`` is "eisner", "cle" or "baseline".
"""
from __future__ import annotations

from typing import Callable, List, Optional

import numpy
from spacy.util import registry

from ..errors import InvalidScoresError

Decoder = Callable[[numpy.ndarray, Optional[int]], numpy.ndarray]


# ---------------------------------------------------------------------------- helpers
def _check_scores(scores) -> numpy.ndarray:
    """Validate the (n+1, n+1) shape and values; return a float64 copy with -inf lowered."""
    arr = numpy.array(scores, dtype="float64", copy=True)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.shape[0] < 1:
        raise InvalidScoresError(
            f"Arc scores must be a square (n+1, n+1) matrix with ROOT at index 0; got shape "
            f"{arr.shape}."
        )
    n1 = arr.shape[0]
    if n1 == 1:
        return arr
    # Only arcs to words (columns 1..n, off the diagonal) matter.
    used = numpy.ones_like(arr, dtype=bool)
    used[:, 0] = False
    numpy.fill_diagonal(used, False)
    vals = arr[used]
    if numpy.isnan(vals).any() or numpy.isposinf(vals).any():
        raise InvalidScoresError("Arc scores contain NaN or +inf; the decoder needs real numbers.")
    finite = vals[numpy.isfinite(vals)]
    if finite.size == 0:
        arr[used] = 0.0
        return arr
    lo, hi = float(finite.min()), float(finite.max())
    floor = lo - (n1 + 1) * (hi - lo + 1.0)
    arr[used & numpy.isneginf(arr)] = floor
    arr[~used] = 0.0
    return arr


def _check_root(root: Optional[int], n: int) -> Optional[int]:
    if root is None:
        return None
    if isinstance(root, bool) or not isinstance(root, (int, numpy.integer)):
        raise InvalidScoresError(f"root must be an int in 1..n or None; got {root!r}.")
    root = int(root)
    if n == 0:
        raise InvalidScoresError("A forced root was given for an empty sentence (n = 0).")
    if not 1 <= root <= n:
        raise InvalidScoresError(f"root must be in 1..{n} (a word, not ROOT); got {root}.")
    return root


def _empty(n: int) -> numpy.ndarray:
    heads = numpy.zeros(n + 1, dtype="int64")
    heads[0] = -1
    return heads


def tree_score(scores: numpy.ndarray, heads: numpy.ndarray) -> float:
    """Sum of ``scores[heads[d], d]`` over the words d = 1..n.

    scores (numpy.ndarray): (n+1, n+1) arc scores.
    heads (numpy.ndarray): length n+1 heads with ``heads[0] == -1``.
    RETURNS (float): the tree's score.
    """
    heads = numpy.asarray(heads)
    d = numpy.arange(1, len(heads))
    return float(numpy.asarray(scores, dtype="float64")[heads[1:], d].sum())


def is_tree(heads, *, single_root: bool = True) -> bool:
    """Whether ``heads`` (length n+1, ``heads[0] == -1``) is a tree rooted at 0.

    single_root (bool): also require exactly one word attached to ROOT.
    RETURNS (bool): True for a valid tree.
    """
    heads = [int(h) for h in heads]
    n = len(heads) - 1
    if n < 0 or heads[0] != -1:
        return False
    if n == 0:
        return True
    if any(h < 0 or h > n or h == d for d, h in enumerate(heads) if d > 0):
        return False
    if single_root and sum(1 for h in heads[1:] if h == 0) != 1:
        return False
    for d in range(1, n + 1):
        seen = set()
        node = d
        while node != 0:
            if node in seen:
                return False
            seen.add(node)
            node = heads[node]
    return True


def is_projective(heads) -> bool:
    """Whether the tree ``heads`` has no crossing arcs (ROOT at position 0 included).

    heads (Sequence[int]): length n+1, ``heads[0] == -1``.
    RETURNS (bool): True when no two arcs cross.
    """
    arcs = [(min(h, d), max(h, d)) for d, h in enumerate(heads) if d > 0]
    for a, (i, j) in enumerate(arcs):
        for k, l in arcs[a + 1 :]:
            if i < k < j < l or k < i < l < j:
                return False
    return True


# ---------------------------------------------------------------------------- Eisner
def _eisner_tables(s: numpy.ndarray):
    """First-order projective DP over the nodes of ``s`` (m x m, s[h, d]).

    RETURNS: complete[L/R], incomplete[L/R] tables (m x m) and their back-pointers.
    complete[0][i, j]: best span i..j headed by j (left-facing); complete[1][i, j]: headed by i.
    incomplete[0][i, j]: arc j -> i plus its inside; incomplete[1][i, j]: arc i -> j.
    """
    m = s.shape[0]
    neg = -numpy.inf
    comp = numpy.full((2, m, m), neg)
    inc = numpy.full((2, m, m), neg)
    comp_bp = numpy.zeros((2, m, m), dtype="int64")
    inc_bp = numpy.zeros((2, m, m), dtype="int64")
    idx = numpy.arange(m)
    comp[0, idx, idx] = 0.0
    comp[1, idx, idx] = 0.0
    for k in range(1, m):
        starts = numpy.arange(0, m - k)
        ends = starts + k
        # split points r = i .. j-1 for incomplete items: C_R[i, r] + C_L[r+1, j]
        r = starts[:, None] + numpy.arange(k)[None, :]
        inside = comp[1, starts[:, None], r] + comp[0, r + 1, ends[:, None]]
        best = inside.argmax(axis=1)
        val = inside[numpy.arange(len(starts)), best]
        inc[0, starts, ends] = val + s[ends, starts]
        inc[1, starts, ends] = val + s[starts, ends]
        inc_bp[0, starts, ends] = starts + best
        inc_bp[1, starts, ends] = starts + best
        # complete left-facing (head j): C_L[i, r] + I_L[r, j], r = i .. j-1
        left = comp[0, starts[:, None], r] + inc[0, r, ends[:, None]]
        bl = left.argmax(axis=1)
        comp[0, starts, ends] = left[numpy.arange(len(starts)), bl]
        comp_bp[0, starts, ends] = starts + bl
        # complete right-facing (head i): I_R[i, r] + C_R[r, j], r = i+1 .. j
        r2 = r + 1
        right = inc[1, starts[:, None], r2] + comp[1, r2, ends[:, None]]
        br = right.argmax(axis=1)
        comp[1, starts, ends] = right[numpy.arange(len(starts)), br]
        comp_bp[1, starts, ends] = starts + 1 + br
    return comp, inc, comp_bp, inc_bp


def _eisner_backtrack(comp_bp, inc_bp, i, j, direction, complete, heads, offset):
    """Fill ``heads`` (node indices + offset) from the back-pointers, iteratively."""
    stack = [(i, j, direction, complete)]
    while stack:
        i, j, direction, complete = stack.pop()
        if i == j:
            continue
        if complete:
            r = int(comp_bp[direction, i, j])
            if direction == 0:
                stack.append((i, r, 0, True))
                stack.append((r, j, 0, False))
            else:
                stack.append((i, r, 1, False))
                stack.append((r, j, 1, True))
        else:
            r = int(inc_bp[direction, i, j])
            if direction == 0:
                heads[i + offset] = j + offset
            else:
                heads[j + offset] = i + offset
            stack.append((i, r, 1, True))
            stack.append((r + 1, j, 0, True))


def eisner(scores, root: Optional[int] = None, *, single_root: bool = True) -> numpy.ndarray:
    """Best projective dependency tree (Eisner's algorithm).

    scores (numpy.ndarray): (n+1, n+1) arc scores, ``scores[h, d]``, ROOT = 0.
    root (Optional[int]): force this word (1..n) to be the one attached to ROOT.
    single_root (bool): exactly one word on ROOT (default). False: the classic variant over
        0..n in which ROOT may take several words (the official code's decoder); ignored
        when ``root`` is given.
    RETURNS (numpy.ndarray): int64 heads of length n+1, ``heads[0] == -1``.
    """
    s = _check_scores(scores)
    n = s.shape[0] - 1
    root = _check_root(root, n)
    heads = _empty(n)
    if n == 0:
        return heads
    if n == 1:
        return heads  # the only word hangs from ROOT
    if not single_root and root is None:
        s_full = s.copy()
        s_full[:, 0] = -numpy.inf  # nothing heads ROOT
        comp, inc, comp_bp, inc_bp = _eisner_tables(s_full)
        _eisner_backtrack(comp_bp, inc_bp, 0, n, 1, True, heads, 0)
        return heads
    words = s[1:, 1:]
    comp, inc, comp_bp, inc_bp = _eisner_tables(words)
    # ROOT -> r: left span 1..r headed by r, right span r..n headed by r (0-based in words).
    cands = numpy.arange(n)
    total = s[0, 1:] + comp[0, 0, cands] + comp[1, cands, n - 1]
    r = root - 1 if root is not None else int(total.argmax())
    heads[r + 1] = 0
    _eisner_backtrack(comp_bp, inc_bp, 0, r, 0, True, heads, 1)
    _eisner_backtrack(comp_bp, inc_bp, r, n - 1, 1, True, heads, 1)
    return heads


# ------------------------------------------------------------------ Chu-Liu/Edmonds
def _find_cycle(heads: numpy.ndarray) -> Optional[List[int]]:
    """A cycle in the head graph (node 0 has no head), or None."""
    m = len(heads)
    state = numpy.zeros(m, dtype="int8")  # 0 new, 1 on current path, 2 done
    state[0] = 2
    for start in range(1, m):
        if state[start]:
            continue
        path = []
        node = start
        while state[node] == 0:
            state[node] = 1
            path.append(node)
            node = int(heads[node])
        if state[node] == 1:  # closed a cycle on this path
            return path[path.index(node) :]
        for p in path:
            state[p] = 2
    return None


def _mst(s: numpy.ndarray) -> numpy.ndarray:
    """Maximum spanning arborescence rooted at 0 (any number of ROOT children).

    s (numpy.ndarray): m x m scores s[h, d]; the diagonal and column 0 must be -inf.
    """
    m = s.shape[0]
    heads = s.argmax(axis=0)
    heads[0] = -1
    cycle = _find_cycle(heads)
    if cycle is None:
        return heads
    in_cycle = numpy.zeros(m, dtype=bool)
    in_cycle[cycle] = True
    keep = numpy.flatnonzero(~in_cycle)  # contains 0
    cyc = numpy.asarray(cycle)
    c = len(keep)  # index of the contracted node
    s2 = numpy.full((c + 1, c + 1), -numpy.inf)
    s2[:c, :c] = s[numpy.ix_(keep, keep)]
    # arcs into the cycle: entering v replaces v's cycle arc
    cyc_in = s[heads[cyc], cyc]
    enter = s[numpy.ix_(keep, cyc)] - cyc_in[None, :]
    enter_best = enter.argmax(axis=1)
    s2[:c, c] = enter[numpy.arange(c), enter_best]
    # arcs out of the cycle
    leave = s[numpy.ix_(cyc, keep)]
    leave_best = leave.argmax(axis=0)
    s2[c, :c] = leave[leave_best, numpy.arange(c)]
    s2[:, 0] = -numpy.inf
    numpy.fill_diagonal(s2, -numpy.inf)
    heads2 = _mst(s2)
    out = heads.copy()
    for b in range(1, c):
        h = int(heads2[b])
        out[keep[b]] = int(cyc[leave_best[b]]) if h == c else int(keep[h])
    h = int(heads2[c])
    out[int(cyc[enter_best[h]])] = int(keep[h])
    return out


def chu_liu_edmonds(scores, root: Optional[int] = None) -> numpy.ndarray:
    """Best dependency tree, projective or not, with exactly one word on ROOT.

    scores (numpy.ndarray): (n+1, n+1) arc scores, ``scores[h, d]``, ROOT = 0.
    root (Optional[int]): force this word (1..n) to be the one attached to ROOT.
    RETURNS (numpy.ndarray): int64 heads of length n+1, ``heads[0] == -1``.
    """
    s = _check_scores(scores)
    n = s.shape[0] - 1
    root = _check_root(root, n)
    if n <= 1:
        return _empty(n)
    s = s.copy()
    s[:, 0] = -numpy.inf
    numpy.fill_diagonal(s, -numpy.inf)
    arcs = s[:, 1:]
    finite = arcs[numpy.isfinite(arcs)]
    spread = float(finite.max() - finite.min())  # any arc, ROOT arcs included
    if root is not None:
        s[0, 1:] = -numpy.inf
        s[0, root] = 0.0
        s[1:, root] = -numpy.inf
    else:
        # One ROOT arc always beats two once each costs more than any score difference.
        s[0, 1:] = s[0, 1:] - (n + 1) * (spread + 1.0)
    return _mst(s).astype("int64")


# --------------------------------------------------------------------- baselines
def right_chain(n: int, root: Optional[int] = None) -> numpy.ndarray:
    """Right-branching chain: each word's head is the next word; the last word is the root.

    n (int): number of words.
    root (Optional[int]): force this word onto ROOT (words after it chain rightwards and
        the last one hangs from it).
    RETURNS (numpy.ndarray): heads of length n+1.
    """
    n = _check_n(n)
    root = _check_root(root, n)
    heads = _empty(n)
    if n == 0:
        return heads
    heads[1:n] = numpy.arange(2, n + 1)
    r = n if root is None else root
    heads[r] = 0
    if r != n:
        heads[n] = r
    return heads


def left_chain(n: int, root: Optional[int] = None) -> numpy.ndarray:
    """Left-branching chain: each word's head is the previous word; the first is the root.

    n (int): number of words.
    root (Optional[int]): force this word onto ROOT (words before it chain leftwards and
        the first one hangs from it).
    RETURNS (numpy.ndarray): heads of length n+1.
    """
    n = _check_n(n)
    root = _check_root(root, n)
    heads = _empty(n)
    if n == 0:
        return heads
    heads[2:] = numpy.arange(1, n)
    r = 1 if root is None else root
    heads[r] = 0
    if r != 1:
        heads[1] = r
    return heads


def star(n: int, root: int) -> numpy.ndarray:
    """Every word attached to the word ``root``, which hangs from ROOT.

    n (int): number of words.
    root (int): the centre word, 1..n.
    RETURNS (numpy.ndarray): heads of length n+1.
    """
    n = _check_n(n)
    heads = _empty(n)
    if n == 0:
        return heads
    root = _check_root(root, n)
    if root is None:
        raise InvalidScoresError("star() needs the root word (1..n).")
    heads[1:] = root
    heads[root] = 0
    return heads


def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, numpy.integer)) or n < 0:
        raise InvalidScoresError(f"n must be a non-negative int; got {n!r}.")
    return int(n)


def _n_of(scores) -> int:
    arr = numpy.asarray(scores)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.shape[0] < 1:
        raise InvalidScoresError(
            f"Arc scores must be a square (n+1, n+1) matrix with ROOT at index 0; got shape "
            f"{arr.shape}."
        )
    return arr.shape[0] - 1


# ------------------------------------------------------------------ score priors
def positional_prior(
    n: int,
    *,
    adjacent: float = 0.0,
    right: float = 0.0,
    hub: float = 0.0,
    root: Optional[int] = None,
) -> numpy.ndarray:
    """An additive prior on arc scores, from word positions only (no model, no gold).

    Added to a model's arc scores it biases the decoder towards the shapes that the chain and
    star baselines exploit, while the model still chooses among them.

    n (int): number of words.
    adjacent (float): bonus for an arc between neighbouring words (either direction).
    right (float): extra bonus when the head is the next word (right-branching).
    hub (float): bonus for every arc leaving ``root`` (star-like), if ``root`` is given.
    root (Optional[int]): the root word the hub bonus applies to.
    RETURNS (numpy.ndarray): (n+1, n+1) float64 bonuses ``prior[h, d]``; ROOT arcs get 0.
    """
    n = _check_n(n)
    prior = numpy.zeros((n + 1, n + 1))
    if n >= 2:
        d = numpy.arange(1, n)
        prior[d + 1, d] += adjacent + right
        prior[d, d + 1] += adjacent
    if hub and root is not None:
        root = _check_root(root, n)
        prior[root, 1:] += hub
        prior[root, root] = 0.0
    return prior


# ---------------------------------------------------------------- registered factories
@registry.misc("kx_spacy.Eisner.v1")
def make_eisner(single_root: bool = True) -> Decoder:
    """Projective decoder (see ``eisner``).

    single_root (bool): exactly one word on ROOT (False: the official code's variant).
    RETURNS (Callable[[numpy.ndarray, Optional[int]], numpy.ndarray]): decode(scores, root).
    """

    def decode(scores: numpy.ndarray, root: Optional[int] = None) -> numpy.ndarray:
        return eisner(scores, root, single_root=single_root)

    decode.kind = "eisner"  # type: ignore[attr-defined]
    return decode


@registry.misc("kx_spacy.ChuLiuEdmonds.v1")
def make_chu_liu_edmonds() -> Decoder:
    """Non-projective single-root decoder (see ``chu_liu_edmonds``).

    RETURNS (Callable[[numpy.ndarray, Optional[int]], numpy.ndarray]): decode(scores, root).
    """

    def decode(scores: numpy.ndarray, root: Optional[int] = None) -> numpy.ndarray:
        return chu_liu_edmonds(scores, root)

    decode.kind = "cle"  # type: ignore[attr-defined]
    return decode


@registry.misc("kx_spacy.RightChain.v1")
def make_right_chain() -> Decoder:
    """Right-chain baseline; the scores only give the sentence length.

    RETURNS (Callable[[numpy.ndarray, Optional[int]], numpy.ndarray]): decode(scores, root).
    """

    def decode(scores: numpy.ndarray, root: Optional[int] = None) -> numpy.ndarray:
        return right_chain(_n_of(scores), root)

    decode.kind = "baseline"  # type: ignore[attr-defined]
    return decode


@registry.misc("kx_spacy.LeftChain.v1")
def make_left_chain() -> Decoder:
    """Left-chain baseline; the scores only give the sentence length.

    RETURNS (Callable[[numpy.ndarray, Optional[int]], numpy.ndarray]): decode(scores, root).
    """

    def decode(scores: numpy.ndarray, root: Optional[int] = None) -> numpy.ndarray:
        return left_chain(_n_of(scores), root)

    decode.kind = "baseline"  # type: ignore[attr-defined]
    return decode


@registry.misc("kx_spacy.Star.v1")
def make_star() -> Decoder:
    """Star baseline: every word on the root word. With ``root=None`` the root is the word
    with the highest ROOT arc score, ``argmax(scores[0, 1:]) + 1`` (first on ties).

    RETURNS (Callable[[numpy.ndarray, Optional[int]], numpy.ndarray]): decode(scores, root).
    """

    def decode(scores: numpy.ndarray, root: Optional[int] = None) -> numpy.ndarray:
        n = _n_of(scores)
        if n == 0:
            return _empty(0)
        if root is None:
            s = _check_scores(scores)
            root = int(numpy.argmax(s[0, 1:])) + 1
        return star(n, root)

    decode.kind = "baseline"  # type: ignore[attr-defined]
    return decode
