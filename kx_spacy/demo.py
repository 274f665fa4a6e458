"""The demo behind `kx_spacy demo` (the README's first command).

Builds one English pipeline on the packaged MiniLM encoder and one Chinese pipeline on the
project's character MLM, runs every kx component and prints what each computed. Each
component's section is a function below; all share the same pipelines and the ONE
transformer pipe in each.
"""
from __future__ import annotations

import html
from contextlib import nullcontext
from typing import Optional

from .demo_page import DemoPage, add_html, set_current

EN_TEXT = "The quick brown fox jumps over the lazy dog. I liked this movie very much."
ZH_TEXT = "我爱北京天安门。今天天气很好，我们去公园散步。"


def _heading(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 70 - len(title)))


def _demo_transformer(en, zh) -> None:
    """What the shared transformer produced (the foundation)."""
    from .backbone import Backbone

    for label, nlp, text in (("English", en, EN_TEXT), ("Chinese", zh, ZH_TEXT)):
        doc = nlp(text)
        backbone = Backbone.from_nlp(nlp)
        pieces = backbone.doc_wordpieces(doc)
        cfg = backbone.config
        print(
            f"{label}: pipes={nlp.pipe_names} encoder={cfg.model_type} layers={cfg.num_hidden_layers} "
            f"width={cfg.hidden_size} window={backbone.max_positions} device={backbone.device} dtype={backbone.dtype}"
        )
        print(f"  {len(doc)} tokens -> {int(pieces.attention_mask.sum())} word pieces in {pieces.input_ids.shape[0]} span(s)")
        first = doc._.trf_data.model_output.last_hidden_state[0][0][:4]
        print(f"  first piece's last-layer vector starts {[round(x.item(), 3) for x in first]}")


def _demo_perturbed(en, zh) -> None:
    """kx_segmenter / kx_parser (issue 3)."""
    import spacy

    from .testing import transformer_config

    if "kx_parser" not in en.pipe_names:
        en.add_pipe("kx_parser")
    doc = en(EN_TEXT)
    print(f"English: {en.pipe_names}; one tree per doc.sents (none set here: the doc is one sentence)")
    print("  " + " ".join(f"{t.text}<-{t.head.text if t.head.i != t.i else 'ROOT'}" for t in doc))
    print(f"  doc._.kx_parse: {doc._.kx_parse}")
    add_html(spacy.displacy.render(doc, style="dep", jupyter=False, options={"compact": True, "distance": 90}),
             "kx_parser on the English demo sentence (displaCy)")
    # The segmenter must run before the transformer: a new zh pipeline whose transformer
    # loads the same encoder weights as the demo's Chinese pipeline.
    encoder = zh.config["components"]["transformer"]["model"]["name"]
    seg = spacy.blank("zh")
    seg.add_pipe("kx_segmenter")
    seg.add_pipe("transformer", config=transformer_config(encoder, window=128, stride=96))
    seg.initialize()
    words = [t.text for t in seg(ZH_TEXT)]
    print(f"Chinese: {seg.pipe_names}; calibrated threshold (each line's 60th percentile of pair impacts)")
    print("  " + " / ".join(words))
    add_html(" / ".join(html.escape(w) for w in words), "kx_segmenter on the Chinese demo line")


def _demo_attribution(en, zh) -> None:
    """kx_attributor (issue 5)."""
    from .attribution.textcat import add_textcat, train_head

    train = [
        ("I liked this movie very much.", 1), ("A wonderful, funny and beautiful film.", 1),
        ("The acting was great and the story was good.", 1), ("I enjoy every scene of it.", 1),
        ("What a happy, lovely little story.", 1), ("The music was wonderful.", 1),
        ("A terrible, boring film.", 0), ("I hate this awful movie.", 0),
        ("The plot was bad and the acting was worse.", 0), ("Boring scenes and a sad, long story.", 0),
        ("The worst film of the year.", 0), ("Awful music and terrible acting.", 0),
    ]
    data = [(t, {"POSITIVE": float(y), "NEGATIVE": float(1 - y)}) for t, y in train]
    add_textcat(en, data)
    loss = train_head(en, data, steps=60)
    en.add_pipe("kx_attributor")
    print(
        f"English textcat (mean pooling over the frozen encoder) trained here for 60 steps on "
        f"{len(train)} demo sentences (loss {loss:.3f}), not on SST-2: `spacy project run "
        f"train-textcat` trains the real one."
    )
    from .attribution.render import render_attributions

    docs = []
    for text in ("I liked this movie very much.", "The plot was boring but the music was wonderful."):
        doc = en(text)
        docs.append(doc)
        for label, rec in doc._.kx_attributions.items():
            print(
                f"  {text!r}: {label} F(x)={rec['f_x']:.3f} F(x')={rec['f_baseline']:.3f} "
                f"completeness error {rec['error']:.2e} ({rec['error_kind']}) in {rec['steps']} steps"
            )
            print("   " + " ".join(f"{t.text}:{t._.kx_attribution:+.3f}" for t in doc))
    add_html(render_attributions(docs, title="kx_attributor: integrated gradients per token"))


GENERATOR_MODELS = {  # shipped (kx_spacy/assets, see kx_spacy.generation.shipped); env: a trained pipeline instead
    "couplet": ("KX_GENERATOR_ZH", "zh_couplets", "风弦未拨心先乱"),
    "title": ("KX_GENERATOR_EN", "en_titles",
              "The space agency said on Monday that the shuttle launch was delayed by bad weather."),
}


def _demo_generation(en, zh) -> None:
    """kx_generator (issue 11): a couplet's lower line and an English title, and how each stopped."""
    import os

    import spacy

    from .errors import KxError
    from .generation.shipped import add_shipped_generator, shipped_path

    for what, (env, shipped, text) in GENERATOR_MODELS.items():
        if os.environ.get(env):
            nlp, where = spacy.load(os.environ[env]), os.environ[env]
        else:
            nlp, where = (zh if what == "couplet" else en), f"shipped {shipped_path(shipped)}"
            try:
                if "kx_generator" not in nlp.pipe_names:
                    add_shipped_generator(nlp, shipped)
            except KxError as err:
                print(f"{what}: no shipped generator for this pipeline ({err})")
                continue
        pipe = nlp.get_pipe("kx_generator")
        gen = nlp(text)._.kx_generation
        bound = pipe.termination_bound()
        print(f"{what} ({where}, {pipe.model.attrs['output_kind']} layer, t* = {bound.t_star}):")
        print(f"  {text} -> {gen['text']}  [stopped_by = {gen['stopped_by']} after {gen['n_steps']} steps, "
              f"log p = {gen['log_prob']:.2f}]")


WORKFLOW_FIGURES = (  # PNGs the project commands write into $KX_FIGURES_DIR (default metrics/), when made
    ("bench_attention_cpu.png", "bench-attention: kx linear attention vs SDPA (time, memory, decoding)"),
    ("bench_clipping.png", "bench-clipping: character LM loss vs step, no / per-array / global / smooth clipping"),
    ("nvae_samples", "sample-nvae: NVAE samples"),
)


def _demo_figures(en, zh) -> None:
    """Figures from the workflow runs (attention benchmark, clipping, NVAE samples), when made."""
    import os
    from pathlib import Path

    from .demo_page import add_image

    for name, caption in WORKFLOW_FIGURES:
        p = path = Path(os.environ.get("KX_FIGURES_DIR", "metrics")) / name
        pngs = sorted(p.glob("*.png")) if p.is_dir() else ([p] if p.exists() else [])
        if not pngs:
            print(f"{caption}: not made yet ({path}); `spacy project run {caption.split(':')[0]}` makes it")
        for png in pngs:
            print(f"{caption}: {png}")
            add_image(png, f"{caption} ({png.name})")


def run_demo(english_model: Optional[str] = None, chinese_model: Optional[str] = None,
             html_path: Optional[str] = None) -> None:
    """Build the demo pipelines, run every section; with ``html_path`` also write one page."""
    from .encoders import chinese_encoder_path, english_encoder_path
    from .testing import make_pipeline

    import transformers

    transformers.logging.set_verbosity_error()  # e.g. "weights not initialised: pooler": expected, not news
    page = DemoPage("kx_spacy demo") if html_path else None
    set_current(page)

    en_name = english_encoder_path(english_model)
    zh_name = chinese_encoder_path(chinese_model)
    _heading("Pipelines")
    print(f"English encoder: {en_name}\nChinese encoder: {zh_name}")
    en = make_pipeline("en", en_name, window=128, stride=96)
    zh = make_pipeline("zh", zh_name, window=128, stride=96)
    for title, section in (
        ("Shared transformer", _demo_transformer),
        ("Perturbed masking: kx_segmenter, kx_parser", _demo_perturbed),
        ("Integrated gradients: kx_attributor", _demo_attribution),
        ("Stop-safe generation: kx_generator", _demo_generation),
        ("Figures from the workflow", _demo_figures),
    ):
        _heading(title)
        with page.section(title) if page else nullcontext():
            section(en, zh)
    if page:
        set_current(None)
        print(f"\nDemo page written to {page.write(html_path)}")
