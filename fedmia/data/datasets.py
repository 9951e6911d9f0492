"""Datasets by name, loaded into one in-memory pool of images and labels.

fedmia makes its own privacy split (members, non-members, the adversary's population, test),
so every loader returns the whole labelled pool (a dataset's train and test parts together)
as float32 images in [0, 1], shaped (N, C, H, W).

File datasets are read by fedmia's own readers of their published on-disk formats (IDX for
MNIST and Fashion-MNIST, python pickles for CIFAR): one code path per format, whether the files
came from a Debian package, by hand, or from torchvision, which is used only to download them.
"""

from __future__ import annotations

import gzip
import os
import pickle
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from fedmia.errors import FedmiaError, one_line

DATA_DIR_ENV = "FEDMIA_DATA"
#: Where `--download` puts files when neither --data-dir nor $FEDMIA_DATA names a folder.
DEFAULT_DOWNLOAD_DIR = Path.home() / ".cache" / "fedmia"
#: Folders where operating-system packages install a dataset, searched after the user's own.
SYSTEM_DIRS: dict[str, tuple[Path, ...]] = {
    "fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),),
}


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
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= self.num_classes):
            raise FedmiaError(
                f"dataset {self.name!r} has labels outside 0..{self.num_classes - 1} "
                f"(found {self.labels.min()}..{self.labels.max()}); check the data files"
            )

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def __len__(self) -> int:
        return len(self.labels)


def _pool(name: str, images: np.ndarray, labels: np.ndarray, num_classes: int,
          pixel_max: float) -> ArrayDataset:
    """Scale pixels to [0, 1] in float32 throughout: a float64 intermediate of CIFAR's 60,000
    images would take 1.5 GB."""
    scaled = np.array(images, dtype=np.float32, order="C")
    scaled /= np.float32(pixel_max)
    return ArrayDataset(name, scaled, np.asarray(labels, dtype=np.int64), num_classes)


Loader = Callable[[Path | None, bool], ArrayDataset]


def load_digits(data_dir: Path | None, download: bool) -> ArrayDataset:
    """scikit-learn's bundled 8x8 digits: 1,797 images, no download, the zero-setup default."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    return _pool("digits", bunch.images[:, None, :, :], bunch.target, 10, pixel_max=16)


IDX_UNSIGNED_BYTE = 0x08
IDX_PARTS = (("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))


def _find_idx_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped in memory when it ends in .gz (the folder may be
    read-only, as /usr/share is)."""
    try:
        return gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as error:
        raise FedmiaError(f"cannot read {path} ({one_line(error)}); "
                          "download or install it again") from None


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX array of unsigned bytes with `ndim` dimensions. Layout: two zero bytes, a type
    code, the number of dimensions, then each dimension as a big-endian int32, then the data."""
    raw = _read_bytes(path)
    header_size = 4 + 4 * ndim
    if len(raw) < header_size or raw[0] or raw[1] or raw[2] != IDX_UNSIGNED_BYTE or raw[3] != ndim:
        raise FedmiaError(f"{path} is not an IDX file of {ndim}-D unsigned bytes; "
                          "replace it with the original")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype=np.uint8, offset=header_size)
    if data.size != int(np.prod(shape)):
        raise FedmiaError(f"{path} is truncated ({data.size} values for shape {shape}); "
                          "download or install it again")
    return data.reshape(shape)


def _read_idx_folder(folder: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """Train then test part of an MNIST-format folder; None unless all four files are there."""
    found = [(_find_idx_file(folder, images), _find_idx_file(folder, labels))
             for images, labels in IDX_PARTS]
    if not all(images and labels for images, labels in found):
        return None
    image_parts, label_parts = [], []
    for image_path, label_path in found:
        images, labels = _read_idx(image_path, 3), _read_idx(label_path, 1)
        if len(images) != len(labels):
            raise FedmiaError(f"{image_path} holds {len(images)} images but {label_path} "
                              f"{len(labels)} labels; download or install them again")
        image_parts.append(images[:, None, :, :])
        label_parts.append(labels)
    return np.concatenate(image_parts), np.concatenate(label_parts)


def _read_cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """One pickled CIFAR batch: uint8 rows of 3x32x32 pixels (channel, row, column) and labels."""
    try:
        with open(path, "rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
        images = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as error:
        raise FedmiaError(f"{path} is not a CIFAR batch ({one_line(error)}); "
                          "download it again") from None
    if len(images) != len(labels):
        raise FedmiaError(f"{path} holds {len(images)} images but {len(labels)} labels; "
                          "download it again")
    return images, labels


def _read_cifar_folder(folder: Path, files: tuple[str, ...],
                       label_key: bytes) -> tuple[np.ndarray, np.ndarray] | None:
    """All batches of a CIFAR folder in order; None unless every batch file is there."""
    if not all((folder / name).is_file() for name in files):
        return None
    images, labels = zip(*(_read_cifar_batch(folder / name, label_key) for name in files))
    return np.concatenate(images), np.concatenate(labels)


def _torchvision_download(class_name: str, root: Path) -> None:
    """Fetch a dataset into torchvision's on-disk layout under `root` (online machines only).
    One construction downloads every part; the test part is the cheaper one to load."""
    import torchvision

    dataset_class = getattr(torchvision.datasets, class_name)
    try:
        dataset_class(str(root), train=False, download=True)
    except (RuntimeError, OSError) as error:
        raise FedmiaError(f"downloading {class_name} into {root} failed ({one_line(error)}); "
                          "put the files there by hand and drop --download") from None


@dataclass(frozen=True)
class FileDataset:
    """A dataset read from files in one on-disk format, searched for in --data-dir,
    $FEDMIA_DATA, the system folders and the download folder, and downloaded through
    torchvision (when asked) only if none holds it. An explicit --data-dir that does not exist
    is an error (without --download): a typo must not silently load files from elsewhere."""

    name: str
    num_classes: int
    torchvision_class: str
    #: Where under a root the files may lie: the root itself and/or torchvision's layout.
    subfolders: tuple[str, ...]
    read: Callable[[Path], tuple[np.ndarray, np.ndarray] | None]
    how_to_get: str

    def __call__(self, data_dir: Path | None, download: bool) -> ArrayDataset:
        if data_dir is not None and not download and not data_dir.is_dir():
            raise FedmiaError(f"--data-dir {data_dir} is not an existing folder; {self.how_to_get}")
        roots = self._roots(data_dir)
        found = self._read_first(roots)
        if found is None and download:
            target = _download_target(data_dir)
            _torchvision_download(self.torchvision_class, target)
            found = self._read_first([target])
        if found is None:
            searched = ", ".join(str(root / sub) for root in roots for sub in self.subfolders)
            raise FedmiaError(f"{self.name} files not found (searched {searched}); {self.how_to_get}")
        images, labels = found
        return _pool(self.name, images, labels, self.num_classes, pixel_max=255)

    def _roots(self, data_dir: Path | None) -> list[Path]:
        candidates = [*_user_roots(data_dir), *SYSTEM_DIRS.get(self.name, ()), DEFAULT_DOWNLOAD_DIR]
        return list(dict.fromkeys(candidates))

    def _read_first(self, roots: list[Path]) -> tuple[np.ndarray, np.ndarray] | None:
        for root in roots:
            for subfolder in self.subfolders:
                found = self.read(root / subfolder)
                if found is not None:
                    return found
        return None


def _user_roots(data_dir: Path | None) -> list[Path]:
    return [Path(p) for p in (data_dir, os.environ.get(DATA_DIR_ENV)) if p]


def _download_target(data_dir: Path | None) -> Path:
    return next(iter(_user_roots(data_dir)), DEFAULT_DOWNLOAD_DIR)


def _idx_dataset(name: str, torchvision_class: str, how_to_get: str) -> FileDataset:
    return FileDataset(name, 10, torchvision_class, (".", f"{torchvision_class}/raw"),
                       _read_idx_folder, how_to_get)


def _cifar_dataset(name: str, torchvision_class: str, folder: str, files: tuple[str, ...],
                   label_key: bytes, num_classes: int) -> FileDataset:
    return FileDataset(name, num_classes, torchvision_class, (folder,),
                       partial(_read_cifar_folder, files=files, label_key=label_key),
                       f"pass --data-dir DIR containing {folder}/, set ${DATA_DIR_ENV}, "
                       "or add --download when online")


IDX_HINT = (f"pass --data-dir DIR holding the four IDX files, set ${DATA_DIR_ENV}, "
            "or add --download when online")
DEBIAN_HINT = "install it with `apt-get install dataset-fashion-mnist`"

DATASETS: dict[str, Loader] = {
    "digits": load_digits,
    "fashion-mnist": _idx_dataset("fashion-mnist", "FashionMNIST", f"{DEBIAN_HINT}, {IDX_HINT}"),
    "mnist": _idx_dataset("mnist", "MNIST", IDX_HINT),
    "cifar10": _cifar_dataset("cifar10", "CIFAR10", "cifar-10-batches-py",
                              tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",),
                              b"labels", 10),
    "cifar100": _cifar_dataset("cifar100", "CIFAR100", "cifar-100-python", ("train", "test"),
                               b"fine_labels", 100),
}


def load_dataset(name: str, data_dir: Path | None = None, download: bool = False) -> ArrayDataset:
    """Load a dataset by its registry name; unknown names and missing files are FedmiaErrors."""
    if name not in DATASETS:
        raise FedmiaError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name](data_dir, download)
