"""Perturbed masking (Wu et al., ACL 2020) over the shared encoder, with no training.

impact: the batched impact engine; trees: tree decoders and baselines; roots: the lexical,
language-aware root predictors; parser: the ``kx_parser`` pipe; segmenter: the ``kx_segmenter`` pipe.
"""
