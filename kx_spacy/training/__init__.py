"""Utilities shared by every training loop (gradient clipping)."""
