"""perturbed"""
