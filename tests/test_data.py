"""Every dataset format through the real readers, on small files written here in the exact on-disk formats."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest

from cnnvis import DataError
from cnnvis import data as D
from cnnvis.config import DatasetConfig


def write_idx_set(directory: Path, n_train: int = 20, n_test: int = 10, size: int = 28, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test).astype(np.uint8),
    }
    for key, fname in D.IDX_FILES.items():
        D.write_idx(directory / fname, arrays[key])
    return arrays


def test_idx_round_trip(tmp_path):
    arrays = write_idx_set(tmp_path)
    train, test = D.read_idx_dir("mnist", tmp_path)
    assert train.images.shape == (20, 28, 28, 1) and train.images.dtype == np.uint8
    np.testing.assert_array_equal(train.images[..., 0], arrays["train_images"])
    np.testing.assert_array_equal(test.labels, arrays["test_labels"])


def test_idx_header_is_big_endian_and_exact(tmp_path):
    D.write_idx(tmp_path / "x.gz", np.arange(6, dtype=np.uint8).reshape(2, 3))
    raw = gzip.decompress((tmp_path / "x.gz").read_bytes())
    assert raw[:4] == b"\x00\x00\x08\x02" and raw[4:12] == b"\x00\x00\x00\x02\x00\x00\x00\x03"


def test_idx_truncated_is_a_clear_error(tmp_path):
    write_idx_set(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    with gzip.open(path, "wb") as f:
        f.write(raw[:-100])
    with pytest.raises(DataError, match="truncated or corrupted"):
        D.read_idx_dir("mnist", tmp_path)


def test_idx_broken_gzip_is_a_clear_error(tmp_path):
    write_idx_set(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(DataError, match="unreadable IDX file"):
        D.read_idx_dir("mnist", tmp_path)


def test_idx_bad_magic(tmp_path):
    write_idx_set(tmp_path)
    with gzip.open(tmp_path / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x0d\x01" + b"\x00" * 24)
    with pytest.raises(DataError, match="bad magic number"):
        D.read_idx_dir("mnist", tmp_path)


def write_cifar(directory: Path, kind: str, n: int = 8, seed: int = 0) -> np.ndarray:
    """CIFAR python pickles: dict with 'data' N×3072 uint8 (R, G, B planes, row-major) and labels."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    flat = images.transpose(0, 3, 1, 2).reshape(n, 3072)
    if kind == "cifar10":
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            with open(directory / name, "wb") as f:
                pickle.dump({"data": flat, "labels": list(rng.integers(0, 10, n)), "batch_label": name}, f)
        with open(directory / "batches.meta", "wb") as f:
            pickle.dump({"label_names": [f"c{i}" for i in range(10)], "num_vis": 3072}, f)
    else:
        for name in ("train", "test"):
            with open(directory / name, "wb") as f:
                pickle.dump({"data": flat, "fine_labels": list(rng.integers(0, 100, n)), "coarse_labels": [0] * n}, f)
        with open(directory / "meta", "wb") as f:
            pickle.dump({"fine_label_names": [f"f{i}" for i in range(100)], "coarse_label_names": ["x"] * 20}, f)
    return images


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_cifar_pickles(tmp_path, kind):
    images = write_cifar(tmp_path, kind)
    train, test, classes = D.read_cifar_dir(kind, tmp_path)
    n_train = 8 * (5 if kind == "cifar10" else 1)
    assert train.images.shape == (n_train, 32, 32, 3)
    np.testing.assert_array_equal(train.images[:8], images)  # plane order R,G,B → HWC
    assert len(classes) == (10 if kind == "cifar10" else 100)
    assert test.labels.dtype == np.int64


def test_cifar_truncated_pickle(tmp_path):
    write_cifar(tmp_path, "cifar10")
    p = tmp_path / "data_batch_3"
    p.write_bytes(p.read_bytes()[:500])
    with pytest.raises(DataError, match="data_batch_3: unreadable CIFAR pickle"):
        D.read_cifar_dir("cifar10", tmp_path)


def write_tiny_imagenet(root: Path, wnids=("n01443537", "n01629819"), per_class: int = 3) -> Path:
    from PIL import Image

    d = root / "tiny-imagenet-200"
    rng = np.random.default_rng(0)
    (d / "val" / "images").mkdir(parents=True)
    (d / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (d / "words.txt").write_text("n01443537\tgoldfish, Carassius auratus\nn01629819\tEuropean fire salamander\n")
    lines = []
    for w in wnids:
        (d / "train" / w / "images").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(d / "train" / w / "images" / f"{w}_{i}.JPEG", "JPEG")
        name = f"val_{len(lines)}.JPEG"
        Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(d / "val" / "images" / name, "JPEG")  # grayscale file
        lines.append(f"{name}\t{w}\t0\t0\t63\t63")
    (d / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return d


def test_tiny_imagenet_folders(tmp_path):
    d = write_tiny_imagenet(tmp_path)
    train, test, classes = D.read_tiny_imagenet_dir(d)
    assert train.images.shape == (6, 64, 64, 3)
    assert test.images.shape == (2, 64, 64, 3)  # grayscale JPEGs converted to RGB
    assert list(train.labels) == [0, 0, 0, 1, 1, 1] and list(test.labels) == [0, 1]
    assert classes == ("goldfish", "European fire salamander")


def test_tiny_imagenet_unknown_val_class(tmp_path):
    d = write_tiny_imagenet(tmp_path)
    (d / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99999999\t0\t0\t63\t63\n")
    with pytest.raises(DataError, match="not in wnids.txt"):
        D.read_tiny_imagenet_dir(d)


def test_digits_and_synthetic():
    train, test, classes = D.make_digits()
    assert train.images.shape[1:] == (8, 8, 1) and len(train.labels) + len(test.labels) == 1797
    assert train.images.max() == 255 and classes[3] == "3"
    tr, te, _ = D.make_synthetic(16, 50, 20, seed=1)
    tr2, _, _ = D.make_synthetic(16, 50, 20, seed=1)
    np.testing.assert_array_equal(tr.images, tr2.images)
    assert tr.images.shape == (50, 16, 16, 1) and te.labels.max() < 10


def test_acquire_prefers_source_dir_and_checks_md5(tmp_path):
    write_idx_set(tmp_path / "src")
    cfg = DatasetConfig(name="mnist", source_dir=str(tmp_path / "src"), download=False)
    with pytest.raises(DataError, match="checksum mismatch .*verify=false"):
        D.acquire(cfg, tmp_path / "dl")
    cfg = DatasetConfig(name="mnist", source_dir=str(tmp_path / "src"), download=False, verify=False)
    ds = D.acquire(cfg, tmp_path / "dl")
    assert ds.source == str(tmp_path / "src") and ds.shape == (28, 28, 1)


def test_acquire_offline_names_everything_tried(tmp_path, monkeypatch):
    def offline(name, root):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(D, "_torchvision_download", offline)
    cfg = DatasetConfig(name="cifar10", source_dir=str(tmp_path / "nowhere"))
    with pytest.raises(DataError) as err:
        D.acquire(cfg, tmp_path / "dl")
    msg = str(err.value)
    assert msg.startswith("cifar10: dataset not found; tried source_dir")
    assert "download (OSError" in msg and "cifar-10-batches-py" in msg and "\n" not in msg


def test_fashion_mnist_system_copy_checksums():
    system = Path(D.SYSTEM_DIRS["fashion_mnist"])
    if not (system / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    D.verify_md5("fashion_mnist", system, list(D.IDX_FILES.values()))


def test_npz_round_trip_and_corruption(tmp_path):
    tr, te, classes = D.make_synthetic(12, 30, 10)
    ds = D.RawDataset("synthetic", tr, te, classes, "synthetic")
    D.save_npz(tmp_path, ds)
    back = D.load_npz(tmp_path)
    np.testing.assert_array_equal(back.train.images, tr.images)
    assert back.classes == classes
    (tmp_path / "test.npz").write_bytes((tmp_path / "test.npz").read_bytes()[:200])
    with pytest.raises(DataError, match="corrupted dataset shard"):
        D.load_npz(tmp_path)


def test_prepare_split_and_stats():
    tr, te, classes = D.make_synthetic(12, 100, 40)
    td = D.prepare(D.RawDataset("s", tr, te, classes, "s"), val_size=10, max_train=50, max_test=20, seed=3)
    assert len(td.val_y) == 10 and len(td.train_y) == 50 and len(td.test_y) == 20
    assert td.train_x.shape[1:] == (1, 12, 12)
    x = D.normalize(td.train_x, td.mean, td.std)
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-2
