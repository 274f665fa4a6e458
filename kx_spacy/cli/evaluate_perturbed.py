"""`kx_spacy evaluate-parser` and `kx_spacy evaluate-segmenter`: perturbed masking, scored.

evaluate-parser: UD CoNLL-U in, one table out. Every row is scored on the same sentences:
the impact matrices of each impact mode are computed once (all masked variants of all
sentences batched by ``kx_spacy.perturbed.impact.compute_impacts``), turned into arc scores
by each scoring, and decoded by Eisner and Chu-Liu/Edmonds with the root

* ``gold``: the gold root forced (the paper's default; for comparison with it only),
* ``pred``: the root from ``predict_root`` forced (a fair, unsupervised setting),
* ``free``: the decoder's own choice from the ROOT arc scores;

next to the right-chain, left-chain and star baselines (star on the gold root and on the
predicted root). ``kx-prior`` rows add a positional prior (bonuses for arcs between
neighbours and for right-branching arcs, weights tuned on EWT dev) to the kx scores, so the
model chooses among chain-like trees. ``right-chain-ref`` is the official code's right chain with the gold root,
whose last word points outside the sentence (kx's ``right_chain`` hangs it on the root).
``eisner-multiroot`` rows decode the official scores with Eisner over 0..n where ROOT may take
several words (the decoder choice of the reference's ``--root gold`` run); they are NOT a
reproduction of that run (on PUD they differ from it by about 5 UAS), only that decoder.
The ``kx_parser`` row is what ``nlp.add_pipe("kx_parser")`` gives: the component's default
scoring (``symmetric_prior``), its default root predictor (with the word strings) and Eisner,
on the kx impacts of the same sentences and layers.
UAS and UUAS count every token, punctuation included (the official convention); the JSON
also has the figures without punctuation and how often each root predictor is right.

evaluate-segmenter: SIGHAN bakeoff input + gold + training word list in, bakeoff P / R / F
and OOV recall out, for a ``kx_segmenter`` pipeline on any encoder (``nlp.pipe``, batched).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Dict, List, Optional, Sequence

import typer

from . import app
from ._threads import DEFAULT_THREADS, THREADS_HELP, set_threads

MAX_WORDS_MODES = ("content", "all")

# (label, impact mode, score mode, impact_to_scores kwargs, decoders)
SCORINGS = {
    "official": ("official", "official", {"softmax_quirk": True}, ("eisner", "eisner-multiroot", "cle")),
    "official-fixed": ("official", "official", {"softmax_quirk": False}, ("eisner", "eisner-multiroot")),
    "kx": ("kx", "kx", {}, ("eisner", "cle")),
    "kx-raw": ("kx", "raw", {}, ("eisner", "cle")),
    "kx-sym": ("kx", "symmetric", {}, ("eisner", "cle")),
    # kx scores + a positional prior (kx_spacy.perturbed.trees.positional_prior)
    "kx-prior": ("kx", "kx", {}, ("eisner", "cle")),
}
DEFAULT_SCORINGS = ("official", "official-fixed", "kx", "kx-raw", "kx-sym", "kx-prior")
# the positional prior of the kx-prior rows, tuned on EWT dev (<= 10 words, first 150)
DEFAULT_PRIOR = {"adjacent": 1.0, "right": 1.0, "hub": 0.0}


def _engine():
    from ..perturbed import impact

    return SimpleNamespace(
        compute_impacts=impact.compute_impacts,
        impact_to_scores=impact.impact_to_scores,
        predict_root=impact.predict_root,
        root_strategies=getattr(impact, "ROOT_STRATEGIES", ("root_row",)),
    )


def _decoders() -> Dict[str, Callable]:
    from ..perturbed.trees import chu_liu_edmonds, eisner

    return {
        "eisner": lambda s, r: eisner(s, r),
        # the reference's decoder choice: a gold root acts only through the score edit
        "eisner-multiroot": lambda s, r: eisner(s, None, single_root=False),
        "cle": lambda s, r: chu_liu_edmonds(s, r),
    }


def evaluate_parser(
    sentences: Sequence,
    backbone,
    *,
    scorings: Sequence[str] = DEFAULT_SCORINGS,
    layers=-1,
    distance: str = "euclidean",
    root_strategy: str = "centrality",
    lang: str = "en",
    batch_size: int = 256,
    progress: bool = True,
    engine=None,
    prior: Optional[Dict[str, float]] = None,
    save_impacts: Optional[Path] = None,
    component_row: bool = True,
) -> Dict:
    """Score the perturbed-masking parser and the baselines on the same sentences.

    sentences (Sequence[ConlluSentence]): gold sentences (``kx_spacy.readers.read_conllu``).
    backbone (Backbone): the encoder adapter.
    scorings (Sequence[str]): which rows of ``SCORINGS`` to run.
    layers (int or List[int]): hidden layer(s) for the impacts.
    distance (str): impact distance ("euclidean", "cosine", "manhattan").
    root_strategy (str): root predictor of the ``pred`` rows: a ``predict_root`` strategy,
        "lexical" (``kx_spacy.LexicalRoot.v1`` of ``lang``) or "language" (kx_parser's
        default ``kx_spacy.LanguageRoot.v1`` bound to ``lang``).
    lang (str): the sentences' language (the lexical root predictors and the kx_parser row).
    batch_size (int): most masked inputs per forward.
    progress (bool): show a progress bar.
    engine (object or None): provides compute_impacts / impact_to_scores / predict_root
        (None: ``kx_spacy.perturbed.impact``; tests pass a fake).
    prior (Dict[str, float] or None): ``adjacent`` / ``right`` / ``hub`` weights of the
        positional prior added in the ``kx-prior`` rows (None: ``DEFAULT_PRIOR``).
    save_impacts (Path or None): write every impact matrix to this .npz (keys
        ``{mode}_{sentence index}``) for re-decoding without the encoder.
    component_row (bool): add the ``kx_parser`` row (the component's defaults; computes the
        kx impacts when no chosen scoring needs them).
    RETURNS (Dict): ``rows`` (method, scores, root, uas, uuas, uas_nopunct, uuas_nopunct),
        ``root_accuracy`` per impact mode and strategy, and the settings.
    """
    from tqdm import tqdm

    from ..errors import KxError
    from ..perturbed.trees import left_chain, positional_prior, right_chain, star
    from ..scoring import attachment_scores

    engine = engine or _engine()
    prior = dict(DEFAULT_PRIOR if prior is None else prior)
    impacts_given = getattr(engine, "precomputed", None)
    unknown = [s for s in scorings if s not in SCORINGS]
    if unknown:
        raise KxError(f"Unknown scorings {unknown}; choose from {list(SCORINGS)}.")
    sentences = [s for s in sentences if len(s) > 0]
    if not sentences:
        raise KxError("No sentences to evaluate (empty file, or every sentence filtered out).")
    gold = [s.heads for s in sentences]
    punct = [s.punct_mask() for s in sentences]
    gold_roots = [s.root for s in sentences]
    words = [s.words for s in sentences]

    rows: List[Dict] = []

    def add(method: str, scores: str, root: str, trees: List) -> None:
        allw = attachment_scores(trees, gold)
        nop = attachment_scores(trees, gold, punct)
        rows.append({
            "method": method, "scores": scores, "root": root,
            "uas": allw["uas"], "uuas": allw["uuas"],
            "uas_nopunct": nop["uas"], "uuas_nopunct": nop["uuas"], "tokens": allw["total"],
        })

    impact_modes = []
    for name in scorings:
        if SCORINGS[name][0] not in impact_modes:
            impact_modes.append(SCORINGS[name][0])
    component = component_defaults(lang) if component_row else None
    predictors = _root_predictors(lang)
    if component and component["mode"] not in impact_modes:
        impact_modes.append(component["mode"])
    impacts = {}
    timings = {}
    for mode in impact_modes:
        if impacts_given is not None:
            if mode not in impacts_given:
                raise KxError(f"The loaded impacts have no {mode!r} matrices (modes: {sorted(impacts_given)}).")
            impacts[mode], timings[mode] = impacts_given[mode], 0.0
            continue
        bar = tqdm(total=len(words), desc=f"impacts ({mode})", unit="sent", disable=not progress)
        start = time.perf_counter()
        impacts[mode] = engine.compute_impacts(
            backbone, words, mode=mode, layers=layers, distance=distance, batch_size=batch_size,
            progress=bar.update,
        )
        timings[mode] = time.perf_counter() - start
        bar.close()

    if save_impacts is not None:
        import numpy

        Path(save_impacts).parent.mkdir(parents=True, exist_ok=True)
        numpy.savez_compressed(
            save_impacts, **{f"{mode}_{i}": M for mode, mats in impacts.items() for i, M in enumerate(mats)}
        )

    # root predictors see the words (punctuation is never the root) and, for "scored", each
    # word's first piece id, as kx_parser does
    ranks = _piece_ranks(backbone, words) if hasattr(backbone, "tokenize_words") else None

    def roots_of(mats, strategy):
        strategy = predictors.get(strategy, strategy)
        return [engine.predict_root(M, strategy, words=w, piece_ranks=None if ranks is None else ranks[i])
                for i, (M, w) in enumerate(zip(mats, words))]

    root_accuracy = {}
    pred_roots = {}
    for mode, mats in impacts.items():
        root_accuracy[mode] = {}
        for strategy in tuple(engine.root_strategies) + tuple(k for k in predictors if k != "language"):
            if strategy == "scored" and ranks is None:
                continue
            roots = roots_of(mats, strategy)
            root_accuracy[mode][strategy] = sum(int(r == g) for r, g in zip(roots, gold_roots)) / len(roots)
            if strategy == root_strategy:
                pred_roots[mode] = roots
        if mode not in pred_roots:
            pred_roots[mode] = roots_of(mats, root_strategy)

    decoders = _decoders()
    for name in scorings:
        impact_mode, score_mode, kwargs, decoder_names = SCORINGS[name]
        mats = impacts[impact_mode]
        for dec_name in decoder_names:
            dec = decoders[dec_name]
            base = "cle" if dec_name == "cle" else "eisner"
            for root_kind in ("gold", "pred", "free"):
                if dec_name == "eisner-multiroot" and root_kind == "pred":
                    continue
                trees = []
                for i, M in enumerate(mats):
                    forced = {"gold": gold_roots[i], "pred": pred_roots[impact_mode][i], "free": None}[root_kind]
                    extra = dict(kwargs)
                    if score_mode == "official":
                        extra["decoder"] = base
                        if forced is not None:
                            extra["root"] = forced
                    scores = engine.impact_to_scores(M, score_mode, **extra)
                    if name == "kx-prior":
                        scores = scores + positional_prior(M.shape[0] - 1, root=forced, **prior)
                    trees.append(dec(scores, forced))
                add(dec_name, name, root_kind, trees)

    if component:
        add("kx_parser", component["scoring"], "pred",
            _component_trees(engine, impacts[component["mode"]], words, component, ranks))

    n_words = [len(w) for w in words]
    add("right-chain", "-", "none", [right_chain(n) for n in n_words])
    add("right-chain", "-", "gold", [right_chain(n, r) for n, r in zip(n_words, gold_roots)])
    add("right-chain-ref", "-", "gold", [_reference_right_chain(n, r) for n, r in zip(n_words, gold_roots)])
    add("left-chain", "-", "none", [left_chain(n) for n in n_words])
    add("left-chain", "-", "gold", [left_chain(n, r) for n, r in zip(n_words, gold_roots)])
    add("star", "-", "gold", [star(n, r) for n, r in zip(n_words, gold_roots)])
    first_mode = impact_modes[0]
    proots = pred_roots[first_mode]
    add("right-chain", "-", "pred", [right_chain(n, r) for n, r in zip(n_words, proots)])
    add("left-chain", "-", "pred", [left_chain(n, r) for n, r in zip(n_words, proots)])
    add("star", "-", "pred", [star(n, r) for n, r in zip(n_words, proots)])

    return {
        "n_sentences": len(sentences),
        "n_tokens": sum(n_words),
        "rows": rows,
        "root_accuracy": root_accuracy,
        "root_strategy": root_strategy,
        "lang": lang,
        "pred_root_from": first_mode,
        "impact_seconds": timings,
        "settings": {"layers": layers, "distance": distance, "scorings": list(scorings), "prior": prior},
    }


def component_defaults(lang: str = "en") -> Dict:
    """``kx_parser``'s default impact mode, scoring, root strategy (bound to ``lang`` as the
    component binds it to ``nlp.lang``) and decoder (resolved from its DEFAULT_CONFIG, so the
    ``kx_parser`` row follows the component)."""
    from spacy.util import registry

    from ..perturbed.parser import DEFAULT_CONFIG
    from ..perturbed.roots import bind_root_strategy

    resolved = registry.resolve({"decoder": DEFAULT_CONFIG["decoder"],
                                 "root_strategy": DEFAULT_CONFIG["root_strategy"]})
    return {"scoring": DEFAULT_CONFIG["scoring"], "root_strategy": bind_root_strategy(resolved["root_strategy"], lang),
            "mode": DEFAULT_CONFIG["mode"], "decoder": resolved["decoder"]}


def _root_predictors(lang: str) -> Dict:
    """The named root predictors beyond ``predict_root``'s strategies: "language" (kx_parser's
    default for ``lang``) and, where ``lang`` has fitted weights, "lexical"."""
    from ..perturbed.roots import ROOT_WEIGHTS, LanguageRoot, LexicalRoot

    out = {"language": LanguageRoot().for_language(lang)}
    if lang in ROOT_WEIGHTS:
        out["lexical"] = LexicalRoot(lang)
    return out


def _piece_ranks(backbone, words) -> List[List[int]]:
    """Per sentence, per word, the id of its first piece (the "scored" root feature)."""
    from ..perturbed.parser import _first_piece_ids

    return [_first_piece_ids(backbone, w) for w in words]


def _component_trees(engine, mats, words, defaults: Dict, ranks=None) -> List:
    """The trees ``kx_parser`` with its default settings makes from these impact matrices."""
    trees = []
    for i, (M, w) in enumerate(zip(mats, words)):
        root = engine.predict_root(M, defaults["root_strategy"], words=w,
                                   piece_ranks=None if ranks is None else ranks[i])
        extra = {"root": root} if defaults["scoring"] == "symmetric_prior" else {}
        trees.append(defaults["decoder"](engine.impact_to_scores(M, defaults["scoring"], **extra), root))
    return trees


def _reference_right_chain(n: int, root: int) -> List[int]:
    """The official code's right chain: word i -> i + 1, the gold root -> ROOT, so the last
    word points outside the sentence (always wrong) unless it is the root. Not a tree;
    scored only for comparison with published figures."""
    heads = [-1] + [i + 1 for i in range(1, n + 1)]
    heads[root] = 0
    return heads


def format_parser_table(result: Dict) -> str:
    """The rows of ``evaluate_parser`` as a fixed-width text table (percentages)."""
    lines = [
        f"{result['n_sentences']} sentences, {result['n_tokens']} tokens; UAS/UUAS count every "
        f"token (punctuation included); pred root = {result['root_strategy']}",
        f"{'method':<16} {'scores':<15} {'root':<5} {'UAS':>6} {'UUAS':>6} {'UAS-p':>6}",
        "-" * 60,
    ]
    for r in result["rows"]:
        lines.append(
            f"{r['method']:<16} {r['scores']:<15} {r['root']:<5} {100 * r['uas']:6.1f} "
            f"{100 * r['uuas']:6.1f} {100 * r['uas_nopunct']:6.1f}"
        )
    lines.append("(UAS-p: UAS without punctuation; kx_parser: the component's defaults, what "
                 "nlp.add_pipe(\"kx_parser\") gives)")
    lines.append("root accuracy: " + "; ".join(
        f"{mode}: " + ", ".join(f"{k} {100 * v:.1f}" for k, v in accs.items())
        for mode, accs in result["root_accuracy"].items()
    ))
    return "\n".join(lines)


def _parse_layers(text: str):
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise typer.BadParameter(f"--layers takes an int or a comma-separated list of ints, got {text!r}")
    if not values:
        raise typer.BadParameter("--layers is empty")
    return values[0] if len(values) == 1 else values


def _write_json(result: Dict, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf8")


@app.command("evaluate-parser")
def evaluate_parser_cli(
    conllu: Path = typer.Argument(..., help="UD CoNLL-U file (e.g. ${data_dir}/ud/UD_English-EWT/en_ewt-ud-dev.conllu)."),
    output: Path = typer.Option(Path("metrics/parser.json"), "--output", "-o", help="Results JSON."),
    encoder: Optional[str] = typer.Option(None, help="HF name or path of the encoder (default: the packaged MiniLM)."),
    max_words: int = typer.Option(0, help="Only sentences of at most this many words (0 = all); see --max-words-mode."),
    max_words_mode: str = typer.Option("content", help="What --max-words counts: 'content' (non-punctuation words, the WSJ10 convention) or 'all' (every word, as the reference does)."),
    limit: int = typer.Option(0, help="At most this many sentences (after --max-words; 0 = all)."),
    layers: str = typer.Option("-1", help="Hidden layer index, or comma-separated indices to average."),
    distance: str = typer.Option("euclidean", help="Impact distance: euclidean, cosine, manhattan."),
    root_strategy: str = typer.Option("language", help="Root predictor of the pred rows: language (kx_parser's default, kx_spacy.LanguageRoot.v1 bound to --lang), lexical (kx_spacy.LexicalRoot.v1 of --lang), scored (kx_spacy.ScoredRoot.v1 with its default weights), centrality, root_row, in_degree, out_degree."),
    lang: str = typer.Option("en", help="Language of the sentences: the pipeline's language code (the root predictors of the pred and kx_parser rows follow it)."),
    scorings: str = typer.Option(",".join(DEFAULT_SCORINGS), help=f"Comma-separated rows from {list(SCORINGS)}."),
    layer_sets: Optional[str] = typer.Option(None, help="Several layer selections scored from ONE pass over the masked inputs, separated by ';' (e.g. '1;2;3;4;1,2,3,4'); overrides --layers."),
    load_impacts: Optional[Path] = typer.Option(None, help="Decode the matrices a --save-impacts run wrote (same file, --max-words and --limit) instead of running the encoder."),
    batch_size: int = typer.Option(256, help="Most masked inputs per forward."),
    threads: int = typer.Option(DEFAULT_THREADS, help=THREADS_HELP),
    prior_adjacent: float = typer.Option(DEFAULT_PRIOR["adjacent"], help="kx-prior rows: bonus for arcs between neighbours."),
    prior_right: float = typer.Option(DEFAULT_PRIOR["right"], help="kx-prior rows: extra bonus when the head is the next word."),
    prior_hub: float = typer.Option(DEFAULT_PRIOR["hub"], help="kx-prior rows: bonus for arcs from the root word."),
    save_impacts: Optional[Path] = typer.Option(None, help="Also write the impact matrices to this .npz."),
):
    """Perturbed-masking parsing vs right-chain, left-chain and star baselines: UAS / UUAS."""
    from ..backbone import Backbone
    from ..encoders import english_encoder_path
    from ..pipeline_builder import build_pipeline
    from ..readers import read_conllu

    if max_words_mode not in MAX_WORDS_MODES:
        raise typer.BadParameter(f"--max-words-mode is one of {', '.join(MAX_WORDS_MODES)}, not {max_words_mode!r}")
    set_threads(threads)
    sentences = [s for s in read_conllu(conllu, limit=limit, max_words=max_words, count_punct=max_words_mode == "all")
                 if len(s) > 0]
    nlp = build_pipeline(lang, english_encoder_path(encoder))
    backbone = Backbone.from_nlp(nlp, "transformer")
    rows = [s.strip() for s in scorings.split(",") if s.strip()]
    sets = [_parse_layers(part) for part in layer_sets.split(";")] if layer_sets else [_parse_layers(layers)]
    kwargs = dict(scorings=rows, distance=distance, root_strategy=root_strategy, lang=lang, batch_size=batch_size,
                  prior={"adjacent": prior_adjacent, "right": prior_right, "hub": prior_hub})
    given = _load_impacts(load_impacts, len(sentences)) if load_impacts else None
    if layer_sets and not given:
        given_sets = _impacts_for_layer_sets(sentences, backbone, rows, sets, distance, batch_size)
    results = []
    for k, sel in enumerate(sets):
        engine = None
        if given is not None:
            engine = _engine()
            engine.precomputed = given
        elif layer_sets:
            engine = _engine()
            engine.precomputed = {mode: per_set[k] for mode, per_set in given_sets.items()}
        result = evaluate_parser(sentences, backbone, layers=sel, engine=engine,
                                 save_impacts=save_impacts if len(sets) == 1 else None, **kwargs)
        result.update({"data": str(conllu), "encoder": encoder or "minilm", "max_words": max_words,
                       "max_words_mode": max_words_mode, "limit": limit, "threads": threads})
        if len(sets) > 1:
            typer.echo(f"=== layers {sel}")
        typer.echo(format_parser_table(result))
        results.append(result)
    _write_json(results[0] if len(sets) == 1 else {"layer_sets": sets, "results": results}, output)
    typer.echo(f"Wrote {output}")


def _load_impacts(path: Path, n_sentences: int) -> Dict[str, List]:
    """The matrices of a ``--save-impacts`` file, per impact mode, checked against the sentences."""
    import numpy

    from ..errors import KxError

    with numpy.load(path) as data:
        keys = list(data.keys())
        out: Dict[str, List] = {}
        for mode in sorted({k.rsplit("_", 1)[0] for k in keys}):
            count = sum(1 for k in keys if k.rsplit("_", 1)[0] == mode)
            if count != n_sentences:
                raise KxError(f"{path} holds {count} {mode!r} matrices but {n_sentences} sentences were read: "
                              "use the --max-words / --limit of the run that saved it.")
            out[mode] = [data[f"{mode}_{i}"] for i in range(count)]
    return out


def _impacts_for_layer_sets(sentences, backbone, rows, sets, distance, batch_size) -> Dict[str, List]:
    """Per impact mode that the rows (and the kx_parser row) need, per layer selection, the
    matrices of every sentence, from one pass over the masked inputs."""
    from ..perturbed.impact import compute_impacts_layers

    from ..errors import KxError

    unknown = [name for name in rows if name not in SCORINGS]
    if unknown:
        raise KxError(f"Unknown scorings {unknown}; choose from {list(SCORINGS)}.")
    modes = []
    for name in rows + [None]:
        mode = component_defaults()["mode"] if name is None else SCORINGS[name][0]
        if mode not in modes:
            modes.append(mode)
    words = [s.words for s in sentences]
    return {mode: compute_impacts_layers(backbone, words, sets, mode=mode, distance=distance, batch_size=batch_size)
            for mode in modes}


@app.command("fit-root-predictor")
def fit_root_predictor_cli(
    conllu: Path = typer.Argument(..., help="Dev CoNLL-U whose gold roots the weights are fitted to."),
    lang: str = typer.Option("en", help="Lexicon of kx_spacy.perturbed.roots.LEXICONS (en, zh)."),
    max_words: int = typer.Option(0, help="Only sentences of at most this many non-punctuation words (0 = all)."),
    l2: str = typer.Option("0.0001,0.0003,0.001", help="Comma-separated L2 penalties; the best by cross-validation on the file is kept."),
    folds: int = typer.Option(5, help="Cross-validation folds for choosing l2."),
    report: List[Path] = typer.Option([], "--report", help="Other CoNLL-U files to score the fitted predictor on (e.g. test; --max-words applies)."),
    output: Path = typer.Option(Path("metrics/root_weights.json"), "--output", "-o", help="Weights and accuracies JSON."),
    threads: int = typer.Option(DEFAULT_THREADS, help=THREADS_HELP),
):
    """Fit kx_spacy.LexicalRoot.v1 weights to a dev set's gold roots (how ROOT_WEIGHTS were made)."""
    from ..errors import KxError
    from ..perturbed.roots import LexicalRoot, cross_validated_accuracy, fit_root_weights, root_accuracy
    from ..readers import read_conllu

    set_threads(threads)
    try:
        penalties = [float(x) for x in l2.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"--l2 takes comma-separated numbers, not {l2!r}")
    if not penalties:
        raise typer.BadParameter("--l2 is empty")

    def load(path):
        sents = [s for s in read_conllu(path, max_words=max_words) if len(s) > 0]
        return [s.words for s in sents], [s.root for s in sents]

    try:
        words, roots = load(conllu)
        cv = {p: cross_validated_accuracy(words, roots, lang, l2=p, folds=folds) for p in penalties}
        best = max(penalties, key=lambda p: cv[p])
        weights = fit_root_weights(words, roots, lang, l2=best)
        predictor = LexicalRoot(lang, weights)
        scored = {str(conllu): root_accuracy(predictor, words, roots)}
        for path in report:
            scored[str(path)] = root_accuracy(predictor, *load(path))
    except KxError as err:
        typer.echo(f"✘ {type(err).__name__}: {err}", err=True)
        raise typer.Exit(1)
    for p in penalties:
        typer.echo(f"l2 {p:g}: {folds}-fold CV root accuracy {100 * cv[p]:.1f}" + (" (chosen)" if p == best else ""))
    for path, acc in scored.items():
        typer.echo(f"{path}: root accuracy {100 * acc:.1f}")
    _write_json({"lang": lang, "max_words": max_words, "l2": best, "cv": {str(p): v for p, v in cv.items()},
                 "accuracy": scored, "weights": {k: round(v, 2) for k, v in weights.items()}}, output)
    typer.echo(f"Wrote {output}")


# ------------------------------------------------------------------ segmenter
def evaluate_segmenter(
    nlp,
    lines: Sequence[str],
    gold: Sequence[Sequence[str]],
    train_words=None,
    *,
    batch_size: int = 16,
    progress: bool = True,
) -> Dict:
    """Segment ``lines`` with ``nlp`` (``nlp.pipe``, batched) and score them bakeoff-style.

    nlp (Language): a pipeline whose docs' non-space tokens are the predicted words.
    lines (Sequence[str]): input lines (whitespace removed, ``read_sighan(segmented=False)``).
    gold (Sequence[Sequence[str]]): gold words per line.
    train_words (set or None): training word list for OOV recall.
    batch_size (int): docs per ``nlp.pipe`` batch.
    progress (bool): show a progress bar.
    RETURNS (Dict): precision, recall, f, oov_recall, counts, lines, seconds.
    """
    from tqdm import tqdm

    from ..errors import KxError
    from ..scoring import segmentation_scores

    from ..text import clean_lines

    if len(lines) != len(gold):
        raise KxError(f"{len(lines)} input lines but {len(gold)} gold lines; the files must match.")
    # a lone surrogate would crash spaCy's tokenizer and the whole nlp.pipe call: say where first
    lines = list(clean_lines(lines, where="the input lines"))
    start = time.perf_counter()
    pred: List[List[str]] = []
    docs = nlp.pipe(lines, batch_size=batch_size)
    for doc in tqdm(docs, total=len(lines), desc="segmenting", unit="line", disable=not progress):
        pred.append([t.text for t in doc if not t.is_space and t.text.strip()])
    seconds = time.perf_counter() - start
    result = segmentation_scores(pred, gold, train_words)
    chars = sum(map(len, lines))
    result.update({"lines": len(lines), "characters": chars, "seconds": seconds,
                   "chars_per_s": chars / seconds if seconds > 0 else None})
    return result


@app.command("evaluate-segmenter")
def evaluate_segmenter_cli(
    input_path: Path = typer.Argument(..., help="Bakeoff input file (e.g. icwb2/testing/pku_test.utf8)."),
    gold_path: Path = typer.Argument(..., help="Bakeoff gold file (e.g. icwb2/gold/pku_test_gold.utf8)."),
    words_path: Optional[Path] = typer.Option(None, "--words", help="Training word list for OOV recall."),
    output: Path = typer.Option(Path("metrics/segmenter.json"), "--output", "-o", help="Results JSON."),
    encoder: Optional[str] = typer.Option(None, help="HF name or path (default: the shipped character MLM, else a tiny random model)."),
    student: Optional[Path] = typer.Option(None, "--student", help="Instead of kx_segmenter on --encoder: kx_self_trained_segmenter with this student folder (from self-train-segmenter --save-model); no encoder."),
    limit: int = typer.Option(0, help="Only the first N lines (0 = all)."),
    config: str = typer.Option("{}", help="JSON config overrides for kx_segmenter, e.g. '{\"threshold\": 8.0}'."),
    batch_size: int = typer.Option(16, help="Docs per nlp.pipe batch."),
    threads: int = typer.Option(DEFAULT_THREADS, help=THREADS_HELP),
):
    """kx_segmenter on a SIGHAN bakeoff test set: P / R / F and OOV recall."""
    from ..encoders import chinese_encoder_path
    from ..pipeline_builder import build_pipeline
    from ..readers import read_sighan, read_word_list

    set_threads(threads)
    try:
        seg_config = json.loads(config)
    except json.JSONDecodeError as err:
        raise typer.BadParameter(f"--config is not JSON: {err}")
    lines = read_sighan(input_path, segmented=False)
    gold = read_sighan(gold_path)
    if limit:
        lines, gold = lines[:limit], gold[:limit]
    train_words = read_word_list(words_path) if words_path else None
    from ..errors import KxError

    try:
        if student is not None:
            import spacy

            encoder_path = None
            nlp = spacy.blank("zh")
            nlp.add_pipe("kx_self_trained_segmenter", config={"student_path": str(student), **seg_config})
            nlp.initialize()
        else:
            encoder_path = chinese_encoder_path(encoder)
            nlp = build_pipeline("zh", encoder_path, ["kx_segmenter"], configs={"kx_segmenter": seg_config})
        result = evaluate_segmenter(nlp, lines, gold, train_words, batch_size=batch_size)
    except KxError as err:
        typer.echo(f"✘ {type(err).__name__}: {err}", err=True)
        raise typer.Exit(1)
    result.update({"input": str(input_path), "gold": str(gold_path), "encoder": encoder_path,
                   "student": str(student) if student is not None else None,
                   "segmenter": nlp.pipe_names[0], "segmenter_config": seg_config, "limit": limit,
                   "threads": threads})
    oov = result["oov_recall"]
    typer.echo(f"{'lines':>6} {'P':>6} {'R':>6} {'F':>6} {'OOV-R':>6}")
    typer.echo(
        f"{result['lines']:6d} {100 * result['precision']:6.1f} {100 * result['recall']:6.1f} "
        f"{100 * result['f']:6.1f} {'-' if oov is None else f'{100 * oov:.1f}':>6}"
    )
    typer.echo(f"{result['segmenter']}: {encoder_path or student} | {result['chars_per_s']:,.0f} characters/s")
    _write_json(result, output)
    typer.echo(f"Wrote {output}")
