"""Stop-safe generation (issue 11): output layers, decoding strategies and the kx_generator pipe.

Importing this package imports nothing heavy; ``output_layers`` and ``decoding`` import torch.
"""
