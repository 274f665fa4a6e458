"""Text classifiers that listen to the shared transformer: configs for tests, demos and the
``train-textcat`` workflow (the trained configs live in ``configs/textcat/``)."""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Tuple

POOLINGS = ("mean", "max", "first", "last")


def textcat_config(
    *,
    exclusive: bool = True,
    reductions: Sequence[str] = ("mean",),
    architecture: str = "reduce",
    upstream: str = "*",
    grad_factor: float = 1.0,
) -> Dict:
    """Config of a textcat pipe whose tok2vec is a TransformerListener.

    exclusive (bool): one label per doc (``textcat``) or several (``textcat_multilabel``).
    reductions (Sequence[str]): pooling of ``spacy.TextCatReduce.v1`` ("mean", "max",
        "first", "last").
    architecture (str): "reduce" (``spacy.TextCatReduce.v1``), "cnn"
        (``spacy.TextCatCNN.v2``) or "ensemble" (``spacy.TextCatEnsemble.v2``).
    upstream (str): name of the transformer pipe, or "*".
    grad_factor (float): the listener's gradient factor.
    RETURNS (dict): the pipe config.
    """
    listener = {
        "@architectures": "spacy-transformers.TransformerListener.v1",
        "grad_factor": grad_factor,
        "pooling": {"@layers": "reduce_mean.v1"},
        "upstream": upstream,
    }
    if architecture == "reduce":
        model = {
            "@architectures": "spacy.TextCatReduce.v1",
            "exclusive_classes": exclusive,
            "use_reduce_first": "first" in reductions,
            "use_reduce_last": "last" in reductions,
            "use_reduce_max": "max" in reductions,
            "use_reduce_mean": "mean" in reductions,
            "tok2vec": listener,
        }
    elif architecture == "cnn":
        model = {"@architectures": "spacy.TextCatCNN.v2", "exclusive_classes": exclusive, "tok2vec": listener}
    elif architecture == "ensemble":
        model = {
            "@architectures": "spacy.TextCatEnsemble.v2",
            "tok2vec": listener,
            "linear_model": {
                "@architectures": "spacy.TextCatBOW.v3",
                "exclusive_classes": exclusive,
                "ngram_size": 1,
                "no_output_layer": False,
                "length": 4096,
            },
        }
    else:
        raise ValueError(f"Unknown textcat architecture {architecture!r}.")
    return {"model": model}


def add_textcat(
    nlp,
    examples: Iterable[Tuple[str, Dict[str, float]]],
    *,
    name: Optional[str] = None,
    exclusive: bool = True,
    random_seed: Optional[int] = None,
    random_scale: float = 1.0,
    **config,
):
    """Add a listening textcat to an initialised transformer pipeline and initialise it.

    nlp (Language): a pipeline with a transformer pipe.
    examples (Iterable[Tuple[str, Dict[str, float]]]): (text, cats) pairs to take labels
        and shapes from.
    name (str or None): pipe name (default "textcat" / "textcat_multilabel").
    exclusive (bool): textcat or textcat_multilabel.
    random_seed (int or None): if set, fill the head's weights with random normal values
        (an untrained head whose scores vary, for tests and demos).
    random_scale (float): their standard deviation.
    **config: passed to ``textcat_config``.
    RETURNS (TextCategorizer): the pipe.
    """
    from spacy.training import Example

    factory = "textcat" if exclusive else "textcat_multilabel"
    pipe = nlp.add_pipe(factory, name=name or factory, config=textcat_config(exclusive=exclusive, **config))
    egs: List[Example] = [Example.from_dict(nlp.make_doc(t), {"cats": c}) for t, c in examples]
    for eg in egs:
        for label in eg.reference.cats:
            pipe.add_label(label)
    # Initialise only the new pipe (the transformer keeps its weights).
    docs = [nlp.make_doc(eg.reference.text) for eg in egs]
    trf_names = [n for n, p in nlp.components if n != pipe.name and hasattr(p, "listeners")]
    for trf in trf_names:
        docs = list(nlp.get_pipe(trf).pipe(docs))
    init_egs = [Example(doc, eg.reference) for doc, eg in zip(docs, egs)]
    pipe.initialize(lambda: init_egs, nlp=nlp)
    if random_seed is not None:
        import numpy

        rng = numpy.random.default_rng(random_seed)
        for node in pipe.model.walk():
            for param in node.param_names:
                if node.has_param(param):
                    value = node.get_param(param)
                    noise = rng.normal(0.0, random_scale, value.shape).astype(value.dtype)
                    node.set_param(param, node.ops.asarray(noise))
    return pipe


def train_head(nlp, examples: Iterable[Tuple[str, Dict[str, float]]], *, pipe: str = "textcat", steps: int = 40, learn_rate: float = 0.01, seed: int = 0) -> float:
    """Train only the textcat head for a few steps, the transformer frozen (for demos).

    The transformer runs once on the examples; the head reads ``doc._.trf_data`` as it
    does with a frozen, annotating transformer in ``spacy train``.
    RETURNS (float): the last loss.
    """
    from spacy.training import Example
    from thinc.api import Adam, fix_random_seed

    fix_random_seed(seed)
    examples = list(examples)
    trf_names = [n for n, p in nlp.components if n != pipe and hasattr(p, "listeners")]
    docs = [nlp.make_doc(t) for t, _ in examples]
    for trf in trf_names:
        docs = list(nlp.get_pipe(trf).pipe(docs))
    egs = [Example(doc, nlp.make_doc(t)) for doc, (t, _) in zip(docs, examples)]
    for eg, (_, c) in zip(egs, examples):
        eg.reference.cats = dict(c)
    component = nlp.get_pipe(pipe)
    optimizer = Adam(learn_rate)
    loss = 0.0
    for _ in range(steps):
        losses: Dict[str, float] = {}
        component.update(egs, sgd=optimizer, losses=losses, drop=0.0)
        loss = losses.get(pipe, 0.0)
    return loss
