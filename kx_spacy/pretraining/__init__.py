"""Masked-language-model pretraining from raw text (`kx_spacy pretrain-mlm`), and a segmenter
self-trained with no gold data (`kx_spacy self-train-segmenter`).

corpus (streaming readers) -> vocab -> masking -> model -> loop (+ checkpoint), configured by
config. teachers score adjacent character pairs (perturbed masking with the pretrained MLM,
branching_entropy, PMI); self_training turns their confident scores into a boundary classifier.
"""
