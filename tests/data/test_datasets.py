"""Dataset loaders on tiny files in the real on-disk formats, written by the tests."""

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from fedmia.data import DATASETS, ArrayDataset, load_dataset
from fedmia.data import datasets as datasets_module
from fedmia.errors import FedmiaError

IDX_IMAGES, IDX_LABELS = 0x00000803, 0x00000801
FILE_DATASETS = [name for name in DATASETS if name != "digits"]


@pytest.fixture(autouse=True)
def no_data_outside_tmp(tmp_path, monkeypatch):
    """Loaders also search $FEDMIA_DATA, system folders and the download folder: keep the
    machine's own copies out of these tests."""
    monkeypatch.delenv("FEDMIA_DATA", raising=False)
    monkeypatch.setattr(datasets_module, "SYSTEM_DIRS", {"fashion-mnist": (tmp_path / "usr-share",)})
    monkeypatch.setattr(datasets_module, "DEFAULT_DOWNLOAD_DIR", tmp_path / "cache")


def write_idx(path, array: np.ndarray, compress: bool) -> None:
    magic = IDX_IMAGES if array.ndim == 3 else IDX_LABELS
    payload = struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()
    if compress:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def write_idx_folder(folder, train: int = 6, test: int = 4, compress: bool = False,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The four MNIST-format files, with 5x4 images so that a transposed read shows. Returns
    the expected pool (train part first) as uint8 images (N, 1, H, W) and labels."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for prefix, count in (("train", train), ("t10k", test)):
        part_images = rng.integers(0, 256, (count, 5, 4), dtype=np.uint8)
        part_labels = rng.integers(0, 10, count, dtype=np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", part_images, compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", part_labels, compress)
        images.append(part_images[:, None])
        labels.append(part_labels)
    return np.concatenate(images), np.concatenate(labels)


def assert_pool(pool: ArrayDataset, images: np.ndarray, labels: np.ndarray, num_classes: int) -> None:
    """Same pixels (scaled to [0, 1]) and labels, in the expected dtypes and (N, C, H, W) order."""
    assert pool.images.dtype == np.float32 and pool.images.flags.c_contiguous
    assert pool.images.shape == images.shape and pool.input_shape == images.shape[1:]
    np.testing.assert_array_equal(pool.images, images.astype(np.float32) / np.float32(255))
    assert 0.0 <= pool.images.min() and pool.images.max() <= 1.0
    assert pool.labels.dtype == np.int64 and pool.labels.tolist() == labels.tolist()
    assert pool.num_classes == num_classes and len(pool) == len(labels)


def test_digits_is_the_bundled_default_scaled_from_sixteen_grey_levels():
    pool = load_dataset("digits")
    assert pool.images.shape == (1797, 1, 8, 8) and pool.images.dtype == np.float32
    assert pool.images.min() == 0.0 and pool.images.max() == 1.0
    np.testing.assert_array_equal(pool.images * 16, np.round(pool.images * 16))
    assert pool.labels.dtype == np.int64 and set(pool.labels.tolist()) == set(range(10))
    assert pool.num_classes == 10


@pytest.mark.parametrize("compress", [False, True])
def test_idx_files_plain_or_gzipped_load_in_memory_without_writing(tmp_path, compress):
    folder = tmp_path / "data"
    images, labels = write_idx_folder(folder, compress=compress)
    before = sorted(folder.iterdir())
    assert_pool(load_dataset("fashion-mnist", folder), images, labels, 10)
    assert sorted(folder.iterdir()) == before, "a read-only folder such as /usr/share must do"


def test_fashion_mnist_from_the_debian_package_folder(tmp_path):
    images, labels = write_idx_folder(tmp_path / "usr-share", compress=True)
    assert_pool(load_dataset("fashion-mnist"), images, labels, 10)


def test_data_dir_comes_before_the_environment_which_comes_before_the_system(tmp_path, monkeypatch):
    write_idx_folder(tmp_path / "usr-share", train=1, test=1, compress=True)
    write_idx_folder(tmp_path / "env", train=2, test=1)
    write_idx_folder(tmp_path / "flag", train=3, test=1)
    monkeypatch.setenv("FEDMIA_DATA", str(tmp_path / "env"))
    assert len(load_dataset("fashion-mnist")) == 3
    assert len(load_dataset("fashion-mnist", tmp_path / "flag")) == 4


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_idx_datasets_from_torchvisions_raw_layout(tmp_path, name, folder):
    images, labels = write_idx_folder(tmp_path / folder / "raw")
    assert_pool(load_dataset(name, tmp_path), images, labels, 10)


class FakeTorchvisionMNIST:
    """Stands in for torchvision.datasets.MNIST offline: 'downloads' by writing the raw layout."""

    roots: list[str] = []

    def __init__(self, root: str, train: bool, download: bool) -> None:
        assert download
        self.roots.append(root)
        write_idx_folder(Path(root) / "MNIST" / "raw", compress=True, seed=7)


@pytest.fixture
def fake_download(monkeypatch):
    import torchvision

    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeTorchvisionMNIST)
    monkeypatch.setattr(FakeTorchvisionMNIST, "roots", [])
    return FakeTorchvisionMNIST.roots


def test_download_goes_into_the_data_dir_in_torchvisions_layout(tmp_path, fake_download):
    images, labels = write_idx_folder(tmp_path / "expected", compress=True, seed=7)
    assert_pool(load_dataset("mnist", tmp_path / "data", download=True), images, labels, 10)
    assert fake_download == [str(tmp_path / "data")]


def test_download_defaults_to_the_cache_and_is_skipped_when_files_are_there(tmp_path, fake_download):
    load_dataset("mnist", download=True)
    assert fake_download == [str(tmp_path / "cache")]
    load_dataset("mnist", download=True)
    assert len(load_dataset("mnist")) == 10
    assert fake_download == [str(tmp_path / "cache")], "found in the cache: not downloaded again"


def test_a_failed_download_is_a_one_line_user_error(tmp_path, monkeypatch):
    import torchvision

    class Offline:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nno route to host")

    monkeypatch.setattr(torchvision.datasets, "MNIST", Offline)
    with pytest.raises(FedmiaError, match="downloading MNIST .* failed .*no route to host") as error:
        load_dataset("mnist", tmp_path, download=True)
    assert "\n" not in str(error.value)


def write_cifar_folder(root, folder: str, files: list[str], meta: str, label_key: bytes,
                       num_classes: int, per_batch: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Pickled batches as on the CIFAR page: uint8 rows of 3072 (red, green, blue planes of
    32x32, row by row) under b"data", labels under `label_key`. Returns the expected pool."""
    (root / folder).mkdir(parents=True)
    rng = np.random.default_rng(1)
    rows, labels = [], []
    for name in files:
        batch_rows = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        batch_labels = [int(v) for v in rng.integers(0, num_classes, per_batch)]
        with open(root / folder / name, "wb") as handle:
            pickle.dump({b"data": batch_rows, label_key: batch_labels}, handle, protocol=2)
        rows.append(batch_rows)
        labels += batch_labels
    with open(root / folder / meta, "wb") as handle:
        pickle.dump({b"label_names": [b"class"] * num_classes}, handle, protocol=2)
    images = np.concatenate(rows).reshape(-1, 3, 32, 32)
    return images, np.array(labels)


CIFAR_LAYOUTS = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"],
                "batches.meta", b"labels", 10),
    "cifar100": ("cifar-100-python", ["train", "test"], "meta", b"fine_labels", 100),
}


@pytest.mark.parametrize("name", CIFAR_LAYOUTS)
def test_cifar_from_its_pickle_layout(tmp_path, name):
    images, labels = write_cifar_folder(tmp_path, *CIFAR_LAYOUTS[name])
    pool = load_dataset(name, tmp_path)
    assert_pool(pool, images, labels, CIFAR_LAYOUTS[name][-1])
    green_row2_col3 = images.reshape(len(images), -1)[0, 1024 + 2 * 32 + 3]
    assert pool.images[0, 1, 2, 3] == np.float32(green_row2_col3) / 255, "planes, then rows"


@pytest.mark.parametrize("name", FILE_DATASETS)
def test_missing_data_is_a_one_line_error_saying_how_to_get_it(tmp_path, name):
    with pytest.raises(FedmiaError) as error:
        load_dataset(name, tmp_path / "empty")
    message = str(error.value)
    assert "\n" not in message and "--download" in message and str(tmp_path / "empty") in message
    assert ("apt-get install dataset-fashion-mnist" in message) == (name == "fashion-mnist")


#: A complaint the loader must make, and the damaged file (name and content) that causes it.
TEST_LABELS = "t10k-labels-idx1-ubyte"
DAMAGED_IDX = {
    "not an IDX": ("train-images-idx3-ubyte", b"\x00\x00\x0d\x03" + bytes(20)),
    "not an IDX file of 1-D": ("train-labels-idx1-ubyte",
                               struct.pack(">IIII", IDX_IMAGES, 6, 1, 1) + bytes(6)),
    "truncated": (TEST_LABELS, struct.pack(">II", IDX_LABELS, 4) + bytes(3)),
    "holds 4 images but": (TEST_LABELS, struct.pack(">II", IDX_LABELS, 3) + bytes(3)),
    "labels outside 0..9": (TEST_LABELS, struct.pack(">II", IDX_LABELS, 4) + bytes([0, 1, 2, 10])),
}


@pytest.mark.parametrize("complaint", DAMAGED_IDX)
def test_damaged_idx_files_are_user_errors(tmp_path, complaint):
    write_idx_folder(tmp_path)
    name, content = DAMAGED_IDX[complaint]
    (tmp_path / name).write_bytes(content)
    with pytest.raises(FedmiaError, match=complaint):
        load_dataset("mnist", tmp_path)


def test_a_damaged_gzip_is_a_user_error(tmp_path):
    write_idx_folder(tmp_path, compress=True)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(FedmiaError, match="cannot read"):
        load_dataset("mnist", tmp_path)


def test_a_damaged_cifar_batch_is_a_user_error(tmp_path):
    write_cifar_folder(tmp_path, *CIFAR_LAYOUTS["cifar100"])
    (tmp_path / "cifar-100-python" / "test").write_bytes(b"plain text, not a pickle")
    with pytest.raises(FedmiaError, match="not a CIFAR batch"):
        load_dataset("cifar100", tmp_path)


def test_unknown_dataset_names_the_choices():
    with pytest.raises(FedmiaError, match="digits"):
        load_dataset("imagenet")


def test_the_installed_debian_fashion_mnist_when_present(monkeypatch):
    installed = Path("/usr/share/datasets/fashion-mnist")
    if not (installed / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("dataset-fashion-mnist is not installed")
    monkeypatch.setattr(datasets_module, "SYSTEM_DIRS", {"fashion-mnist": (installed,)})
    pool = load_dataset("fashion-mnist")
    assert pool.images.shape == (70_000, 1, 28, 28) and pool.images.max() == 1.0
    assert np.bincount(pool.labels).tolist() == [7_000] * 10
