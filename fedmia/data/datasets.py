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


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) with torchvision's own IDX reader."""
    from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

    if path.suffix == ".gz":
        with gzip.open(path, "rb") as handle, open(path.with_suffix(""), "wb") as out:
            out.write(handle.read())
        path = path.with_suffix("")
    return read_sn3_pascalvincent_tensor(str(path), strict=False).numpy()


def _idx_directories(data_dir: Path | None, dataset_folder: str) -> list[Path]:
    roots = [p for p in (data_dir, os.environ.get(DATA_DIR_ENV)) if p]
    directories: list[Path] = []
    for root in map(Path, roots):
        directories += [root, root / dataset_folder, root / dataset_folder / "raw"]
    return directories


def _load_idx_pool(name: str, directories: list[Path], how_to_get: str) -> ArrayDataset:
    parts = [("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")]
    for directory in directories:
        files = [(_find_idx_file(directory, i), _find_idx_file(directory, l)) for i, l in parts]
        if all(image and label for image, label in files):
            images = np.concatenate([_read_idx(image) for image, _ in files])
            labels = np.concatenate([_read_idx(label) for _, label in files])
            return _pool(name, images[:, None, :, :] / 255.0, labels, 10)
    searched = ", ".join(str(d) for d in directories) or "nowhere"
    raise FedmiaError(f"{name} IDX files not found (searched {searched}); {how_to_get}")


def load_fashion_mnist(data_dir: Path | None, download: bool) -> ArrayDataset:
    """Fashion-MNIST from IDX files: --data-dir, $FEDMIA_DATA, or the Debian package's folder."""
    directories = _idx_directories(data_dir, "FashionMNIST") + [DEBIAN_FASHION_MNIST_DIR]
    if download:
        return _torchvision_pool("fashion-mnist", data_dir, download)
    return _load_idx_pool(
        "fashion-mnist",
        directories,
        "install it with `apt-get install dataset-fashion-mnist`, pass --data-dir DIR "
        "holding the IDX files, or add --download when online",
    )


def _torchvision_root(data_dir: Path | None) -> Path:
    root = data_dir or os.environ.get(DATA_DIR_ENV)
    return Path(root) if root else Path.home() / ".cache" / "fedmia"


_TORCHVISION_CLASSES = {
    "mnist": "MNIST",
    "fashion-mnist": "FashionMNIST",
    "cifar10": "CIFAR10",
    "cifar100": "CIFAR100",
}


def _torchvision_pool(name: str, data_dir: Path | None, download: bool) -> ArrayDataset:
    """Load a torchvision dataset's train and test parts from its root, downloading if asked."""
    import torchvision

    dataset_class = getattr(torchvision.datasets, _TORCHVISION_CLASSES[name])
    root = _torchvision_root(data_dir)
    try:
        parts = [dataset_class(str(root), train=train, download=download) for train in (True, False)]
    except RuntimeError as error:
        raise FedmiaError(
            f"{name} not found under {root} ({error}); pass --data-dir DIR with torchvision's "
            f"layout, set ${DATA_DIR_ENV}, or add --download when online"
        ) from None
    images = np.concatenate([np.asarray(part.data) for part in parts])
    labels = np.concatenate([np.asarray(part.targets) for part in parts])
    if images.ndim == 3:
        images = images[:, None, :, :]
    else:
        images = images.transpose(0, 3, 1, 2)
    return _pool(name, images / 255.0, labels, len(parts[0].classes))


def _torchvision_loader(name: str) -> Callable[[Path | None, bool], ArrayDataset]:
    def load(data_dir: Path | None, download: bool) -> ArrayDataset:
        return _torchvision_pool(name, data_dir, download)

    load.__doc__ = f"{name} through torchvision, from a data dir or downloaded when online."
    return load


DATASETS: dict[str, Callable[[Path | None, bool], ArrayDataset]] = {
    "digits": load_digits,
    "fashion-mnist": load_fashion_mnist,
    "mnist": _torchvision_loader("mnist"),
    "cifar10": _torchvision_loader("cifar10"),
    "cifar100": _torchvision_loader("cifar100"),
}


def load_dataset(name: str, data_dir: Path | None = None, download: bool = False) -> ArrayDataset:
    """Load a dataset by its registry name; unknown names and missing files are FedmiaErrors."""
    if name not in DATASETS:
        raise FedmiaError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name](data_dir, download)
