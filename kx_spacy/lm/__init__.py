"""Language-modelling tasks and experiments on the training engine (character LM, clipping)."""
