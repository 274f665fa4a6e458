"""Pure-torch models. Nothing here imports spaCy or thinc; architectures.py wraps them."""
