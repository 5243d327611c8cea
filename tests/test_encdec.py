"""Paper 4's encoder-decoder: shapes, no class mixing, GAP = logits, checkpoints, the map study."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from cnnvis import ConfigError
from cnnvis import encdec as E
from cnnvis.config import ModelConfig, parse
from cnnvis.io import save_checkpoint
from cnnvis.models import build_model, load_checkpoint

from conftest import ROOT

torch.set_num_threads(1)
REFERENCE = ROOT / "reports" / "paper_reference.yaml"


def tiny(num_classes: int = 5, in_channels: int = 1, size: int = 28, **kw) -> E.EncDec:
    torch.manual_seed(0)
    cfg = ModelConfig(name="encdec", width_multiplier=0.125, **kw)
    return build_model(cfg, in_channels=in_channels, num_classes=num_classes, image_size=size).eval()


@pytest.mark.parametrize(("size", "channels", "small"), [(28, 1, True), (32, 3, True), (64, 3, True), (64, 3, False)])
def test_class_maps_are_8x8(size, channels, small):
    model = tiny(7, channels, size, small_input_stem=small)
    x = torch.randn(2, channels, size, size)
    assert model.encoder.forward_features(x).shape[-2:] == (2, 2)  # the paper's (2, 2, C) encoding
    maps = model.class_maps(x)
    assert maps.shape == (2, 7, 8, 8)
    assert model.map_side == 8
    assert (maps >= 0).all()  # last ReLU (section 5.1)


def test_gap_of_maps_equals_logits():
    model = tiny()
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(model(x), model.class_maps(x).mean((2, 3)))


def test_last_layer_is_a_group_conv_without_class_mixing():
    model = tiny(num_classes=6)
    assert model.group_up.groups == 6 and model.group_up.in_channels == model.group_up.out_channels == 6
    x = torch.randn(2, 1, 28, 28)
    base = model.class_maps(x)
    c = 3

    def bump(_module, args):  # perturb only class c's input channel of the group conv
        z = args[0].clone()
        z[:, c] += 5.0 * torch.randn_like(z[:, c]).abs() + 1.0
        return (z,)

    handle = model.group_up.register_forward_pre_hook(bump)
    try:
        moved = model.class_maps(x)
    finally:
        handle.remove()
    changed = (moved - base).abs().flatten(2).amax(2)  # N×C
    assert (changed[:, c] > 0).all()
    others = [k for k in range(6) if k != c]
    assert torch.equal(changed[:, others], torch.zeros_like(changed[:, others]))


def test_relus_are_distinct_non_inplace_modules():
    model = tiny()
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert relus and all(not r.inplace for r in relus)
    assert len({id(r) for r in relus}) == len(relus)


def test_checkpoint_rebuilds_from_file_alone(tmp_path):
    cfg = E.EncDecConfig(width_multiplier=0.125)
    torch.manual_seed(1)
    model = build_model(cfg.model_config(), in_channels=1, num_classes=4, image_size=28).eval()
    spec = {"in_channels": 1, "num_classes": 4, "image_size": 28, "mean": [0.5], "std": [0.25], "classes": list("abcd")}
    save_checkpoint(tmp_path / "e.pt", model, cfg.model_config(), spec, encdec={"width_multiplier": 0.125})
    loaded, state = load_checkpoint(tmp_path / "e.pt")
    assert isinstance(loaded, E.EncDec) and state["model"]["name"] == "encdec"
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(loaded(x), model(x))


def test_resnet_like_shares_the_stem():
    cfg = E.EncDecConfig(width_multiplier=0.125)
    plain = E.build_resnet_like(cfg, 1, 10, 28)
    assert plain.conv1.stride == (2, 2) and plain(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_config_section_validates_nested_train():
    cfg = parse(E.EncDecConfig, {"width_multiplier": 0.5, "train": {"epochs": 3, "lr": 0.01}}, "encdec")
    assert cfg.train.epochs == 3 and cfg.dropout == 0.3
    with pytest.raises(ConfigError, match="encdec.train.epochs"):
        parse(E.EncDecConfig, {"train": {"epochs": 0}}, "encdec")
    with pytest.raises(ConfigError, match="encdec.bogus"):
        parse(E.EncDecConfig, {"bogus": 1}, "encdec")


def test_normalize_maps_eq10():
    m = torch.tensor([[[0.0, 2.0], [1.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]])
    out = E.normalize_maps(m)
    torch.testing.assert_close(out[0], torch.tensor([[0.0, 0.5], [0.25, 1.0]]))
    assert torch.equal(out[1], torch.zeros(2, 2))


def test_pearson_and_sharpness_exact():
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    torch.testing.assert_close(E.pearson_rows(a, 2 * a + 1), torch.tensor([1.0]))
    torch.testing.assert_close(E.pearson_rows(a, -a), torch.tensor([-1.0]))
    assert E.pearson_rows(a, torch.ones(1, 4)).item() == 0.0
    onehot = torch.zeros(1, 4, 4)
    onehot[0, 1, 2] = 3.0
    s = E.sharpness(onehot)
    assert s["peak_to_mean"].item() == pytest.approx(16.0) and s["entropy"].item() == pytest.approx(0.0, abs=1e-6)
    flat = E.sharpness(torch.ones(1, 4, 4))
    assert flat["peak_to_mean"].item() == pytest.approx(1.0) and flat["entropy"].item() == pytest.approx(np.log(16))


def test_settle_epochs():
    final = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [0.0, 0.0]]])
    other = torch.tensor([[[0.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [1.0, 0.0]]])
    # probe 0 settles at 2.0 (flips away once at 1.0); probe 1 only at the end
    snaps = torch.stack([torch.stack([final[0], other[1]]), torch.stack([other[0], other[1]]),
                         torch.stack([final[0], other[1]]), torch.stack([final[0], final[1]])])
    assert E.settle_epochs(snaps, (0.5, 1.0, 2.0, 3.0), final, 0.9) == [2.0, 3.0]


def test_choose_probes_is_seeded_and_per_class():
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 2])
    a = E.choose_probes(labels, 3, 2, seed=5)
    assert torch.equal(a, E.choose_probes(labels, 3, 2, seed=5))
    assert labels[a].tolist() == [0, 0, 1, 1, 2, 2]


def test_map_study_separates_correct_and_wrong():
    torch.manual_seed(0)
    n, c = 40, 2
    labels = torch.arange(n) % c
    maps = torch.zeros(n, c, 4, 4)
    maps[labels == 0, 0, 0, 0] = 5.0  # class 0 pattern: top-left
    maps[labels == 1, 1, 3, 3] = 5.0  # class 1 pattern: bottom-right
    maps += 0.01 * torch.rand_like(maps)
    wrong = torch.tensor([0, 1])
    maps[wrong, labels[wrong]] = 0.01 * torch.rand(2, 4, 4)  # no pattern → predicted as the other class
    maps[wrong, 1 - labels[wrong], 1, 1] = 5.0
    logits = maps.mean((2, 3))
    study = E.map_study(maps, logits, labels)
    sim = study["intra_class_similarity"]
    assert sim["correct"]["n"] == 38 and sim["wrong"]["n"] == 2
    assert sim["correct"]["mean"] > 0.9 > sim["wrong"]["mean"]
    assert study["confidence_vs_sharpness"]["peak_to_mean"]["n"] == n


def test_shift_images_moves_with_zero_fill():
    x = torch.arange(1, 10, dtype=torch.float32).view(1, 3, 3)
    assert E.shift_images(x, 0, 1).tolist() == [[[0, 1, 2], [0, 4, 5], [0, 7, 8]]]
    assert E.shift_images(x, -1, 0).tolist() == [[[4, 5, 6], [7, 8, 9], [0, 0, 0]]]
    assert E.shift_images(x, 1, -2).tolist() == [[[0, 0, 0], [3, 0, 0], [6, 0, 0]]]
    u8 = torch.randint(1, 256, (2, 1, 5, 5), dtype=torch.uint8)
    assert E.shift_images(u8, 2, 0).dtype == torch.uint8 and torch.equal(E.shift_images(u8, 0, 0), u8)


class _MapModel(nn.Module):
    """A stand-in encoder-decoder whose C class maps (at input resolution) are the image itself (``follow``)
    or a fixed pattern that ignores where the content is (``stay``)."""

    def __init__(self, kind: str, classes: int = 2, size: int = 12):
        super().__init__()
        self.kind, self.classes = kind, classes
        self.fixed = nn.Parameter(torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(0)))

    def class_maps(self, x: torch.Tensor) -> torch.Tensor:
        src = x.relu() if self.kind == "follow" else self.fixed.expand(len(x), 1, -1, -1) + 0 * x[:, :1]
        return src.repeat(1, self.classes, 1, 1)


def test_translation_control_tells_maps_that_move_from_maps_that_stay():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (6, 1, 12, 12), dtype=torch.uint8)
    y, index = torch.tensor([0, 1, 0, 1, 0, 1]), torch.arange(6)
    follow = E.translation_control(_MapModel("follow"), x, y, index, (0.5,), (0.25,), (2, 4), examples=2)
    stay = E.translation_control(_MapModel("stay"), x, y, index, (0.5,), (0.25,), (2, 4), examples=2)
    torch.testing.assert_close(follow.follow, torch.ones(2, 6))  # the map moved exactly with the input
    assert (follow.stay < 0.9).all() and follow.record()["rows"][0]["follow_wins"] == 1.0
    torch.testing.assert_close(stay.stay, torch.ones(2, 6))  # the map ignored the shift
    assert (stay.follow < 0.9).all() and stay.record()["rows"][1]["follow_wins"] == 0.0
    rec = follow.record()
    assert rec["shifts_px"] == [2, 4] and rec["images"] == rec["informative_images"] == 6
    assert [r["shift_px"] for r in rec["rows"]] == [2, 4]
    flat = E.translation_control(_MapModel("follow"), torch.zeros_like(x), y, index, (0.5,), (0.25,), (2,))
    assert not flat.informative.any() and flat.record()["informative_images"] == 0  # all-zero maps: no position
    assert follow.example_maps.shape == (3, 2, 12, 12)  # unshifted, then moved right by 2 and 4 px
    with pytest.raises(ValueError, match="12 px|12×12"):
        E.translation_control(_MapModel("follow"), x, y, index, (0.5,), (0.25,), (12,))


def _toy_run(tmp_path, encdec: dict) -> list[str]:
    """A 3-class 28 px toy dataset and params; the stage's argv without its outputs."""
    rng = np.random.default_rng(0)
    raw = tmp_path / "raw" / "toy"
    raw.mkdir(parents=True)
    for split, n in (("train", 48), ("test", 24)):
        with open(raw / f"{split}.npz", "wb") as f:
            np.savez(f, images=rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8),
                     labels=np.arange(n, dtype=np.int64) % 3, classes=np.asarray(["a", "b", "c"]))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"encdec": encdec, "hardware": {"progress": "none", "threads": 1}}))
    return ["--dataset", "toy", "--data", str(raw), "--reference", str(REFERENCE), "--params", str(params)]


def _outputs(out) -> list[str]:
    return ["--out", str(out / "e.pt"), "--metrics", str(out / "e.json"), "--snapshots", str(out / "s.npz"),
            "--table", str(out / "t.md"), "--figures", str(out / "figs")]


TOY = {"width_multiplier": 0.125, "snapshot_epochs": [0.5, 1.0, 5.0], "probes_per_class": 1, "examples": 2,
       "train": {"epochs": 1, "batch_size": 16, "val_size": 0, "schedule": "cosine"}}


def test_stage_end_to_end_tiny(tmp_path):
    from cnnvis.io import load_json
    from stages import train_encdec as stage

    out = tmp_path / "out"
    stage.main([*_toy_run(tmp_path, TOY), *_outputs(out), "--resume-dir", str(tmp_path / "resume")])
    model, state = load_checkpoint(out / "e.pt")
    assert isinstance(model, E.EncDec) and state["encdec"]["width_multiplier"] == 0.125
    metrics = load_json(out / "e.json")
    assert metrics["map_side"] == 8 and metrics["snapshots"]["epochs"] == [0.5, 1.0]  # 5.0 is beyond the run
    assert metrics["resnet18"]["test"]["n"] == 24 and len(metrics["settle"]["per_class_epoch"]) == 3
    with np.load(out / "s.npz") as z:
        assert z["own_maps"].shape == (2, 3, 8, 8)
    table = (out / "t.md").read_text()
    assert "| paper 4 | Proposed encoder-decoder | 53.78 | 61.09 |" in table and "| ours | plain ResNet-18" in table
    assert {p.name for p in (out / "figs").iterdir()} >= {"fig3_5_map_evolution.png", "fig6_correct.png",
                                                          "fig7_wrong.png", "study.png", "translation_control.png"}
    assert not list((tmp_path / "resume").glob("*.pt"))  # scratch removed after success
    translation = metrics["translation"]
    assert translation["shifts_px"] == [2, 4] and translation["images"] == 24
    assert {"follow_r", "stay_r", "follow_minus_stay", "follow_wins", "shift_alone_r",
            "prediction_kept"} <= set(translation["rows"][0])


def test_table1_paper_numbers_come_from_the_reference(tmp_path):
    from stages import train_encdec as stage

    ref = yaml.safe_load(REFERENCE.read_text())
    row = next(r for t in ref["tables"] if t["id"] == "p4_table1" for r in t["paper_rows"] if r["key"] == "proposed")
    row["top1"] = 12.34
    (tmp_path / "ref.yaml").write_text(yaml.safe_dump(ref))
    argv = _toy_run(tmp_path, {**TOY, "compare_resnet": False})
    argv[argv.index("--reference") + 1] = str(tmp_path / "ref.yaml")
    stage.main([*argv, *_outputs(tmp_path / "out")])
    assert "| paper 4 | Proposed encoder-decoder | 12.34 | 61.09 |" in (tmp_path / "out" / "t.md").read_text()


def test_reference_without_the_table_is_one_line(tmp_path, capsys):
    from stages import train_encdec as stage

    (tmp_path / "ref.yaml").write_text(yaml.safe_dump({"papers": {}, "tables": []}))
    argv = _toy_run(tmp_path, TOY)
    argv[argv.index("--reference") + 1] = str(tmp_path / "ref.yaml")
    with pytest.raises(SystemExit) as e:
        stage.main([*argv, *_outputs(tmp_path / "out")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("train-encdec: error: ") and "ref.yaml: no table 'p4_table1'" in err[-1]
    assert not (tmp_path / "out").exists()


def test_stage_resumes_a_killed_run_with_its_snapshots(tmp_path, monkeypatch):
    """Killed after the encoder-decoder's epoch 1 (of 2), the stage continues from the resume state, snapshots
    recorded before the kill included, and ends with the outputs of a run that was never interrupted."""
    from cnnvis import training
    from stages import train_encdec as stage

    argv = _toy_run(tmp_path, {**TOY, "snapshot_epochs": [0.5, 1.0, 1.5], "compare_resnet": False,
                               "train": {**TOY["train"], "epochs": 2}})
    resume = tmp_path / "resume"
    real_train = training.train

    class Killed(Exception):
        pass

    def killed_after_epoch_1(*args, on_epoch_end, **kw):
        def save_then_die(state):
            on_epoch_end(state)
            raise Killed

        return real_train(*args, on_epoch_end=save_then_die, **kw)

    monkeypatch.setattr(training, "train", killed_after_epoch_1)
    with pytest.raises(Killed):
        stage.main([*argv, *_outputs(tmp_path / "resumed"), "--resume-dir", str(resume)])
    assert len(list(resume.glob("*.pt"))) == 1
    steps = []

    def counting(*args, on_step, **kw):
        return real_train(*args, on_step=lambda n: steps.append(n) or on_step(n), **kw)

    monkeypatch.setattr(training, "train", counting)
    stage.main([*argv, *_outputs(tmp_path / "resumed"), "--resume-dir", str(resume)])
    assert steps == [4, 5, 6]  # 3 steps per epoch: only epoch 2 ran again
    monkeypatch.setattr(training, "train", real_train)
    stage.main([*argv, *_outputs(tmp_path / "straight"), "--resume-dir", str(tmp_path / "other")])
    with np.load(tmp_path / "resumed" / "s.npz") as a, np.load(tmp_path / "straight" / "s.npz") as b:
        assert a["epochs"].tolist() == [0.5, 1.0, 1.5, 2.0]
        assert all(np.array_equal(a[k], b[k]) for k in b.files)
    assert (tmp_path / "resumed" / "e.pt").read_bytes() == (tmp_path / "straight" / "e.pt").read_bytes()


def test_every_attribution_method_runs_and_leaves_the_model_unchanged():
    attribution = pytest.importorskip("cnnvis.attribution")
    model = tiny(num_classes=4).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 1, 28, 28)
    for name, method in attribution.METHODS.items():
        a = method(model).attribute(x, target=torch.tensor([0, 3]))
        assert a.shape[0] == 2 and a.shape[-2:] == (28, 28) and torch.isfinite(a).all(), name
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model._forward_hooks and not model.group_up._forward_pre_hooks
