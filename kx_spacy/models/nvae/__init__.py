"""NVAE (Vahdat & Kautz, NeurIPS 2020) and the IWAE paper's MLP VAE baseline, in pure torch.

config (sizes, validation) → layers → cells → distributions → model (the two towers);
regularizers (KL warm-up and balancing, spectral and BN terms); mlp_vae (baseline);
data (MNIST, binarisation); evaluation (importance-weighted NLL, image grids); sampling
(temperature, BN re-adjustment); task (the training-engine task) and experiment (a
time-budgeted NVAE-vs-baseline run).
"""
