"""The ``cnnvis`` command end to end: torchvision ResNet-18 and cnnvis checkpoints, the maps it writes against
the Python API, bad input (one line, exit 2, nothing written), the console script and the example."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cnnvis.attribution import METHODS, InputGradient
from cnnvis.cli import main

ROOT = Path(__file__).resolve().parent.parent
SIZE = 64  # px: small images keep every call well under a second
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _write_images(directory: Path) -> list[str]:
    """Two RGB PNGs of other sizes than SIZE and a grayscale JPEG (read as RGB for a 3-channel model)."""
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (80, 60, 3), dtype=np.uint8)).save(directory / "b.png")
    Image.fromarray(rng.integers(0, 256, (50, 50, 3), dtype=np.uint8)).save(directory / "a.png")
    Image.fromarray(rng.integers(0, 256, (70, 90), dtype=np.uint8)).save(directory / "c.JPG")
    (directory / "notes.txt").write_text("not an image")
    return ["a.png", "b.png", "c.JPG"]


def _reference_inputs(directory: Path, files: list[str], mode: str, size: int, mean, std) -> torch.Tensor:
    """The preprocessing the CLI documents, written out independently: PIL convert, bilinear resize, normalize."""
    arrays = [np.asarray(Image.open(directory / f).convert(mode).resize((size, size), Image.Resampling.BILINEAR),
                         dtype=np.float32) / 255.0 for f in files]
    x = torch.from_numpy(np.stack(arrays))
    x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


@pytest.fixture(scope="module")
def tv(tmp_path_factory):
    """torchvision resnet18 (10 classes, random weights, BN statistics randomized) saved as a state_dict, and images."""
    import torchvision

    root = tmp_path_factory.mktemp("tv")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = torch.rand(m.weight.shape, generator=g) + 0.5
            m.running_mean = torch.randn(m.running_mean.shape, generator=g) * 0.1
            m.running_var = torch.rand(m.running_var.shape, generator=g) + 0.5
    model.eval()
    weights = root / "resnet18.pt"
    torch.save(model.state_dict(), weights)
    files = _write_images(root / "images")
    x = _reference_inputs(root / "images", files, "RGB", SIZE, IMAGENET_MEAN, IMAGENET_STD)
    return SimpleNamespace(model=model, weights=weights, images=root / "images", files=files, x=x)


def _explain(tv, out: Path, *extra: str) -> list[str]:
    return ["explain", "--model", "torchvision:resnet18", "--weights", str(tv.weights), "--images", str(tv.images),
            "--image-size", str(SIZE), "--out", str(out), *extra]


def _run(capsys, argv: list[str]) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def _meta(npz) -> dict:
    return json.loads(str(npz["metadata"]))


def _no_leftovers(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]  # no temporary sibling


# --------------------------------------------------------------------------- explain


def test_explain_guided_gradcam_on_torchvision_resnet18(tv, tmp_path, capsys):
    out = tmp_path / "explained"
    rc, stdout, stderr = _run(capsys, _explain(tv, out, "--method", "guided-gradcam", "--layer", "layer4"))
    assert rc == 0, stderr
    assert stderr == ""  # no progress bar: stderr is not a terminal here
    assert "3 maps of guided_gradcam" in stdout
    with np.load(out / "maps.npz", allow_pickle=False) as z:
        assert list(z["files"]) == tv.files  # sorted by name; notes.txt skipped
        maps = torch.from_numpy(z["maps"])
        assert maps.dtype == torch.float32 and maps.shape == (3, 3, SIZE, SIZE)
        with torch.no_grad():
            logits = tv.model(tv.x)
        pred = logits.argmax(1)
        np.testing.assert_array_equal(z["predicted"], pred.numpy())
        np.testing.assert_array_equal(z["targets"], pred.numpy())
        np.testing.assert_allclose(z["target_probability"], logits.softmax(1).gather(1, pred[:, None])[:, 0].numpy(),
                                   rtol=1e-5)
        meta = _meta(z)
    from cnnvis.attribution import GuidedGradCAM

    api = GuidedGradCAM(tv.model, tv.model.layer4).attribute(tv.x, pred)
    assert api.abs().max() > 0
    torch.testing.assert_close(maps, api, atol=1e-6 * float(api.abs().max()), rtol=0)
    import cnnvis

    assert meta["method"] == "guided_gradcam" and meta["layer"] == "layer4" and meta["target"] == "predicted"
    assert meta["model"] == "torchvision:resnet18" and meta["num_classes"] == 10
    assert meta["weights_sha256"] == hashlib.sha256(tv.weights.read_bytes()).hexdigest()
    assert meta["conventions"]["cam_relu"] is True and meta["conventions"]["upsampling"] == "bilinear"
    assert meta["input_normalization"] == {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    assert meta["versions"]["cnnvis"] == cnnvis.__version__ and meta["image_size"] == SIZE
    for name in ("a_png", "b_png", "c_JPG"):
        with Image.open(out / "figures" / f"{name}.png") as fig:
            assert fig.format == "PNG" and fig.size == (960, 360)
    assert sorted(p.name for p in out.iterdir()) == ["figures", "maps.npz"]


@pytest.mark.parametrize("name", sorted(METHODS))
def test_explain_every_registry_method_equals_the_python_api(tv, tmp_path, capsys, name):
    cls = METHODS[name]
    layer = [] if issubclass(cls, InputGradient) else ["--layer", "layer3"]
    rc, _, stderr = _run(capsys, _explain(tv, tmp_path / "o", "--method", name.replace("_", "-"), "--target", "3",
                                          "--batch-size", "2", *layer))  # 3 images: batches of 2 and 1
    assert rc == 0, stderr
    method = cls(tv.model) if not layer else cls(tv.model, tv.model.layer3)
    api = method.attribute(tv.x, 3)
    with np.load(tmp_path / "o" / "maps.npz") as z:
        assert (z["targets"] == 3).all()
        assert _meta(z)["target"] == 3 and _meta(z)["layer"] == (None if not layer else "layer3")
        torch.testing.assert_close(torch.from_numpy(z["maps"]), api, atol=1e-5 * float(api.abs().max()), rtol=1e-4)


def test_explain_defaults_to_the_last_conv_layer(tv, tmp_path, capsys):
    rc, _, stderr = _run(capsys, _explain(tv, tmp_path / "o", "--method", "gradcam"))
    assert rc == 0, stderr
    with np.load(tmp_path / "o" / "maps.npz") as z:
        assert _meta(z)["layer"] == "layer4.1.conv2"
        assert z["maps"].shape == (3, 1, SIZE, SIZE)


def test_explain_a_cnnvis_checkpoint_uses_its_own_size_and_normalization(tmp_path, capsys):
    from cnnvis.attribution import GradCAM
    from cnnvis.config import ModelConfig
    from cnnvis.io import save_checkpoint
    from cnnvis.models import build_model

    torch.manual_seed(0)
    cfg = ModelConfig(widths=(8, 16), kernel_sizes=(3, 3), hidden=32)
    model = build_model(cfg, in_channels=1, num_classes=10, image_size=28).eval()
    classes = [f"class{i}" for i in range(10)]
    spec = {"in_channels": 1, "num_classes": 10, "image_size": 28, "mean": [0.3], "std": [0.2], "classes": classes}
    ckpt = tmp_path / "baseline.pt"
    save_checkpoint(ckpt, model, cfg, spec)
    images = tmp_path / "images"
    files = _write_images(images)
    rc, _, stderr = _run(capsys, ["explain", "--model", str(ckpt), "--images", str(images), "--method", "gradcam",
                                  "--layer", "features.conv2", "--out", str(tmp_path / "o")])
    assert rc == 0, stderr
    x = _reference_inputs(images, files, "L", 28, [0.3], [0.2])
    api = GradCAM(model, model.features.conv2).attribute(x)
    with np.load(tmp_path / "o" / "maps.npz") as z:
        meta = _meta(z)
        torch.testing.assert_close(torch.from_numpy(z["maps"]), api, atol=1e-6, rtol=1e-5)
    assert meta["image_size"] == 28 and meta["input_normalization"] == {"mean": [0.3], "std": [0.2]}
    assert meta["classes"] == classes and meta["weights_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- phash and importance


def test_phash_of_images(tmp_path, capsys):
    from cnnvis.config import parse
    from cnnvis.similarity import SimilarityConfig, hash_maps

    d = tmp_path / "images"
    d.mkdir()
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(base).save(d / "a.png")
    Image.fromarray(base).save(d / "b.png")  # a duplicate
    Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)).save(d / "c.png")
    Image.fromarray(np.full((20, 20, 3), 128, np.uint8)).save(d / "d.png")  # constant: no fingerprint
    rc, stdout, stderr = _run(capsys, ["phash", "--images", str(d), "--out", str(tmp_path / "o")])
    assert rc == 0, stderr
    assert "4 items, 1 near-duplicate group(s)" in stdout
    with np.load(tmp_path / "o" / "similarity.npz") as z:
        sim, dead, bits, meta = z["similarity"], z["dead"], z["bits"], _meta(z)
        assert list(z["names"]) == ["a.png", "b.png", "c.png", "d.png"]
    assert sim[0, 1] == 1.0 and sim[0, 0] == 1.0 and 0.0 < sim[0, 2] < 0.9
    assert dead.tolist() == [False, False, False, True] and np.isnan(sim[3]).all() and np.isnan(sim[:, 3]).all()
    np.testing.assert_array_equal(sim, sim.T)
    assert meta["near_duplicate_groups"] == [["a.png", "b.png"]] and meta["dead"] == ["d.png"]
    cfg = parse(SimilarityConfig, {}, "phash")
    c = np.asarray(Image.open(d / "c.png").convert("RGB"), dtype=np.float32).transpose(2, 0, 1)
    np.testing.assert_array_equal(bits[2], hash_maps(c[None], cfg)[0][0])
    assert sim[0, 2] == 1 - (bits[0] != bits[2]).sum() / 64
    assert (tmp_path / "o" / "similarity.png").is_file()


def test_phash_of_maps_4d_and_5d(tmp_path, capsys):
    from cnnvis.config import parse
    from cnnvis.similarity import SimilarityConfig, layer_similarity

    g = np.random.default_rng(1)
    maps = g.standard_normal((4, 1, 16, 16)).astype(np.float32)
    maps[1] = 3 * maps[0] + 1  # the same map after min-max scaling
    recon = g.standard_normal((3, 5, 1, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "m.npz", maps=maps, files=np.array(["w", "x", "y", "z"]), recon=recon)
    rc, _, stderr = _run(capsys, ["phash", "--maps", str(tmp_path / "m.npz"), "--out", str(tmp_path / "o4")])
    assert rc == 0, stderr
    with np.load(tmp_path / "o4" / "similarity.npz") as z:
        assert list(z["names"]) == ["w", "x", "y", "z"] and z["similarity"][0, 1] == 1.0
    rc, _, stderr = _run(capsys, ["phash", "--maps", str(tmp_path / "m.npz"), "--key", "recon", "--method", "median",
                                  "--out", str(tmp_path / "o5")])
    assert rc == 0, stderr
    ref = layer_similarity(recon, parse(SimilarityConfig, {"method": "median"}, "phash"))
    with np.load(tmp_path / "o5" / "similarity.npz") as z:
        np.testing.assert_array_equal(z["similarity"], ref.mean)
        np.testing.assert_array_equal(z["count"], ref.count)
        assert z["similarity"].shape == (5, 5) and _meta(z)["method"] == "median"


def test_importance_equals_filter_importance(tv, tmp_path, capsys):
    from cnnvis.importance import FilterImportance

    layers = ["layer1.0.conv1", "layer4.1.conv2"]
    rc, stdout, stderr = _run(capsys, ["importance", "--model", "torchvision:resnet18", "--weights", str(tv.weights),
                                       "--images", str(tv.images), "--image-size", str(SIZE), "--layers", ",".join(layers),
                                       "--target", "2", "--out", str(tmp_path / "o")])
    assert rc == 0, stderr
    assert "576 filters in 2 layer(s) on 3 image(s)" in stdout
    ref = FilterImportance(tv.model, layers).attribute(tv.x, 2)
    with np.load(tmp_path / "o" / "importance.npz") as z:
        assert list(z["layers"]) == layers and (z["targets"] == 2).all()
        for name in layers:
            assert z[f"importance/{name}"].shape == (3, tv.model.get_submodule(name).out_channels)
            assert ref[name].abs().max() > 0
            np.testing.assert_allclose(z[f"importance/{name}"], ref[name].numpy(), rtol=1e-5)
        assert _meta(z)["weights_sha256"] == hashlib.sha256(tv.weights.read_bytes()).hexdigest()
    assert (tmp_path / "o" / "importance.png").is_file()


# --------------------------------------------------------------------------- bad input


def _garbage(tmp_path: Path, tv) -> dict[str, Path]:
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(tv.weights.read_bytes()[:4000])
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    np.save(tmp_path / "single.npy", np.zeros((2, 1, 4, 4)))
    np.savez(tmp_path / "maps.npz", maps=np.zeros((2, 1, 4, 4)))
    return {"truncated": truncated, "empty": empty, "broken": broken}


BAD = [  # (id, argv after the command's fixed part, words the one-line message must contain)
    ("missing weights", lambda tv, t: _swap(_explain(tv, t / "out", "--method", "gradcam"), "--weights", t / "no.pt"),
     ["no.pt", "no such file", "torch.save"]),
    ("corrupted weights", lambda tv, t: _swap(_explain(tv, t / "out", "--method", "gradcam"), "--weights",
                                              t / "truncated.pt"), ["truncated.pt", "not a readable PyTorch weights"]),
    ("weights of another model", lambda tv, t: _swap(_explain(tv, t / "out", "--method", "gradcam"), "--model",
                                                     "torchvision:resnet34"), ["does not fit torchvision:resnet34"]),
    ("unknown torchvision model", lambda tv, t: _swap(_explain(tv, t / "out", "--method", "gradcam"), "--model",
                                                      "torchvision:resnet19"), ["unknown torchvision", "resnet18"]),
    ("model neither name nor file", lambda tv, t: _swap(_explain(tv, t / "out", "--method", "gradcam"), "--model",
                                                        t / "nothing.pt"), ["neither torchvision:NAME"]),
    ("unknown method", lambda tv, t: _explain(tv, t / "out", "--method", "gradcom"), ["invalid choice", "guided-gradcam"]),
    ("bad layer name", lambda tv, t: _explain(tv, t / "out", "--method", "gradcam", "--layer", "layer5"),
     ["layer5", "no module of that name", "did you mean layer4"]),
    ("layer without feature maps", lambda tv, t: _explain(tv, t / "out", "--method", "gradcam", "--layer", "fc"),
     ["--layer fc", "N×K×h×w"]),
    ("layer for an input method", lambda tv, t: _explain(tv, t / "out", "--method", "saliency", "--layer", "layer4"),
     ["takes no layer"]),
    ("image dir with no images", lambda tv, t: _swap(_explain(tv, t / "out", "--method", "gradcam"), "--images",
                                                     t / "empty"), ["no PNG or JPEG images"]),
    ("missing image dir", lambda tv, t: _swap(_explain(tv, t / "out", "--method", "gradcam"), "--images", t / "nope"),
     ["no such directory"]),
    ("unreadable image", lambda tv, t: _swap(_explain(tv, t / "out", "--method", "gradcam"), "--images", t / "broken"),
     ["x.png", "not a readable PNG/JPEG"]),
    ("target out of range", lambda tv, t: _explain(tv, t / "out", "--method", "gradcam", "--target", "10"),
     ["--target 10", "10 classes"]),
    ("target not a number", lambda tv, t: _explain(tv, t / "out", "--method", "gradcam", "--target", "cat"),
     ["--target", "class index"]),
    ("missing option", lambda tv, t: _explain(tv, t / "out"), ["required", "--method"]),
    ("phash of a missing file", lambda tv, t: ["phash", "--maps", str(t / "no.npz"), "--out", str(t / "out")],
     ["no.npz", "no such file"]),
    ("phash of a .npy", lambda tv, t: ["phash", "--maps", str(t / "single.npy"), "--out", str(t / "out")], ["not an .npz"]),
    ("phash of torch weights", lambda tv, t: ["phash", "--maps", str(tv.weights), "--out", str(t / "out")],
     ["not an .npz of arrays"]),
    ("phash unknown key", lambda tv, t: ["phash", "--maps", str(t / "maps.npz"), "--key", "recon", "--out", str(t / "out")],
     ["--key recon", "maps"]),
    ("importance of a linear layer", lambda tv, t: ["importance", "--model", "torchvision:resnet18", "--weights",
                                                    str(tv.weights), "--images", str(tv.images), "--layers", "fc",
                                                    "--out", str(t / "out")], ["--layers fc", "not an nn.Conv2d"]),
]


def _swap(argv: list[str], flag: str, value) -> list[str]:
    i = argv.index(flag)
    return [*argv[: i + 1], str(value), *argv[i + 2 :]]


@pytest.mark.parametrize(("build", "words"), [(b, w) for _, b, w in BAD], ids=[i for i, _, _ in BAD])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tv, tmp_path, capsys, build, words):
    _garbage(tmp_path, tv)
    argv = build(tv, tmp_path)
    rc, stdout, stderr = _run(capsys, argv)
    assert rc == 2
    assert stdout == ""
    assert stderr.count("\n") == 1 and stderr.startswith(f"cnnvis {argv[0]}: error: "), stderr
    for w in words:
        assert w in stderr, (w, stderr)
    _no_leftovers(tmp_path / "out")


def test_a_failure_while_writing_leaves_no_output(tv, tmp_path, monkeypatch):
    import cnnvis.cli._figures as figures

    real, calls = figures.explanation, []

    def second_fails(*a):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real(*a)

    monkeypatch.setattr(figures, "explanation", second_fails)
    with pytest.raises(RuntimeError, match="disk full"):
        main(_explain(tv, tmp_path / "out", "--method", "gradcam"))
    assert len(calls) == 2
    _no_leftovers(tmp_path / "out")


def test_out_is_replaced_only_with_overwrite_and_only_if_it_is_ours(tv, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(capsys, _explain(tv, out, "--method", "gradcam"))[0] == 0
    rc, _, stderr = _run(capsys, _explain(tv, out, "--method", "saliency"))
    assert rc == 2 and "--overwrite" in stderr
    with np.load(out / "maps.npz") as z:
        assert _meta(z)["method"] == "gradcam"
    assert _run(capsys, _explain(tv, out, "--method", "saliency", "--overwrite"))[0] == 0
    with np.load(out / "maps.npz") as z:
        assert _meta(z)["method"] == "saliency"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    rc, _, stderr = _run(capsys, _explain(tv, mine, "--method", "gradcam", "--overwrite"))
    assert rc == 2 and "refusing" in stderr
    assert (mine / "thesis.tex").read_text() == "precious" and sorted(os.listdir(mine)) == ["thesis.tex"]


# --------------------------------------------------------------------------- help, progress, console script, example


def test_help_of_each_command(capsys):
    assert main(["--help"]) == 0
    top = capsys.readouterr().out
    assert all(c in top for c in ("explain", "phash", "importance"))
    assert main(["explain", "--help"]) == 0
    text = capsys.readouterr().out
    for name in METHODS:
        assert name.replace("_", "-") in text
    for words in ("equals: captum.attr.GuidedGradCam", "interpolate_mode='bilinear'", "torchvision:NAME",
                  "ImageNet mean/std", "maps.npz", "sha256", "'predicted'"):
        assert words in " ".join(text.split()), words
    assert main(["phash", "--help"]) == 0
    assert "imagehash.phash" in capsys.readouterr().out
    assert main(["importance", "--help"]) == 0
    assert "‖∂y_c/∂W_f‖₂" in capsys.readouterr().out
    assert main(["--version"]) == 0
    import cnnvis

    assert capsys.readouterr().out.strip() == f"cnnvis {cnnvis.__version__}"


def test_progress_bars_are_drawn_on_a_terminal_only(tv, tmp_path, capsys, monkeypatch):
    class Terminal:  # a stderr that says it is a terminal
        def __init__(self):
            self.text = []

        def isatty(self):
            return True

        def write(self, s):
            self.text.append(s)

        def flush(self):
            pass

    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    assert main(_explain(tv, tmp_path / "o", "--method", "saliency", "--batch-size", "2")) == 0
    drawn = "".join(term.text)
    assert "explain" in drawn and "2/2" in drawn and "figures" in drawn and "3/3" in drawn


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}


def test_installed_console_script(tv, tmp_path):
    script = Path(sys.executable).parent / "cnnvis"
    assert script.is_file(), "run `.venv/bin/pip install -e .` to install the console script"
    ok = subprocess.run([str(script), *_explain(tv, tmp_path / "o", "--method", "guided-backprop")], env=_env(),
                        capture_output=True, text=True, timeout=600)
    assert ok.returncode == 0, ok.stderr
    assert ok.stderr == "" and "3 maps of guided_backprop" in ok.stdout
    with np.load(tmp_path / "o" / "maps.npz") as z:
        assert z["maps"].shape == (3, 3, SIZE, SIZE)
    bad = subprocess.run([str(script), *_swap(_explain(tv, tmp_path / "bad", "--method", "gradcam"), "--model",
                                              "torchvision:nonet")], env=_env(), capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("cnnvis explain: error: --model torchvision:nonet")
    _no_leftovers(tmp_path / "bad")


def test_example_own_model_runs(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "examples" / "own_model.py"), "--out", str(tmp_path)], env=_env(),
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "max |CLI - API| = " in run.stdout
    with np.load(tmp_path / "explained" / "maps.npz") as z:
        assert z["maps"].shape == (3, 3, 64, 64) and _meta(z)["method"] == "guided_gradcam"
    assert len(list((tmp_path / "explained" / "figures").glob("*.png"))) == 3
