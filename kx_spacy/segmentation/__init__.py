"""Chinese word segmentation with no gold data: a student self-trained on teachers' confident
pair scores (`kx_spacy self-train-segmenter`).

teachers: pair scores of branching_entropy (nVBE), bigram PMI and mlm_impacts (perturbed
masking with a character MLM), rank-averaged; self_training: pseudo-labels and the boundary
classifier; decoding: the student's pair scores to words (per-pair threshold, or a semi-Markov
Viterbi under a word-length prior from its own output); student: the saved, versioned model the
``kx_self_trained_segmenter`` pipe (component) loads; workflow: the command's work as a library function. The impact rule itself is the
``kx_segmenter`` pipe in :mod:`kx_spacy.perturbed.segmenter`.
"""
