"""Masked-language-model pretraining from raw text (`kx_spacy pretrain-mlm`).

corpus (streaming readers) -> vocab -> masking -> model -> loop (+ checkpoint), configured by
config; self_training makes a segmenter from pseudo-labels with no gold data.
"""
