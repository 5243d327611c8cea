"""Datasets: readers of each native on-disk format, the project's npz shards,
and in-memory tensors for training.

A dataset on disk (``data/raw/<name>/``) is ``train.npz`` and ``test.npz``
(uint8 images N×H×W×C, int64 labels, class names) plus ``meta.json``.
``acquire`` finds the native files (configured directory → system copy →
download), verifies them, and returns a ``RawDataset``.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import pickle
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cnnvis import DataError
from cnnvis.config import DatasetConfig

log = logging.getLogger(__name__)

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
MNIST_CLASSES = tuple(str(i) for i in range(10))

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
# md5 of the published archives (the same values torchvision checks).
MD5 = {
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12e480ee83cd310",
    },
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "cifar10": {
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
        "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    },
    "cifar100": {
        "train": "16019d7e3df5f24257cddd939b257f8d",
        "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
        "meta": "7973b15100ade9c7d40fb424638fde48",
    },
    "tiny_imagenet": {"tiny-imagenet-200.zip": "90528d7ca1a48142e341f4ef8d21d0de"},
}
# sha256 of the decompressed IDX payload, recorded from Debian's dataset-fashion-mnist
# (0.0~git20200523.55506a9-1), whose .gz files are recompressed (other md5, same content).
CONTENT_SHA256 = {
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}
TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
SYSTEM_DIRS = {"fashion_mnist": "/usr/share/datasets/fashion-mnist"}
HOW_TO_PROVIDE = {
    "fashion_mnist": "install Debian's package (apt-get install dataset-fashion-mnist) or put the 4 IDX .gz files in a "
    "directory and set dataset.fashion_mnist.source_dir",
    "mnist": "put the 4 MNIST IDX .gz files (train-images-idx3-ubyte.gz, ...) in a directory and set dataset.mnist.source_dir",
    "cifar10": "extract cifar-10-python.tar.gz and set dataset.cifar10.source_dir to its cifar-10-batches-py directory",
    "cifar100": "extract cifar-100-python.tar.gz and set dataset.cifar100.source_dir to its cifar-100-python directory",
    "tiny_imagenet": "unzip tiny-imagenet-200.zip and set dataset.tiny_imagenet.source_dir to its tiny-imagenet-200 directory",
}


@dataclass(frozen=True)
class Split:
    """One split in memory: uint8 images N×H×W×C and int64 labels."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise DataError(f"images must be uint8 N×H×W×C, got {self.images.dtype} {self.images.shape}")
        if len(self.images) != len(self.labels):
            raise DataError(f"{len(self.images)} images but {len(self.labels)} labels")


@dataclass(frozen=True)
class RawDataset:
    name: str
    train: Split
    test: Split
    classes: tuple[str, ...]
    source: str  # where the native files came from

    @property
    def shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image."""
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]


# --------------------------------------------------------------------------- checksums


def md5sum(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def content_sha256(path: Path) -> str:
    """sha256 of a file's content after gunzip (of the file itself if not gzipped)."""
    h = hashlib.sha256()
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except (OSError, EOFError):
        return ""
    return h.hexdigest()


def verify_md5(name: str, directory: Path, files: list[str]) -> None:
    """Accept a file whose md5 is the published archive's, or whose decompressed content is known."""
    expected, content = MD5.get(name, {}), CONTENT_SHA256.get(name, {})
    for f in files:
        if f not in expected:
            continue
        if md5sum(directory / f) == expected[f]:
            continue
        if f in content and content_sha256(directory / f) == content[f]:
            continue
        raise DataError(
            f"{name}: checksum mismatch for {directory / f} (corrupted or a different release); "
            f"replace the file, or set dataset.{name}.verify=false for files you made yourself"
        )


# --------------------------------------------------------------------------- IDX (MNIST, Fashion-MNIST)


def read_idx(path: Path) -> np.ndarray:
    """Read a gzipped (or plain) IDX file: magic 0x0000 08 <ndim>, big-endian dims, uint8 data."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: unreadable IDX file ({e}); the download is probably truncated, delete and fetch it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: not an IDX uint8 file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DataError(f"{path}: IDX payload has {len(raw) - header} bytes, header says {expected}; file truncated or corrupted")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def read_idx_dir(name: str, directory: Path) -> tuple[Split, Split]:
    arrays = {}
    for key, fname in IDX_FILES.items():
        path = directory / fname
        if not path.exists() and (directory / fname[:-3]).exists():
            path = directory / fname[:-3]
        arrays[key] = read_idx(path)
    splits = []
    for split in ("train", "test"):
        images = arrays[f"{split}_images"]
        labels = arrays[f"{split}_labels"].astype(np.int64)
        if images.ndim != 3:
            raise DataError(f"{name}: {split} images must be N×H×W, got shape {images.shape}")
        splits.append(Split(np.ascontiguousarray(images[..., None]), labels))
    return splits[0], splits[1]


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) as a gzipped IDX file (for tests and fixtures)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


# --------------------------------------------------------------------------- CIFAR python pickles


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except FileNotFoundError:
        raise DataError(f"{path}: missing CIFAR batch file") from None
    except Exception as e:
        raise DataError(f"{path}: unreadable CIFAR pickle ({type(e).__name__}); file truncated or corrupted") from None


def _cifar_images(batch: dict, path: Path) -> np.ndarray:
    data = np.asarray(batch["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: CIFAR data must be N×3072, got {data.shape}")
    # rows are R plane, G plane, B plane, each 32×32 row-major
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def read_cifar_dir(name: str, directory: Path) -> tuple[Split, Split, tuple[str, ...]]:
    if name == "cifar10":
        train_files, test_files, label_key = [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"
        meta, names_key = _unpickle(directory / "batches.meta"), "label_names"
    else:
        train_files, test_files, label_key = ["train"], ["test"], "fine_labels"
        meta, names_key = _unpickle(directory / "meta"), "fine_label_names"
    classes = tuple(meta[names_key])
    splits = []
    for files in (train_files, test_files):
        imgs, labels = [], []
        for f in files:
            batch = _unpickle(directory / f)
            imgs.append(_cifar_images(batch, directory / f))
            labels.append(np.asarray(batch[label_key], dtype=np.int64))
        splits.append(Split(np.concatenate(imgs), np.concatenate(labels)))
    return splits[0], splits[1], classes


# --------------------------------------------------------------------------- Tiny ImageNet folders


def _read_jpeg(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception as e:
        raise DataError(f"{path}: unreadable image ({type(e).__name__})") from None
    if arr.shape != (64, 64, 3):
        raise DataError(f"{path}: Tiny ImageNet images are 64×64, got {arr.shape[:2]}")
    return arr


def read_tiny_imagenet_dir(directory: Path, progress: Callable | None = None) -> tuple[Split, Split, tuple[str, ...]]:
    """``wnids.txt``, ``train/<wnid>/images/*.JPEG``, ``val/images`` + ``val/val_annotations.txt``.

    The official test split has no labels, so the validation split is the test set.
    """
    wnids_file = directory / "wnids.txt"
    if not wnids_file.exists():
        raise DataError(f"{directory}: no wnids.txt; not a tiny-imagenet-200 directory")
    wnids = [w.strip() for w in wnids_file.read_text().split() if w.strip()]
    index = {w: i for i, w in enumerate(wnids)}
    words = {}
    if (directory / "words.txt").exists():
        for line in (directory / "words.txt").read_text().splitlines():
            if "\t" in line:
                w, text = line.split("\t", 1)
                words[w] = text.split(",")[0].strip()
    classes = tuple(words.get(w, w) for w in wnids)
    wrap = progress or (lambda it, **_: it)
    train_imgs, train_labels = [], []
    for w in wrap(wnids, desc="tiny_imagenet train classes"):
        files = sorted((directory / "train" / w / "images").glob("*.JPEG"))
        if not files:
            raise DataError(f"{directory / 'train' / w}: no training images for class {w}")
        train_imgs += [_read_jpeg(f) for f in files]
        train_labels += [index[w]] * len(files)
    ann = directory / "val" / "val_annotations.txt"
    if not ann.exists():
        raise DataError(f"{ann}: missing; needed for the validation labels")
    val_imgs, val_labels = [], []
    for line in ann.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) < 2:
            continue
        if parts[1] not in index:
            raise DataError(f"{ann}: class {parts[1]!r} is not in wnids.txt")
        val_imgs.append(_read_jpeg(directory / "val" / "images" / parts[0]))
        val_labels.append(index[parts[1]])
    train = Split(np.stack(train_imgs), np.asarray(train_labels, dtype=np.int64))
    test = Split(np.stack(val_imgs), np.asarray(val_labels, dtype=np.int64))
    return train, test, classes


# --------------------------------------------------------------------------- offline sets


def make_digits() -> tuple[Split, Split, tuple[str, ...]]:
    """scikit-learn's 8×8 digits (1797 images, 0–16 levels → 0–255), a fixed stratified 80/20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    x_tr, x_te, y_tr, y_te = train_test_split(images, d.target.astype(np.int64), test_size=0.2, random_state=0, stratify=d.target)
    return Split(x_tr, y_tr), Split(x_te, y_te), MNIST_CLASSES


def make_synthetic(size: int = 28, n_train: int = 512, n_test: int = 256, seed: int = 0) -> tuple[Split, Split, tuple[str, ...]]:
    """Ten learnable classes: a bright bar at one of ten (position, orientation) settings plus noise."""
    rng = np.random.default_rng(seed)
    classes = tuple(f"bar{i}" for i in range(10))

    def make(n: int) -> Split:
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 60, (n, size, size, 1)).astype(np.float32)
        third = max(size // 4, 1)
        for i, c in enumerate(labels):
            pos = (c % 5) * (size // 5) + size // 10
            if c < 5:
                images[i, pos : pos + third // 2 + 1, :, 0] += 180
            else:
                images[i, :, pos : pos + third // 2 + 1, 0] += 180
        return Split(np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64))

    return make(n_train), make(n_test), classes


# --------------------------------------------------------------------------- acquisition


def _torchvision_download(name: str, root: Path) -> Path:
    """Download with torchvision into ``root``; return the directory of native files."""
    import torchvision.datasets as tvd

    if name in ("fashion_mnist", "mnist"):
        cls = tvd.FashionMNIST if name == "fashion_mnist" else tvd.MNIST
        for train in (True, False):
            cls(str(root), train=train, download=True)
        return root / cls.__name__ / "raw"
    if name in ("cifar10", "cifar100"):
        cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
        cls(str(root), train=True, download=True)
        return root / cls.base_folder
    if name == "tiny_imagenet":
        from torchvision.datasets.utils import download_and_extract_archive

        download_and_extract_archive(TINY_IMAGENET_URL, str(root), md5=MD5["tiny_imagenet"]["tiny-imagenet-200.zip"])
        return root / "tiny-imagenet-200"
    raise DataError(f"{name}: no download source")


def _read_native(name: str, directory: Path, verify: bool, progress: Callable | None) -> tuple[Split, Split, tuple[str, ...]]:
    if not directory.is_dir():
        raise FileNotFoundError(directory)
    if name in ("fashion_mnist", "mnist"):
        present = [f for f in IDX_FILES.values() if (directory / f).exists()]
        if not present and not any((directory / f[:-3]).exists() for f in IDX_FILES.values()):
            raise FileNotFoundError(directory)
        if verify:
            verify_md5(name, directory, present)
        train, test = read_idx_dir(name, directory)
        return train, test, FASHION_CLASSES if name == "fashion_mnist" else MNIST_CLASSES
    if name in ("cifar10", "cifar100"):
        first = "data_batch_1" if name == "cifar10" else "train"
        if not (directory / first).exists():
            raise FileNotFoundError(directory / first)
        if verify:
            verify_md5(name, directory, sorted(MD5[name]))
        return read_cifar_dir(name, directory)
    if name == "tiny_imagenet":
        if not (directory / "wnids.txt").exists():
            raise FileNotFoundError(directory / "wnids.txt")
        return read_tiny_imagenet_dir(directory, progress)
    raise DataError(f"{name}: has no native files to read")


def acquire(cfg: DatasetConfig, download_root: Path, *, progress: Callable | None = None) -> RawDataset:
    """Find, verify and read one dataset; ``DataError`` naming everything tried otherwise.

    Sources in order: ``cfg.source_dir``, the system copy, a download into
    ``download_root`` (when ``cfg.download``).
    """
    name, verify = cfg.name, cfg.verify
    if name == "digits":
        train, test, classes = make_digits()
        return RawDataset(name, train, test, classes, "scikit-learn load_digits")
    if name == "synthetic":
        train, test, classes = make_synthetic(cfg.synthetic_size, cfg.synthetic_train, cfg.synthetic_test)
        return RawDataset(name, train, test, classes, "synthetic")
    tried = []
    candidates: list[tuple[str, Path | None]] = [("source_dir", Path(cfg.source_dir) if cfg.source_dir else None)]
    system = cfg.system_dir or SYSTEM_DIRS.get(name)
    candidates.append(("system copy", Path(system) if system else None))
    for label, directory in candidates:
        if directory is None:
            tried.append(f"{label} (not set)")
            continue
        try:
            train, test, classes = _read_native(name, directory, verify, progress)
            return RawDataset(name, train, test, classes, str(directory))
        except FileNotFoundError:
            tried.append(f"{label} {directory} (not found)")
    if cfg.download:
        try:
            directory = _torchvision_download(name, download_root)
            train, test, classes = _read_native(name, directory, verify, progress)
            return RawDataset(name, train, test, classes, f"download ({directory})")
        except DataError:
            raise
        except Exception as e:  # URLError, socket errors, HTTP errors: offline
            tried.append(f"download ({type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else 'failed'})")
    else:
        tried.append("download (disabled: dataset.download=false)")
    raise DataError(f"{name}: dataset not found; tried {'; '.join(tried)}. To provide it: {HOW_TO_PROVIDE.get(name, '')}")


# --------------------------------------------------------------------------- npz shards


def save_npz(directory: Path, ds: RawDataset) -> None:
    """Write ``train.npz``/``test.npz`` (uncompressed: loads in ms) into an existing directory."""
    for split_name, split in (("train", ds.train), ("test", ds.test)):
        with open(directory / f"{split_name}.npz", "wb") as f:
            np.savez(f, images=split.images, labels=split.labels, classes=np.asarray(ds.classes))


def meta(ds: RawDataset) -> dict:
    """meta.json of a stored dataset (normalization statistics come later, from the training split: ``prepare``)."""
    return {"dataset": ds.name, "source": ds.source, "classes": list(ds.classes), "image_shape_hwc": list(ds.shape),
            "train": len(ds.train.labels), "test": len(ds.test.labels)}


def load_npz(directory: str | os.PathLike) -> RawDataset:
    directory = Path(directory)
    splits, classes = {}, ()
    for split_name in ("train", "test"):
        path = directory / f"{split_name}.npz"
        if not path.exists():
            raise DataError(f"{path}: missing; run `dvc repro download` first")
        try:
            with np.load(path, allow_pickle=False) as z:
                splits[split_name] = Split(z["images"], z["labels"].astype(np.int64))
                classes = tuple(str(c) for c in z["classes"])
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
            raise DataError(f"{path}: corrupted dataset shard ({type(e).__name__}); rerun `dvc repro -f download`") from None
    return RawDataset(directory.name, splits["train"], splits["test"], classes, str(directory))


# --------------------------------------------------------------------------- tensors


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 N×H×W×C images, in [0, 1] units."""
    x = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    return tuple(x.mean(0).round(6).tolist()), tuple(np.maximum(x.std(0), 1e-6).round(6).tolist())


def to_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 N×H×W×C → uint8 N×C×H×W tensor (no copy of values beyond the permute)."""
    t = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
    return t.permute(0, 3, 1, 2).contiguous()


def normalize(images_u8: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 N×C×H×W → float32 normalized N×C×H×W."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (images_u8.float() / 255.0 - m) / s


def denormalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Inverse of ``normalize``, to [0, 1] floats (for display)."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x * s + m).clamp(0, 1)


@dataclass(frozen=True)
class TensorData:
    """A dataset in memory, ready to train: uint8 NCHW tensors + normalization."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def spec(self) -> dict:
        """What a checkpoint needs to rebuild the model and its preprocessing."""
        c, h, _ = self.train_x.shape[1:]
        return {"in_channels": int(c), "num_classes": len(self.classes), "image_size": int(h),
                "mean": list(self.mean), "std": list(self.std), "classes": list(self.classes)}


def prepare(ds: RawDataset, *, val_size: int = 0, max_train: int | None = None, max_test: int | None = None, seed: int = 0) -> TensorData:
    """Seeded split of a validation set off the training split, optional caps, stats from the training part."""
    g = torch.Generator().manual_seed(seed)
    n = len(ds.train.labels)
    perm = torch.randperm(n, generator=g)
    val_size = min(val_size, n // 5)
    val_idx, train_idx = perm[:val_size], perm[val_size:]
    if max_train is not None:
        train_idx = train_idx[:max_train]
    x = to_tensor(ds.train.images)
    y = torch.as_tensor(ds.train.labels)
    test_x, test_y = to_tensor(ds.test.images), torch.as_tensor(ds.test.labels)
    if max_test is not None and max_test < len(test_y):
        # a fixed, class-balanced-in-expectation subset
        idx = torch.randperm(len(test_y), generator=torch.Generator().manual_seed(seed + 1))[:max_test].sort().values
        test_x, test_y = test_x[idx], test_y[idx]
    train_x = x[train_idx]
    mean, std = channel_stats(train_x.permute(0, 2, 3, 1).numpy())
    return TensorData(train_x, y[train_idx], x[val_idx], y[val_idx], test_x, test_y, ds.classes, mean, std)

