"""Our hand-written CIFAR reader against torchvision's, on the same files.

``cnnvis.data.read_cifar_dir`` parses the CIFAR-10 / CIFAR-100 "python version"
pickles itself. These tests write small directories in the archives' real
on-disk layout (``cifar-10-batches-py/`` and ``cifar-100-python/``, Python 2
protocol-2 pickles whose keys, strings and array buffer are Python 2 ``str``),
read them with both readers, and require identical images, labels and class
names for both splits. Image content is seeded noise and every batch has a
different size, so a transposition, channel swap or batch-order bug cannot pass.
A negative test feeds the comparison deliberately mis-decoded images to show
that it catches exactly those mistakes.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torchvision.datasets as tvd

from cnnvis import data as D

_reconstruct = np.empty(0, np.uint8).__reduce__()[0]  # numpy's ndarray unpickling function

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR10_TRAIN_SIZES = (3, 4, 5, 6, 7)  # one per data_batch_i, all different
CIFAR10_TEST_SIZE = 5
CIFAR100_TRAIN_SIZE, CIFAR100_TEST_SIZE = 11, 6


# --------------------------------------------------------------------------- writing the real format


class Py2Str(bytes):
    """A Python 2 ``str``: pickled as (SHORT_)BINSTRING, as in the published archives."""


class Py2Pickler(pickle._Pickler):
    """Protocol-2 pickler that writes what Python 2 + numpy wrote for the CIFAR archives.

    Dict keys, label names and the ndarray's raw buffer are Python 2 ``str``;
    loading such a file needs ``encoding="latin1"`` (the default ASCII fails on
    the image bytes), which is why both readers pass it.
    """

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2str(self, obj: Py2Str) -> None:
        n = len(obj)
        head = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(head + bytes(obj))
        self.memoize(obj)

    dispatch[Py2Str] = save_py2str

    def save_global(self, obj, name=None):
        if obj is _reconstruct:  # Python 2 numpy named it numpy.core.multiarray
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)

    def reducer_override(self, obj):
        if isinstance(obj, np.ndarray):
            assert obj.dtype == np.uint8 and obj.flags.c_contiguous
            return _reconstruct, (np.ndarray, (0,), Py2Str(b"b")), (1, obj.shape, obj.dtype, False, Py2Str(obj.tobytes()))
        if isinstance(obj, np.dtype):
            return np.dtype, (Py2Str(b"u1"), 0, 1), (3, Py2Str(b"|"), None, None, None, -1, -1, 0)
        return NotImplemented


def py2(obj):
    """Turn every ``str`` in a nested dict/list into a Python 2 ``str``."""
    if isinstance(obj, str):
        return Py2Str(obj.encode("latin1"))
    if isinstance(obj, dict):
        return {py2(k): py2(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [py2(v) for v in obj]
    return obj


def dump_py2(path: Path, obj: dict) -> None:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(py2(obj))
    path.write_bytes(buf.getvalue())


def batch(rng: np.random.Generator, n: int, label_key: str, n_classes: int, batch_label: str, extra: dict | None = None) -> dict:
    """One batch as in the archives: 'data' uint8 N×3072 (R, G, B planes of 32×32, row-major)."""
    return {
        "batch_label": batch_label,
        label_key: [int(v) for v in rng.integers(0, n_classes, n)],
        "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        "filenames": [f"img_{batch_label[:5]}_{i:05d}.png" for i in range(n)],
        **(extra or {}),
    }


def write_cifar10(root: Path, seed: int = 10) -> Path:
    rng = np.random.default_rng(seed)
    d = root / tvd.CIFAR10.base_folder
    d.mkdir(parents=True)
    for i, n in enumerate(CIFAR10_TRAIN_SIZES, 1):
        dump_py2(d / f"data_batch_{i}", batch(rng, n, "labels", 10, f"training batch {i} of 5"))
    dump_py2(d / "test_batch", batch(rng, CIFAR10_TEST_SIZE, "labels", 10, "testing batch 1 of 1"))
    dump_py2(d / "batches.meta", {"num_cases_per_batch": 10000, "label_names": CIFAR10_CLASSES, "num_vis": 3072})
    return d


def write_cifar100(root: Path, seed: int = 100) -> Path:
    rng = np.random.default_rng(seed)
    d = root / tvd.CIFAR100.base_folder
    d.mkdir(parents=True)
    for name, n, label in (
        ("train", CIFAR100_TRAIN_SIZE, "training batch 1 of 1"),
        ("test", CIFAR100_TEST_SIZE, "testing batch 1 of 1"),
    ):
        coarse = {"coarse_labels": [int(v) for v in rng.integers(0, 20, n)]}
        dump_py2(d / name, batch(rng, n, "fine_labels", 100, label, coarse))
    fine_names = [f"fine_class_{i:02d}" for i in range(100)]
    dump_py2(d / "meta", {"fine_label_names": fine_names, "coarse_label_names": [f"coarse_{i:02d}" for i in range(20)]})
    return d


# --------------------------------------------------------------------------- torchvision, on these files


def torchvision_reader(cls: type[tvd.CIFAR10], directory: Path) -> type[tvd.CIFAR10]:
    """``cls`` with its checksum table set to the md5s of the files written here.

    torchvision (0.29) has no public option to skip integrity checks: the
    constructor always calls ``_check_integrity`` against the published
    archives' md5s and ``_load_meta`` checks the meta file's md5. Instead of
    bypassing the check, this subclass only swaps the expected md5s, so
    torchvision's own ``check_integrity`` still runs on every file; reading is
    entirely torchvision's.
    """

    def md5(name: str) -> str:
        return hashlib.md5((directory / name).read_bytes()).hexdigest()

    return type(
        f"Fixture{cls.__name__}",
        (cls,),
        {
            "train_list": [[name, md5(name)] for name, _ in cls.train_list],
            "test_list": [[name, md5(name)] for name, _ in cls.test_list],
            "meta": {**cls.meta, "md5": md5(cls.meta["filename"])},
        },
    )


def assert_same(images: np.ndarray, labels: np.ndarray, classes: tuple[str, ...], tv: tvd.CIFAR10) -> None:
    """Our split (uint8 N×H×W×C images, int64 labels, class names) equals torchvision's."""
    assert images.dtype == np.uint8 and images.shape == (len(tv), 32, 32, 3)
    np.testing.assert_array_equal(images, tv.data)
    for i in (0, len(tv) // 2, len(tv) - 1):  # and per sample, through torchvision's public __getitem__ (PIL RGB)
        img, target = tv[i]
        np.testing.assert_array_equal(images[i], np.asarray(img))
        assert labels[i] == target
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, np.asarray(tv.targets, dtype=np.int64))
    assert classes == tuple(tv.classes)


# --------------------------------------------------------------------------- tests


def test_fixture_is_the_python2_pickle_format(tmp_path):
    """The fixture needs latin1 like the real archives (plain ``pickle.load`` fails), and decodes to str keys."""
    d = write_cifar10(tmp_path)
    raw = (d / "data_batch_1").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(raw)
    entry = pickle.loads(raw, encoding="latin1")
    assert sorted(entry) == ["batch_label", "data", "filenames", "labels"]
    assert entry["data"].dtype == np.uint8 and entry["data"].shape == (CIFAR10_TRAIN_SIZES[0], 3072)
    assert sorted(pickle.loads((d / "batches.meta").read_bytes(), encoding="latin1")) == [
        "label_names",
        "num_cases_per_batch",
        "num_vis",
    ]


@pytest.mark.parametrize(
    ("name", "cls", "write", "n_train", "n_test"),
    [
        ("cifar10", tvd.CIFAR10, write_cifar10, sum(CIFAR10_TRAIN_SIZES), CIFAR10_TEST_SIZE),
        ("cifar100", tvd.CIFAR100, write_cifar100, CIFAR100_TRAIN_SIZE, CIFAR100_TEST_SIZE),
    ],
)
def test_reader_equals_torchvision(tmp_path, name, cls, write, n_train, n_test):
    """Both splits: images, labels and class names from ``read_cifar_dir`` are exactly torchvision's."""
    directory = write(tmp_path)
    train, test, classes = D.read_cifar_dir(name, directory)
    tv_cls = torchvision_reader(cls, directory)
    tv_train = tv_cls(str(tmp_path), train=True, download=False)
    tv_test = tv_cls(str(tmp_path), train=False, download=False)
    assert (len(tv_train), len(tv_test)) == (n_train, n_test)
    assert_same(train.images, train.labels, classes, tv_train)
    assert_same(test.images, test.labels, classes, tv_test)


def _raw_data(directory: Path, files: list[str]) -> np.ndarray:
    return np.concatenate([pickle.loads((directory / f).read_bytes(), encoding="latin1")["data"] for f in files])


MISREADS = {
    # N×3072 taken as interleaved pixels instead of R, G, B planes
    "planes_as_interleaved": lambda raw, ours: raw.reshape(-1, 32, 32, 3),
    # planes in the right place, but read as B, G, R
    "bgr": lambda raw, ours: ours[..., ::-1],
    # (N, 3, 32, 32) → (N, W, H, C) instead of (N, H, W, C)
    "height_width_swapped": lambda raw, ours: raw.reshape(-1, 3, 32, 32).transpose(0, 3, 2, 1),
    # batches concatenated in the wrong order
    "batch_order": lambda raw, ours: np.concatenate([ours[3:7], ours[:3], ours[7:]]),
}


@pytest.mark.parametrize("mistake", sorted(MISREADS))
def test_comparison_catches_misread_images(tmp_path, mistake):
    """The comparison used above fails on a reader with a layout or ordering mistake (so its passing means something)."""
    directory = write_cifar10(tmp_path)
    train, _, classes = D.read_cifar_dir("cifar10", directory)
    tv_train = torchvision_reader(tvd.CIFAR10, directory)(str(tmp_path), train=True, download=False)
    assert_same(train.images, train.labels, classes, tv_train)  # the correct reading passes
    raw = _raw_data(directory, [f"data_batch_{i}" for i in range(1, 6)])
    wrong = np.ascontiguousarray(MISREADS[mistake](raw, train.images))
    assert wrong.shape == train.images.shape and not np.array_equal(wrong, train.images)
    with pytest.raises(AssertionError):
        assert_same(wrong, train.labels, classes, tv_train)


def test_comparison_catches_wrong_labels_and_classes(tmp_path):
    """Labels shifted by one sample, or class names from the wrong key, also fail the comparison."""
    directory = write_cifar100(tmp_path)
    _, test, classes = D.read_cifar_dir("cifar100", directory)
    tv_test = torchvision_reader(tvd.CIFAR100, directory)(str(tmp_path), train=False, download=False)
    with pytest.raises(AssertionError):
        assert_same(test.images, np.roll(test.labels, 1), classes, tv_test)
    coarse = tuple(pickle.loads((directory / "meta").read_bytes(), encoding="latin1")["coarse_label_names"])
    with pytest.raises(AssertionError):
        assert_same(test.images, test.labels, coarse, tv_test)
