"""Dataset loaders on tiny files in the real on-disk formats, written by the tests."""

import gzip
import pickle
import struct

import numpy as np
import pytest

from fedmia.data import DATASETS, load_dataset
from fedmia.data import datasets as datasets_module
from fedmia.errors import FedmiaError


def write_idx(path, array: np.ndarray, compress: bool) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def write_mnist_like(folder, train: int = 6, test: int = 4, compress: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, count in (("train", train), ("t10k", test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (count, 28, 28)), compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", np.arange(count) % 10, compress)


def check_pool(pool, size: int, shape: tuple, classes: int) -> None:
    assert pool.images.shape == (size, *shape) and pool.images.dtype == np.float32
    assert 0.0 <= pool.images.min() and pool.images.max() <= 1.0
    assert pool.labels.dtype == np.int64 and len(pool) == size and pool.num_classes == classes


def test_digits_is_the_bundled_default():
    check_pool(load_dataset("digits"), 1797, (1, 8, 8), 10)


@pytest.mark.parametrize("compress", [False, True])
def test_fashion_mnist_from_plain_or_gzipped_idx_in_a_data_dir(tmp_path, compress):
    write_mnist_like(tmp_path, compress=compress)
    pool = load_dataset("fashion-mnist", tmp_path)
    check_pool(pool, 10, (1, 28, 28), 10)
    assert pool.labels.tolist() == [0, 1, 2, 3, 4, 5, 0, 1, 2, 3]
    assert all(p.name.endswith(".gz") == compress for p in tmp_path.iterdir()), "no copies written"


def test_fashion_mnist_from_the_environment_and_the_debian_folder(tmp_path, monkeypatch):
    write_mnist_like(tmp_path / "debian", compress=True)
    monkeypatch.setattr(datasets_module, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "debian")
    loader = datasets_module._idx_loader("fashion-mnist", "FashionMNIST", (tmp_path / "debian",))
    monkeypatch.delenv("FEDMIA_DATA", raising=False)
    check_pool(loader(None, False), 10, (1, 28, 28), 10)
    write_mnist_like(tmp_path / "env", train=3, test=2)
    monkeypatch.setenv("FEDMIA_DATA", str(tmp_path / "env"))
    check_pool(loader(None, False), 5, (1, 28, 28), 10)


def test_mnist_from_torchvisions_layout(tmp_path):
    write_mnist_like(tmp_path / "MNIST" / "raw")
    check_pool(load_dataset("mnist", tmp_path), 10, (1, 28, 28), 10)


def write_cifar(root, folder: str, files: list[str], label_key: bytes, classes: int) -> None:
    (root / folder).mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in files:
        batch = {b"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8),
                 label_key: [int(v) for v in rng.integers(0, classes, 3)]}
        with open(root / folder / name, "wb") as handle:
            pickle.dump(batch, handle)


def test_cifar10_and_cifar100_from_their_pickle_layouts(tmp_path):
    write_cifar(tmp_path, "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"],
                b"labels", 10)
    write_cifar(tmp_path, "cifar-100-python", ["train", "test"], b"fine_labels", 100)
    check_pool(load_dataset("cifar10", tmp_path), 18, (3, 32, 32), 10)
    check_pool(load_dataset("cifar100", tmp_path), 6, (3, 32, 32), 100)


@pytest.mark.parametrize("name", [n for n in DATASETS if n != "digits"])
def test_missing_data_is_a_one_line_error_saying_how_to_get_it(tmp_path, monkeypatch, name):
    monkeypatch.delenv("FEDMIA_DATA", raising=False)
    monkeypatch.setattr(datasets_module, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "absent")
    loader = DATASETS[name] if name != "fashion-mnist" else datasets_module._idx_loader(
        "fashion-mnist", "FashionMNIST", (tmp_path / "absent",), "apt-get install dataset-fashion-mnist")
    with pytest.raises(FedmiaError) as error:
        loader(tmp_path, False)
    message = str(error.value)
    assert "\n" not in message and ("--download" in message or "apt-get" in message)


def test_corrupt_idx_files_are_user_errors(tmp_path):
    write_mnist_like(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x0d\x03" + b"\x00" * 20)
    with pytest.raises(FedmiaError, match="not an IDX file"):
        load_dataset("mnist", tmp_path)
    write_mnist_like(tmp_path)
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(FedmiaError, match="truncated"):
        load_dataset("mnist", tmp_path)


def test_unknown_dataset_names_the_choices():
    with pytest.raises(FedmiaError, match="digits"):
        load_dataset("imagenet")
