"""MNIST readers and the two binarisation protocols (no real data needed)."""
import gzip
import struct

import numpy as np
import pytest

from kx_spacy.models.nvae.config import NVAEError
from kx_spacy.models.nvae.data import (
    DynamicBinarizedBatches,
    binarize_fixed,
    load_mnist_test,
    load_mnist_train,
    read_idx_images,
    to_unit,
)


def _grey(n=20, size=28, seed=0):
    return np.random.Generator(np.random.PCG64(seed)).integers(0, 256, (n, size, size), dtype=np.uint8)


def write_fake_mnist(root, n_train=30, n_test=12):
    """A data folder laid out as ../shared/data/mnist (npz training parts, IDX test file)."""
    d = root / "mnist"
    d.mkdir(parents=True)
    train = _grey(n_train, seed=1)
    for i, part in enumerate(np.array_split(train, 6)):
        np.savez(d / f"train_images_recon_{i}.npz", images=part)
    test = _grey(n_test, seed=2)
    with gzip.open(d / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 2051, n_test, 28, 28) + test.tobytes())
    return train, test


def test_readers_on_a_fake_data_folder(tmp_path):
    train, test = write_fake_mnist(tmp_path)
    assert np.array_equal(load_mnist_train(tmp_path), train)
    assert np.array_equal(load_mnist_test(tmp_path / "mnist"), test)
    with pytest.raises(NVAEError, match="not found"):
        load_mnist_test(tmp_path / "nowhere")


def test_bad_idx_file(tmp_path):
    p = tmp_path / "x.gz"
    with gzip.open(p, "wb") as f:
        f.write(struct.pack(">IIII", 2049, 1, 28, 28) + bytes(784))
    with pytest.raises(NVAEError, match="magic"):
        read_idx_images(p)
    with gzip.open(p, "wb") as f:
        f.write(struct.pack(">IIII", 2051, 2, 28, 28) + bytes(784))
    with pytest.raises(NVAEError, match="header"):
        read_idx_images(p)


def test_fixed_binarisation_is_reproducible_and_unbiased():
    images = _grey(200)
    a, b = binarize_fixed(images, seed=0), binarize_fixed(images, seed=0)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, binarize_fixed(images, seed=1))
    assert a.shape == (200, 1, 28, 28) and set(np.unique(a)) <= {0.0, 1.0}
    assert abs(a.mean() - to_unit(images).mean()) < 0.01
    # pure black and pure white pixels are never flipped
    edge = np.zeros((1, 28, 28), np.uint8)
    edge[0, :14] = 255
    e = binarize_fixed(edge)
    assert e[0, 0, :14].min() == 1.0 and e[0, 0, 14:].max() == 0.0


def test_dynamic_binarisation_changes_every_epoch_and_shards_are_disjoint():
    images = _grey(40)
    data = DynamicBinarizedBatches(images, batch_size=5, seed=0)
    e0 = np.concatenate(list(data.epoch(0)))
    e0_again = np.concatenate(list(data.epoch(0)))
    e1 = np.concatenate(list(data.epoch(1)))
    assert e0.shape == (40, 1, 28, 28)
    assert np.array_equal(e0, e0_again)  # reproducible for resume
    assert not np.array_equal(e0, e1)
    r0 = list(DynamicBinarizedBatches(images, 4, seed=0).epoch(0, rank=0, world=2))
    r1 = list(DynamicBinarizedBatches(images, 4, seed=0).epoch(0, rank=1, world=2))
    assert len(r0) == len(r1) == 5


@pytest.mark.parametrize("bad", [np.zeros((4, 28, 28), np.float32), np.zeros((28, 28), np.uint8),
                                 np.zeros((0, 28, 28), np.uint8), [[1, 2]]])
def test_wrong_image_arrays_are_clear_errors(bad):
    with pytest.raises(NVAEError):
        binarize_fixed(bad)


def test_batch_larger_than_the_data():
    with pytest.raises(NVAEError, match="larger than the data"):
        DynamicBinarizedBatches(_grey(10), batch_size=11)
    data = DynamicBinarizedBatches(_grey(10), batch_size=6)
    with pytest.raises(NVAEError, match="world"):
        list(data.epoch(0, rank=0, world=2))
    with pytest.raises(NVAEError):
        DynamicBinarizedBatches(_grey(10), batch_size=0)
