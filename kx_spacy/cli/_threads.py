"""The one ``--threads`` option of the perturbed-masking and segmentation commands."""

DEFAULT_THREADS = 1
THREADS_HELP = "torch CPU threads (0 = torch's default, all cores)."


def set_threads(threads: int) -> None:
    """Set torch's intra-op threads (0 leaves torch's default)."""
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
