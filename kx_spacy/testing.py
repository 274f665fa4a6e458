"""Tiny offline models for tests and demos: nothing here touches the network.

``make_tiny_mlm(path)`` writes a small random ``BertForMaskedLM`` and a WordPiece tokenizer
(English words and sub-words, digits, punctuation and a few hundred common Chinese
characters) to a folder that spacy-transformers loads by path, exactly like a hub name.
``transformer_config(name)`` is the matching ``transformer`` pipe config, and
``make_pipeline(lang, name)`` builds and initialises a blank pipeline around it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Union

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

ENGLISH_WORDS = (
    "the a an of to and in is was it that for on with as by at from this be are were "
    "he she they we you i his her their our my its not no but or if then so than "
    "has have had do does did can could will would should may might must "
    "cat dog bird fish man woman child people city house car tree book word "
    "sat ran saw ate gave took made said went came found read wrote liked "
    "good bad new old big small long short great little happy sad "
    "very quite too also only just still even well here there now today "
    "movie film story plot actor acting music scene time year day night world "
    "love hate like enjoy boring funny beautiful terrible wonderful awful "
    "one two three four five first last many much more most some all every "
    "what which who when where why how about into over under after before "
    "between through during without within along across behind beyond "
    "quick brown fox jumps lazy over mat red blue green park school"
).split()

SUBWORDS = ["##s", "##ed", "##ing", "##ly", "##er", "##est", "##n't", "##'s", "##al", "##ion"]

PUNCT = list(".,;:!?'\"()[]{}-_/\\@#$%&*+=<>~`|") + ["。", "，", "、", "；", "：", "？", "！", "“", "”", "（", "）", "《", "》"]

# A few hundred frequent simplified characters (enough for demo and test sentences).
CHINESE_CHARS = (
    "的一是不了人我在有他这为之大来以个中上们到说国和地也子时道出而要于就下得可你年生自会那后能对着事其里所去行过家十用发天如然作方成者多日都三小军二无同么经法当起与好看学进种将还分此心前面又定见只主没公从知"
    "北京市海淀区南开大学研究生命起源我爱中国人民银行今天气很好喜欢吃苹果电影非常精彩服务态度酒店房间干净味道外卖送餐速度快慢太差价格便宜贵"
    "山水风月花鸟春秋冬夏红绿青白黑金木火土东西上下左右长短高低新旧美丽快乐幸福平安健康工作生活朋友老师同学父母兄弟姐妹孩子"
    "经济发展社会科技文化教育历史政治世界城市农村政府企业公司市场产品质量环境问题重要关系情况部门组织领导群众"
)

DIGITS_AND_LATIN = list("0123456789abcdefghijklmnopqrstuvwxyz") + [f"##{c}" for c in "0123456789abcdefghijklmnopqrstuvwxyz"]


def tiny_vocab() -> list:
    """The tiny tokenizer's vocabulary, specials first, without duplicates."""
    seen: Dict[str, None] = {}
    for token in SPECIAL_TOKENS + ENGLISH_WORDS + SUBWORDS + PUNCT + DIGITS_AND_LATIN + list(CHINESE_CHARS):
        seen.setdefault(token, None)
    return list(seen)


def make_tiny_mlm(
    path: Union[str, Path],
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    max_positions: int = 64,
    seed: int = 0,
    with_mask_token: bool = True,
) -> Path:
    """Write a tiny random BertForMaskedLM and its fast tokenizer to ``path``.

    path (str / Path): output folder (created).
    hidden_size, num_layers, num_heads (int): model size.
    max_positions (int): encoder window, special tokens included (small, so tests can
        exercise documents longer than the window cheaply).
    seed (int): torch seed for the random weights.
    with_mask_token (bool): False writes a tokenizer without a [MASK] token.
    RETURNS (Path): the folder, loadable by ``transformers.AutoModel.from_pretrained``.
    """
    import torch
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab = tiny_vocab()
    if not with_mask_token:
        vocab = [t for t in vocab if t != "[MASK]"]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf8")
    tokenizer = BertTokenizerFast(
        vocab_file=str(path / "vocab.txt"),
        do_lower_case=True,
        tokenize_chinese_chars=True,
        mask_token="[MASK]" if with_mask_token else None,
        model_max_length=max_positions,
    )
    if not with_mask_token:
        tokenizer.mask_token = None
    tokenizer.save_pretrained(str(path))
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=hidden_size * 2,
        max_position_embeddings=max_positions,
        pad_token_id=0,
    )
    BertForMaskedLM(config).save_pretrained(str(path))
    return path


def transformer_config(name: str, *, window: int = 24, stride: int = 16, max_batch_items: int = 4096) -> dict:
    """Config of a spacy-transformers ``transformer`` pipe loading ``name`` (path or hub name).

    window / stride (int): the pipe's strided span getter, in spaCy tokens.
    """
    return {
        "max_batch_items": max_batch_items,
        "model": {
            "@architectures": "spacy-transformers.TransformerModel.v3",
            "name": str(name),
            "mixed_precision": False,
            "get_spans": {"@span_getters": "spacy-transformers.strided_spans.v1", "window": window, "stride": stride},
            "tokenizer_config": {"use_fast": True},
            "transformer_config": {},
        },
    }


def make_pipeline(lang: str, name: Union[str, Path], *, before: Optional[list] = None, **trf_settings):
    """A blank ``lang`` pipeline with a transformer pipe on ``name``, initialised.

    before (list of (factory, config) or None): pipes to add before the transformer
        (e.g. the segmenter, which must run on characters first).
    """
    import spacy

    nlp = spacy.blank(lang)
    for factory, config in before or []:
        nlp.add_pipe(factory, config=config or {})
    nlp.add_pipe("transformer", config=transformer_config(str(name), **trf_settings))
    nlp.initialize()
    return nlp
