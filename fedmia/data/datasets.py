"""Datasets by name, loaded into one in-memory pool of images and labels.

fedmia makes its own privacy split (members, non-members, the adversary's population, test),
so every loader returns the whole labelled pool (a dataset's train and test parts together)
as float32 images in [0, 1], shaped (N, C, H, W).
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedmia.errors import FedmiaError

DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
DATA_DIR_ENV = "FEDMIA_DATA"


@dataclass(frozen=True)
class ArrayDataset:
    """A labelled image pool held in memory."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    num_classes: int

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or len(self.images) != len(self.labels):
            raise FedmiaError(
                f"dataset {self.name!r} is malformed: expected images (N, C, H, W) and N labels, "
                f"got {self.images.shape} and {self.labels.shape}; check the data files"
            )

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def __len__(self) -> int:
        return len(self.labels)


def _pool(name: str, images: np.ndarray, labels: np.ndarray, num_classes: int) -> ArrayDataset:
    return ArrayDataset(
        name=name,
        images=np.ascontiguousarray(images, dtype=np.float32),
        labels=np.asarray(labels, dtype=np.int64),
        num_classes=num_classes,
    )


def load_digits(data_dir: Path | None, download: bool) -> ArrayDataset:
    """scikit-learn's bundled 8x8 digits: 1,797 images, no download, the zero-setup default."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = bunch.images[:, None, :, :] / 16.0
    return _pool("digits", images, bunch.target, 10)


def _find_idx_file(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


IDX_UNSIGNED_BYTE = 0x08


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file of unsigned bytes, plain or gzipped, in memory (the data folder may be
    read-only). Layout: two zero bytes, a type code, the number of dimensions, then each
    dimension as a big-endian int32, then the data."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] or raw[1] or raw[2] != IDX_UNSIGNED_BYTE:
        raise FedmiaError(f"{path} is not an IDX file of unsigned bytes; replace it with the original")
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise FedmiaError(f"{path} is truncated ({data.size} values for shape {shape}); "
                          "download or install it again")
    return data.reshape(shape)


def _roots(data_dir: Path | None) -> list[Path]:
    return [Path(p) for p in (data_dir, os.environ.get(DATA_DIR_ENV)) if p]


def _download_root(data_dir: Path | None) -> Path:
    roots = _roots(data_dir)
    return roots[0] if roots else Path.home() / ".cache" / "fedmia"


def _torchvision_download(class_name: str, root: Path) -> None:
    """Fetch a dataset in torchvision's on-disk layout (online machines only)."""
    import torchvision

    dataset_class = getattr(torchvision.datasets, class_name)
    try:
        for train in (True, False):
            dataset_class(str(root), train=train, download=True)
    except (RuntimeError, OSError) as error:
        raise FedmiaError(f"downloading {class_name} into {root} failed ({error}); put the files "
                          f"there by hand and drop --download") from None


IDX_PARTS = (("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))


def _load_idx_pool(name: str, directories: list[Path], how_to_get: str) -> ArrayDataset:
    """The first directory holding all four IDX files (plain or .gz) wins."""
    for directory in directories:
        files = [(_find_idx_file(directory, i), _find_idx_file(directory, l)) for i, l in IDX_PARTS]
        if all(image and label for image, label in files):
            images = np.concatenate([_read_idx(image) for image, _ in files])
            labels = np.concatenate([_read_idx(label) for _, label in files])
            return _pool(name, images[:, None, :, :] / 255.0, labels, 10)
    searched = ", ".join(str(d) for d in directories) or "nowhere"
    raise FedmiaError(f"{name} IDX files not found (searched {searched}); {how_to_get}")


def _idx_loader(name: str, torchvision_class: str, extra_dirs: tuple[Path, ...] = (),
                how_to_get: str = "") -> Callable[[Path | None, bool], ArrayDataset]:
    """A loader for an MNIST-format dataset: the IDX files directly in a root, or in
    torchvision's layout under it (<root>/<Class>/raw)."""

    def load(data_dir: Path | None, download: bool) -> ArrayDataset:
        if download:
            _torchvision_download(torchvision_class, _download_root(data_dir))
        directories = [d for root in _roots(data_dir) + ([_download_root(data_dir)] if download else [])
                       for d in (root, root / torchvision_class / "raw")]
        hint = how_to_get or "pass --data-dir DIR holding the IDX files, or add --download when online"
        return _load_idx_pool(name, directories + list(extra_dirs), hint)

    load.__doc__ = f"{name}: IDX files from --data-dir or ${DATA_DIR_ENV}, or torchvision's download."
    return load


CIFAR_LAYOUTS = {
    "cifar10": ("CIFAR10", "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"],
                b"labels", 10),
    "cifar100": ("CIFAR100", "cifar-100-python", ["train", "test"], b"fine_labels", 100),
}


def _read_cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """One pickled CIFAR batch: uint8 rows of 3x32x32 pixels and their labels."""
    import pickle

    with open(path, "rb") as handle:
        batch = pickle.load(handle, encoding="bytes")
    images = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return images, np.asarray(batch[label_key], dtype=np.int64)


def _cifar_loader(name: str) -> Callable[[Path | None, bool], ArrayDataset]:
    """CIFAR from the python-pickle layout torchvision downloads (<root>/cifar-10-batches-py)."""
    class_name, folder, files, label_key, num_classes = CIFAR_LAYOUTS[name]

    def load(data_dir: Path | None, download: bool) -> ArrayDataset:
        if download:
            _torchvision_download(class_name, _download_root(data_dir))
        roots = _roots(data_dir) + ([_download_root(data_dir)] if download else [])
        for root in roots:
            if all((root / folder / f).is_file() for f in files):
                parts = [_read_cifar_batch(root / folder / f, label_key) for f in files]
                images = np.concatenate([p[0] for p in parts])
                labels = np.concatenate([p[1] for p in parts])
                return _pool(name, images / 255.0, labels, num_classes)
        searched = ", ".join(str(r / folder) for r in roots) or "nowhere"
        raise FedmiaError(f"{name} not found (searched {searched}); pass --data-dir DIR containing "
                          f"{folder}/, set ${DATA_DIR_ENV}, or add --download when online")

    load.__doc__ = f"{name} from torchvision's pickle layout, or torchvision's download."
    return load


DATASETS: dict[str, Callable[[Path | None, bool], ArrayDataset]] = {
    "digits": load_digits,
    "fashion-mnist": _idx_loader(
        "fashion-mnist", "FashionMNIST", (DEBIAN_FASHION_MNIST_DIR,),
        "install it with `apt-get install dataset-fashion-mnist`, pass --data-dir DIR holding "
        "the IDX files, or add --download when online"),
    "mnist": _idx_loader("mnist", "MNIST"),
    "cifar10": _cifar_loader("cifar10"),
    "cifar100": _cifar_loader("cifar100"),
}


def load_dataset(name: str, data_dir: Path | None = None, download: bool = False) -> ArrayDataset:
    """Load a dataset by its registry name; unknown names and missing files are FedmiaErrors."""
    if name not in DATASETS:
        raise FedmiaError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name](data_dir, download)
