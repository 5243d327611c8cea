"""Paper 4's perturbations: exact counts, channel orders, blur = eq. (11), applicability, the stage."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

import cnnvis.encdec  # noqa: F401  (registers "encdec" for build_model)
from cnnvis import ConfigError
from cnnvis import perturb as P
from cnnvis.config import ModelConfig, parse
from cnnvis.io import load_json, save_checkpoint
from cnnvis.models import build_model

from conftest import ROOT

torch.set_num_threads(1)
REFERENCE = ROOT / "reports" / "paper_reference.yaml"


def images(n=4, c=3, h=16, w=16, seed=0) -> torch.Tensor:
    return torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- salt & pepper


@pytest.mark.parametrize(("rate", "shape"), [(0.005, (3, 64, 64)), (0.0005, (3, 64, 64)), (0.005, (1, 28, 28)),
                                             (0.05, (3, 32, 32))])
def test_salt_pepper_sets_exactly_m_distinct_channel_values(rate, shape):
    x = torch.full((5, *shape), 128, dtype=torch.uint8)  # mid-gray: every set value is visible
    (m,) = P.noise_counts((rate,), shape)
    assert m == round(rate * math.prod(shape))  # eq. (12) where it rounds to at least 1
    out = P.salt_pepper(x, m, torch.Generator().manual_seed(0))
    changed = out != x
    assert changed.flatten(1).sum(1).tolist() == [m] * 5  # exactly M per image, all distinct positions
    assert set(out[changed].unique().tolist()) <= {0, 255}
    assert out.dtype == torch.uint8 and out.shape == x.shape


def test_noise_counts_rule():
    levels = (0.0005, 0.005)
    assert P.noise_counts(levels, (3, 64, 64)) == (6, 61)  # the paper's 64 px: eq. (12) unchanged
    assert P.noise_counts(levels, (3, 32, 32)) == (2, 15)
    assert P.noise_counts(levels, (1, 28, 28)) == (1, 4)  # round(0.392) = 0 raised to 1
    assert P.noise_counts(levels, (1, 8, 8)) == (1, 2)  # both round to 0: 1, then one more
    assert P.noise_counts((0.005, 0.0005), (1, 28, 28)) == (4, 1)  # in the order given
    assert P.noise_counts((0.001, 0.002, 0.003), (1, 8, 8)) == (1, 2, 3)
    with pytest.raises(ConfigError, match="salt_pepper_rates"):
        P.noise_counts((0.1, 0.2, 0.3), (1, 1, 2))  # 3 distinct levels on 2 values
    assert "raised to 1" in P.noise_rule(0.0005, 1, (1, 28, 28))
    assert "raised" not in P.noise_rule(0.005, 61, (3, 64, 64))


def _configured() -> list[P.PerturbConfig]:
    conf = parse(P.PerturbConfig, yaml.safe_load((ROOT / "conf" / "perturb" / "default.yaml").read_text()), "perturb")
    return [conf, P.PerturbConfig()]


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 8, 8), (3, 64, 64)])
def test_every_configured_level_changes_values_and_levels_differ(shape):
    """Each salt & pepper level of conf/perturb/default.yaml (and of the schema's defaults) changes at least one
    value of every image, and two levels change different numbers of values."""
    x = torch.full((3, *shape), 128, dtype=torch.uint8)
    for cfg in _configured():
        levels = [p for p in P.perturbations(cfg) if p.name.startswith("salt_pepper")]
        assert len(levels) == len(cfg.salt_pepper_rates) >= 2
        counts = []
        for i, pert in enumerate(levels):
            changed = (pert(x, seed=i) != x).flatten(1).sum(1)
            assert (changed >= 1).all(), (shape, pert.name)
            assert len(set(changed.tolist())) == 1  # the same count in every image
            counts.append(int(changed[0]))
        assert len(set(counts)) == len(counts), (shape, counts)


def test_salt_pepper_hits_channel_values_not_rows_or_pixels():
    x = torch.full((20, 3, 64, 64), 128, dtype=torch.uint8)
    out = P.salt_pepper(x, 61, torch.Generator().manual_seed(1))  # M at λ = 0.005
    changed = out != x
    per_pixel = changed.sum(1)  # channels changed at each pixel
    assert per_pixel.max() <= 3 and (per_pixel == 1).sum() > 0.9 * changed.sum()  # single channel values
    # paper 4's code whitened whole rows (192 values); here ~1 of a row's 192 values is hit on average
    assert changed.sum((1, 3)).max() < 10
    assert changed.any(1).any(2).float().mean() < 0.7  # most rows untouched
    salt = (out == 255).sum().item() / changed.sum().item()
    assert 0.4 < salt < 0.6  # salt and pepper with equal odds


def test_salt_pepper_is_seeded_and_zero_count_is_identity():
    x = images(3)
    a = P.salt_pepper(x, 8, torch.Generator().manual_seed(7))
    assert torch.equal(a, P.salt_pepper(x, 8, torch.Generator().manual_seed(7)))
    assert not torch.equal(a, P.salt_pepper(x, 8, torch.Generator().manual_seed(8)))
    fm = images(2, 1, 28, 28)
    assert torch.equal(P.salt_pepper(fm, 0, torch.Generator().manual_seed(0)), fm)


def test_salt_pepper_noise_does_not_depend_on_chunking():
    x = images(P.NOISE_CHUNK + 5, 1, 8, 8)
    whole = P.salt_pepper(x, 6, torch.Generator().manual_seed(3))
    # the first chunk's images get the same noise whether or not more images follow
    first = P.salt_pepper(x[: P.NOISE_CHUNK], 6, torch.Generator().manual_seed(3))
    assert torch.equal(whole[: P.NOISE_CHUNK], first)


# --------------------------------------------------------------------------- color


def test_channel_orders_exact():
    x = images(2)
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    bgr = P.channel_order(x, "BGR")
    assert torch.equal(bgr, torch.stack([b, g, r], 1))
    brg = P.channel_order(x, "BRG")
    assert torch.equal(brg, torch.stack([b, r, g], 1))
    assert torch.equal(P.channel_order(x, "RGB"), x)


def test_grayscale_exact_luma():
    x = images(2)
    out = P.grayscale(x)
    luma = (0.2989 * x[:, 0].float() + 0.587 * x[:, 1].float() + 0.114 * x[:, 2].float()).to(torch.uint8)
    assert out.shape == x.shape and out.dtype == torch.uint8
    for c in range(3):
        assert torch.equal(out[:, c], luma)


def test_not_applicable_on_grayscale_datasets():
    perts = {p.name: p for p in P.perturbations(P.PerturbConfig())}
    assert list(perts) == ["grayscale", "blur3", "blur5", "bgr", "brg", "salt_pepper_0.0005", "salt_pepper_0.005"]
    for name in ("grayscale", "bgr", "brg"):
        reason = P.applicability(perts[name], 1)
        assert reason is not None and reason.startswith("not applicable") and "1 channel" in reason
        assert P.applicability(perts[name], 3) is None
    for name in ("blur3", "blur5", "salt_pepper_0.005"):
        assert P.applicability(perts[name], 1) is None


# --------------------------------------------------------------------------- blur


@pytest.mark.parametrize(("k", "sigma"), [(3, 0.8), (5, 1.1), (5, 2.0)])
def test_blur_is_eq11(k, sigma):
    x = images(2, 3, 12, 12)
    out = P.gaussian_blur(x, k, sigma)
    # eq. (11) written out: G(x, y) ∝ exp(−(x² + y²) / 2σ²), normalized to sum 1, reflect padding
    ax = torch.arange(k, dtype=torch.float64) - (k - 1) / 2
    g2 = torch.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / (2 * sigma**2))
    g2 = (g2 / g2.sum()).expand(3, 1, k, k)
    ref = F.conv2d(F.pad(x.double(), [k // 2] * 4, mode="reflect"), g2, groups=3)
    assert (out.double() - ref).abs().max() <= 0.5 + 1e-6  # torchvision rounds back to uint8
    assert out.dtype == torch.uint8


def test_config_checks():
    with pytest.raises(ConfigError, match="blur_sigmas"):
        parse(P.PerturbConfig, {"blur_kernels": [3, 5], "blur_sigmas": [1.0]}, "perturb")
    with pytest.raises(ConfigError, match="odd"):
        parse(P.PerturbConfig, {"blur_kernels": [4], "blur_sigmas": [1.0]}, "perturb")
    with pytest.raises(ConfigError, match="permutation"):
        parse(P.PerturbConfig, {"channel_orders": ["RRB"]}, "perturb")
    with pytest.raises(ConfigError, match="repeated"):
        parse(P.PerturbConfig, {"salt_pepper_rates": [0.005, 0.005]}, "perturb")


def test_confidence_metrics_and_deltas():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]))
    m = P.confidence_metrics(logits, torch.tensor([0, 1]))
    assert m == {"top1": 50.0, "conf_pred": pytest.approx(65.0), "conf_true": pytest.approx(50.0), "n": 2}
    d = P.with_deltas({"top1": 40.0, "conf_pred": 60.0, "conf_true": 45.0}, m)
    assert d["delta_top1"] == -10.0 and d["delta_conf_true"] == pytest.approx(-5.0)


def test_explanation_maps_leave_models_unchanged():
    torch.manual_seed(0)
    cnn = build_model(ModelConfig(), in_channels=1, num_classes=3, image_size=12).train()
    enc = build_model(ModelConfig(name="encdec", width_multiplier=0.125), in_channels=1, num_classes=3,
                      image_size=28).train()
    for model, size in ((cnn, 12), (enc, 28)):
        before = {k: v.clone() for k, v in model.state_dict().items()}
        maps = P.explanation_maps(model, torch.randn(2, 1, size, size), torch.tensor([0, 2]))
        assert maps.shape == (2, size, size) and maps.min() >= 0 and maps.max() <= 1
        assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# --------------------------------------------------------------------------- the stage


def _write_dataset(directory, n_train=40, n_test=24, c=1, size=28):
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True)
    for split, n in (("train", n_train), ("test", n_test)):
        with open(directory / f"{split}.npz", "wb") as f:
            np.savez(f, images=rng.integers(0, 256, (n, size, size, c), dtype=np.uint8),
                     labels=rng.integers(0, 3, n).astype(np.int64), classes=np.asarray(["a", "b", "c"]))


def _write_models(tmp_path, c, size):
    spec = {"in_channels": c, "num_classes": 3, "image_size": size, "mean": [0.5] * c, "std": [0.3] * c,
            "classes": ["a", "b", "c"]}
    torch.manual_seed(0)
    for name, cfg in (("baseline", ModelConfig(widths=(4, 4), hidden=8)),
                      ("encdec", ModelConfig(name="encdec", width_multiplier=0.125))):
        model = build_model(cfg, in_channels=c, num_classes=3, image_size=size)
        save_checkpoint(tmp_path / f"{name}.pt", model, cfg, spec)


def test_stage_on_rgb_fills_every_row(tmp_path):
    from stages import perturbation_eval as stage

    _write_dataset(tmp_path / "raw" / "rgb", n_test=8, c=3, size=32)
    _write_models(tmp_path, 3, 32)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"perturb": {"examples": 1}, "hardware": {"progress": "none"}}))
    out = tmp_path / "out"
    stage.main(["--dataset", "rgb", "--data", str(tmp_path / "raw" / "rgb"), "--reference", str(REFERENCE),
                "--encdec", str(tmp_path / "encdec.pt"),
                "--baseline", str(tmp_path / "baseline.pt"), "--metrics", str(out / "p.json"),
                "--table", str(out / "p.md"), "--figures", str(out / "figs"), "--params", str(params)])
    report = load_json(out / "p.json")
    assert report["not_applicable"] == []
    assert {r["perturbation"] for r in report["rows"]} == {"clean", "grayscale", "blur3", "blur5", "bgr", "brg",
                                                           "salt_pepper_0.0005", "salt_pepper_0.005"}
    assert report["salt_pepper_counts"] == {"0.0005": 2, "0.005": 15}  # round(1.536), round(15.36)
    assert "ours (encdec, whole test set)" in (out / "p.md").read_text()


def test_stage_on_tiny_models(tmp_path):
    from stages import perturbation_eval as stage

    _write_dataset(tmp_path / "raw" / "toy")
    _write_models(tmp_path, 1, 28)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"perturb": {"examples": 2, "batch_size": 10},
                                      "hardware": {"progress": "none"}}))
    out = tmp_path / "out"
    args = ["--dataset", "toy", "--data", str(tmp_path / "raw" / "toy"), "--reference", str(REFERENCE),
            "--baseline", str(tmp_path / "baseline.pt"),
            "--encdec", str(tmp_path / "encdec.pt"), "--pruned", str(tmp_path / "nope.pt"),
            "--metrics", str(out / "p.json"), "--table", str(out / "p.md"), "--figures", str(out / "figs"),
            "--params", str(params)]
    with pytest.raises(SystemExit) as e:  # a missing model is an error without the explicit flag
        stage.main(args)
    assert e.value.code == 2
    stage.main([*args, "--skip-missing"])
    report = load_json(out / "p.json")
    names = {(r["perturbation"], r["model"]) for r in report["rows"]}
    assert ("clean", "baseline") in names and ("blur5", "encdec") in names and ("salt_pepper_0.005", "baseline") in names
    assert {s["name"] for s in report["not_applicable"]} == {"grayscale", "bgr", "brg"}
    assert report["salt_pepper_counts"] == {"0.0005": 1, "0.005": 4}  # round(0.392) = 0 raised to 1
    table = (out / "p.md").read_text()
    assert "not applicable" in table and "45.52" in table
    assert "salt & pepper λ=0.0005: 1 channel value per image set to 0 or 255 (M = round(λ·H·W·C) = " \
           "round(0.0005·784) = 0, raised to 1" in table
    rows = {(r["perturbation"], r["model"]): r for r in report["rows"]}
    assert rows["salt_pepper_0.0005", "baseline"]["conf_pred"] != rows["clean", "baseline"]["conf_pred"]
    assert {p.name for p in (out / "figs").iterdir()} == {"blur3.png", "blur5.png", "salt_pepper_0.0005.png",
                                                          "salt_pepper_0.005.png", "summary.png"}


def test_paper_grayscale_number_comes_from_the_reference(tmp_path):
    from stages import perturbation_eval as stage

    _write_dataset(tmp_path / "raw" / "rgb", n_test=4, c=3, size=32)
    _write_models(tmp_path, 3, 32)
    ref = yaml.safe_load(REFERENCE.read_text())
    table = next(t for t in ref["tables"] if t["id"] == "p4_perturbation")
    next(r for r in table["paper_rows"] if r["key"] == "grayscale_encdec")["top1"] = 12.34
    (tmp_path / "ref.yaml").write_text(yaml.safe_dump(ref))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"perturb": {"examples": 1, "blur_kernels": [], "blur_sigmas": [],
                                                  "channel_orders": [], "salt_pepper_rates": []},
                                      "hardware": {"progress": "none"}}))
    out = tmp_path / "out"
    stage.main(["--dataset", "rgb", "--data", str(tmp_path / "raw" / "rgb"), "--reference", str(tmp_path / "ref.yaml"),
                "--encdec", str(tmp_path / "encdec.pt"), "--metrics", str(out / "p.json"),
                "--table", str(out / "p.md"), "--figures", str(out / "figs"), "--params", str(params)])
    assert load_json(out / "p.json")["paper"]["grayscale_top1"] == 12.34
    assert "grayscale input, 12.34 % top-1" in (out / "p.md").read_text()
