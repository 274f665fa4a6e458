"""Chinese word segmentation with no gold data: a student self-trained on teachers' confident
pair scores (`kx_spacy self-train-segmenter`).

teachers: pair scores of branching_entropy (nVBE), bigram PMI and mlm_impacts (perturbed
masking with a character MLM), rank-averaged; self_training: pseudo-labels and the boundary
classifier; workflow: the command's work as a library function. The impact rule itself is the
``kx_segmenter`` pipe in :mod:`kx_spacy.perturbed.segmenter`.
"""
