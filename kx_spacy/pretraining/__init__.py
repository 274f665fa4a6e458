"""Masked-language-model pretraining from raw text (`kx_spacy pretrain-mlm`).

corpus (streaming readers) -> vocab -> masking -> model -> loop (the MLM task on the
:mod:`kx_spacy.training` engine), configured by config. The segmenter self-trained on the pretrained MLM lives in :mod:`kx_spacy.segmentation`.
"""
