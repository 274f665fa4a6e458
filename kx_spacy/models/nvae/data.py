"""MNIST from the data directory, and the two binarisation protocols.

- Training images: ``train_images_recon_{0..5}.npz`` (key ``images``, uint8 N×28×28), falling
  back to ``train-images-idx3-ubyte.gz`` if present; **dynamically** binarised (a fresh
  Bernoulli draw of every pixel each time a batch is made).
- Test images: ``t10k-images-idx3-ubyte.gz``, binarised **once** with a fixed seed
  (``binarize_fixed``; numpy PCG64, seed 0 by default), so every evaluation sees the same
  binary images. Dynamic- and static-binarisation figures are not comparable.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np

from .config import NVAEError

TEST_SEED = 0


def read_idx_images(path: Union[str, Path]) -> np.ndarray:
    """Read an IDX3 image file (optionally .gz) into ``uint8 [N, H, W]``."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 16:
        raise NVAEError(f"{path}: too short for an IDX image file")
    magic, n, h, w = struct.unpack(">IIII", data[:16])
    if magic != 2051:
        raise NVAEError(f"{path}: not an IDX3 image file (magic {magic}, expected 2051)")
    if len(data) != 16 + n * h * w:
        raise NVAEError(f"{path}: {len(data) - 16} pixel bytes, header says {n}×{h}×{w}")
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(n, h, w)


def _mnist_dir(data_dir: Union[str, Path]) -> Path:
    d = Path(data_dir)
    if (d / "mnist").is_dir():
        d = d / "mnist"
    if not d.is_dir():
        raise NVAEError(f"MNIST directory not found: {d} (set data_dir to the folder holding mnist/)")
    return d


def load_mnist_train(data_dir: Union[str, Path]) -> np.ndarray:
    """The 60,000 training images, ``uint8 [N, 28, 28]``.

    data_dir (str | Path): the data folder (or its ``mnist/`` subfolder).
    RETURNS (np.ndarray): the images in the original order.
    """
    d = _mnist_dir(data_dir)
    parts = sorted(d.glob("train_images_recon_*.npz"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    if parts:
        arrays = []
        for p in parts:
            with np.load(p) as z:
                if "images" not in z:
                    raise NVAEError(f"{p}: no 'images' array")
                arrays.append(z["images"])
        images = np.concatenate(arrays)
    elif (d / "train-images-idx3-ubyte.gz").exists():
        images = read_idx_images(d / "train-images-idx3-ubyte.gz")
    else:
        raise NVAEError(f"no MNIST training images in {d} (train_images_recon_*.npz or train-images-idx3-ubyte.gz)")
    return check_uint8_images(images, "training images")


def load_mnist_test(data_dir: Union[str, Path]) -> np.ndarray:
    """The 10,000 test images, ``uint8 [N, 28, 28]`` (exact IDX file)."""
    d = _mnist_dir(data_dir)
    path = d / "t10k-images-idx3-ubyte.gz"
    if not path.exists():
        raise NVAEError(f"MNIST test images not found: {path}")
    return check_uint8_images(read_idx_images(path), "test images")


def check_uint8_images(images: np.ndarray, what: str = "images") -> np.ndarray:
    """Check ``uint8 [N, H, W]`` (or ``[N, C, H, W]``) grey-level images."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim not in (3, 4):
        desc = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise NVAEError(f"{what} must be a uint8 array [N, H, W] or [N, C, H, W], got {desc}")
    if images.shape[0] == 0:
        raise NVAEError(f"{what}: no images")
    return images


def to_unit(images: np.ndarray) -> np.ndarray:
    """uint8 grey levels → float32 in [0, 1] with a channel axis ``[N, C, H, W]``."""
    images = check_uint8_images(images)
    x = images.astype(np.float32) / 255.0
    return x[:, None] if x.ndim == 3 else x


def binarize_fixed(images: np.ndarray, seed: int = TEST_SEED) -> np.ndarray:
    """Binarise once: pixel ~ Bernoulli(grey / 255) with numpy PCG64(seed); float32 {0, 1}
    ``[N, 1, H, W]``. The same seed always gives the same images."""
    p = to_unit(images)
    rng = np.random.Generator(np.random.PCG64(seed))
    return (rng.random(p.shape, dtype=np.float32) < p).astype(np.float32)


class DynamicBinarizedBatches:
    """Shuffled mini-batches of freshly binarised images, sharded across ranks.

    images (np.ndarray): ``uint8 [N, H, W]`` grey levels.
    batch_size (int): images per batch on each rank (≤ N / world).
    seed (int): base seed; the order and the binarisation depend on (seed, epoch, rank).
    drop_last (bool): drop the last incomplete batch (keeps BN statistics steady).
    """

    def __init__(self, images: np.ndarray, batch_size: int, seed: int = 0, drop_last: bool = True) -> None:
        self.probs = to_unit(images)
        n = self.probs.shape[0]
        if batch_size < 1:
            raise NVAEError(f"batch_size must be ≥ 1, got {batch_size}")
        if batch_size > n:
            raise NVAEError(f"batch_size {batch_size} is larger than the data ({n} images)")
        self.batch_size = batch_size
        self.seed = seed
        self.drop_last = drop_last

    def __len__(self) -> int:
        return self.probs.shape[0]

    def epoch(self, epoch: int, rank: int = 0, world: int = 1) -> Iterator[np.ndarray]:
        """One epoch of this rank's shard: float32 ``[B, 1, H, W]`` binary batches."""
        n = self.probs.shape[0]
        if self.batch_size * world > n:
            raise NVAEError(
                f"batch_size {self.batch_size} × world {world} is larger than the data ({n} images)"
            )
        order = np.random.Generator(np.random.PCG64([self.seed, epoch])).permutation(n)
        shard = order[rank::world][: n // world]  # equal shard sizes: no rank waits on another
        rng = np.random.Generator(np.random.PCG64([self.seed, epoch, rank, 1]))
        stop = len(shard) - (len(shard) % self.batch_size if self.drop_last else 0)
        for i in range(0, stop, self.batch_size):
            p = self.probs[shard[i : i + self.batch_size]]
            yield (rng.random(p.shape, dtype=np.float32) < p).astype(np.float32)


def first(images: np.ndarray, limit: Optional[int]) -> np.ndarray:
    """The first ``limit`` images (all when limit is None or 0)."""
    if limit is None or limit <= 0:
        return images
    return images[:limit]
