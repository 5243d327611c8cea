"""Faithfulness: the sign rule, ROAD's imputation, the curves, the paired test against random maps, the study."""

from __future__ import annotations

import dataclasses
import inspect
import json

import numpy as np
import pytest
import torch
from torch import nn

from cnnvis import ConfigError
from cnnvis.attribution import VisualizeConfig
from cnnvis.attribution import faithfulness as F
from cnnvis.config import parse


def _pixels_model(weights: dict[tuple[int, int], float], size: int = 4) -> nn.Module:
    """Logits (Σ_p w_p·x[0, 0, p], 0) for pixels p of a size×size one-channel image: only those pixels matter."""
    lin = nn.Linear(size * size, 2, bias=False)
    lin.weight.data.zero_()
    for (y, x), w in weights.items():
        lin.weight.data[0, y * size + x] = w
    return nn.Sequential(nn.Flatten(), lin).eval()


# --------------------------------------------------------------------------- the sign rule


@pytest.mark.parametrize(("sign", "captum_sign"), [("positive", "positive"), ("absolute", "absolute_value"),
                                                   ("signed", "all")])
@pytest.mark.parametrize("channels", [1, 3])
def test_pixel_importance_equals_captum_visualization(sign, captum_sign, channels):
    """Captum's ``visualize_image_attr`` sums channels, then applies the sign, then scales by max |·| (outlier_perc → 0)."""
    from captum.attr import visualization

    a = torch.randn(2, channels, 6, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours = F.pixel_importance(a, sign)
    assert ours.shape == (2, 6, 5)
    for i in range(2):
        fig, ax = visualization.visualize_image_attr(a[i].permute(1, 2, 0).numpy(), method="heat_map", sign=captum_sign,
                                       outlier_perc=1e-6, use_pyplot=False)
        ref = np.asarray(ax.images[0].get_array())
        fig.clf()
        np.testing.assert_allclose(ours[i].numpy() / ours[i].abs().max().item(), ref, atol=1e-12)


def test_pixel_importance_one_rule_for_one_and_many_channels():
    a = torch.tensor([[[[1.0, -2.0]], [[-3.0, 0.5]]]])  # [1, 2, 1, 2]: channel sums -2, -1.5
    one = a.sum(1, keepdim=True)  # the same pixels as one channel
    for sign, expect in (("positive", [0.0, 0.0]), ("absolute", [2.0, 1.5]), ("signed", [-2.0, -1.5])):
        torch.testing.assert_close(F.pixel_importance(a, sign), torch.tensor([[expect]]))
        torch.testing.assert_close(F.pixel_importance(one, sign), F.pixel_importance(a, sign))
    with pytest.raises(ValueError, match="sign"):
        F.pixel_importance(a, "negative")


def test_pixel_ranks_ties_in_index_order_or_at_random():
    imp = torch.tensor([[3.0, 0.0, 0.0, 5.0, 0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(F.pixel_ranks(imp), torch.tensor([[1, 2, 3, 0, 4, 5, 6, 7]]))
    seen = set()
    for seed in range(20):
        r = F.pixel_ranks(imp, torch.Generator().manual_seed(seed))
        assert r[0, 3] == 0 and r[0, 0] == 1  # the untied pixels keep their places
        assert sorted(r[0].tolist()) == list(range(8))
        seen.add(tuple(r[0].tolist()))
    assert len(seen) > 10  # the 6 tied pixels come in many orders
    again = F.pixel_ranks(imp, torch.Generator().manual_seed(3))
    torch.testing.assert_close(again, F.pixel_ranks(imp, torch.Generator().manual_seed(3)))


def test_sign_decides_where_evidence_against_the_class_goes():
    """Logit 10·x0 − 10·x1: a map +1 at x0, −1 at x1. |map| deletes x1 (evidence against) early: the probability
    rises, and the deletion area is worst; signed deletes x1 last, better than positive (x1 ties at 0)."""
    model = _pixels_model({(0, 0): 10.0, (0, 1): -10.0})
    x = torch.ones(8, 1, 4, 4)
    attr = torch.zeros(8, 1, 4, 4)
    attr[:, 0, 0, 0], attr[:, 0, 0, 1] = 1.0, -1.0
    y = torch.zeros(8, dtype=torch.long)
    area = {}
    for sign in F.SIGNS:
        rank = F.pixel_ranks(F.pixel_importance(attr, sign), torch.Generator().manual_seed(0))
        area[sign] = F.auc(F.perturbation_curve(model, x, rank, y, metric="deletion", baseline="mean", steps=16)).mean()
    assert area["signed"] < area["positive"] < area["absolute"]


# --------------------------------------------------------------------------- ROAD's imputation


def test_noisy_linear_imputation_equals_pytorch_grad_cam():
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 9, 7, generator=g, dtype=torch.float64)
    known = torch.rand(4, 9, 7, generator=g) < torch.tensor([0.8, 0.3, 0.05, 0.5])[:, None, None]
    known[2] = False
    known[2, 4, 3] = True  # one known pixel: everything is imputed from it
    known[3, :, :3] = True  # a block: the border of the unknown region matters
    ours = F.noisy_linear_imputation(x, known, noise=0.0)
    ref = NoisyLinearImputer(noise=0.0)
    for i in range(4):
        expect = ref(x[i].float(), known[i].float())
        torch.testing.assert_close(ours[i].float(), expect, atol=1e-5, rtol=1e-5)
    assert torch.equal(ours.permute(0, 2, 3, 1)[known], x.permute(0, 2, 3, 1)[known])  # known pixels untouched
    torch.testing.assert_close(ours[2], x[2, :, 4, 3][:, None, None].expand(3, 9, 7))  # a constant from one pixel


def test_noisy_linear_imputation_noise_and_empty_images():
    x = torch.randn(2, 1, 5, 5, generator=torch.Generator().manual_seed(0))
    known = torch.ones(2, 5, 5, dtype=torch.bool)
    known[0, 1:4, 1:4] = False
    known[1] = False  # nothing to impute from
    quiet = F.noisy_linear_imputation(x, known, noise=0.0)
    assert (quiet[1] == 0).all()
    noisy = F.noisy_linear_imputation(x, known, noise=0.5, generator=torch.Generator().manual_seed(1))
    again = F.noisy_linear_imputation(x, known, noise=0.5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(noisy, again)
    diff = (noisy - quiet)[0, 0][~known[0]]
    assert diff.abs().min() > 0 and 0.1 < diff.std() < 1.5  # σ = 0.5 on the 9 imputed pixels only
    assert torch.equal(noisy[0, 0][known[0]], x[0, 0][known[0]])
    with pytest.raises(ValueError, match="generator"):
        F.noisy_linear_imputation(x, known, noise=0.1)
    with pytest.raises(ValueError, match="known"):
        F.noisy_linear_imputation(x, known[:, :4], noise=0.0)


# --------------------------------------------------------------------------- curves


@pytest.mark.parametrize("baseline", ["black", "mean", "blur", "road"])
def test_insertion_is_deletion_of_the_reversed_order(baseline):
    """Insertion after s of S steps keeps the top k pixels: deletion of the reversed order after S − s steps."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)).eval()
    x = torch.randn(3, 2, 8, 8)
    y = torch.tensor([0, 2, 1])
    rank = F.pixel_ranks(torch.rand(3, 8, 8))
    kw = dict(baseline=baseline, steps=4, black=torch.tensor([-1.0, -2.0]), road_noise=0.0)
    ins = F.perturbation_curve(model, x, rank, y, metric="insertion", **kw)
    dele = F.perturbation_curve(model, x, 63 - rank, y, metric="deletion", **kw)
    assert ins.shape == (3, 5)
    torch.testing.assert_close(ins, dele.flip(1))
    torch.testing.assert_close(F.perturbation_curve(model, x, rank, y, metric="insertion", batch_size=2, **kw), ins)
    if baseline != "road":  # road: step 0 of insertion has no known pixel (the empty image)
        base = F.baseline_images(x, baseline, black=torch.tensor([-1.0, -2.0]))
        torch.testing.assert_close(ins[:, 0], torch.softmax(model(base), 1).gather(1, y[:, None])[:, 0])
    torch.testing.assert_close(ins[:, -1], torch.softmax(model(x), 1).gather(1, y[:, None])[:, 0])


def test_road_removes_a_region_by_its_neighbours():
    """A ramp with a hole: ROAD fills the hole with the ramp (a linear image is its own linear imputation)."""
    ramp = torch.linspace(-1, 1, 8).expand(8, 8).clone()[None, None]
    known = torch.ones(1, 8, 8, dtype=torch.bool)
    known[0, 2:6, 2:6] = False
    filled = F.noisy_linear_imputation(ramp, known, noise=0.0)
    torch.testing.assert_close(filled, ramp, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- the paired test


def test_paired_test_and_verdicts():
    g = torch.Generator().manual_seed(0)
    control = torch.rand(40, generator=g) * 0.2 + 0.5
    noise = torch.randn(40, generator=g) * 0.01
    low = F.paired_test(control - 0.1 + noise, control, better="lower", seed=1)
    assert low.shift == "lower" and low.p_value < 1e-6 and low.n == 40
    assert low.ci_low < low.mean_difference < low.ci_high < 0
    assert low.verdict == F.verdict(low) and low.verdict.startswith("more faithful than random (p=")
    high = F.paired_test(control + 0.1 + noise, control, better="lower", seed=1)
    assert high.shift == "higher" and high.verdict.startswith("less faithful than random")
    assert F.paired_test(control + 0.1 + noise, control, better="higher").verdict.startswith("more faithful")
    null = F.paired_test(control + noise, control, better="lower", seed=1)
    assert null.p_value > 0.05 and null.ci_low < 0 < null.ci_high
    assert null.verdict.startswith("not distinguishable from random at α=0.05")
    same = F.paired_test(control, control, better="lower")
    assert same.p_value == 1.0 and same.shift == "none" and same.ci_low == same.ci_high == 0.0
    d = json.loads(json.dumps(low.as_dict()))
    assert d["verdict"] == low.verdict and d["p_value"] == low.p_value
    with pytest.raises(dataclasses.FrozenInstanceError):
        low.p_value = 0.5  # type: ignore[misc]


def test_paired_test_is_scipy_wilcoxon_and_bootstrap():
    from scipy.stats import bootstrap, wilcoxon

    g = torch.Generator().manual_seed(2)
    a, b = torch.rand(30, generator=g), torch.rand(30, generator=g)
    t = F.paired_test(a, b, better="lower", resamples=2000, seed=7)
    d = (a.double() - b.double()).numpy()
    assert t.p_value == wilcoxon(d).pvalue
    ci = bootstrap((d,), np.mean, n_resamples=2000, method="percentile", rng=np.random.default_rng(7)).confidence_interval
    assert (t.ci_low, t.ci_high) == (ci.low, ci.high)
    assert F.paired_test(a, b, better="lower", resamples=2000, seed=7) == t  # seeded


# --------------------------------------------------------------------------- the study


@pytest.fixture(scope="module")
def one_pixel_study():
    """Only pixel (1, 2) matters; "good" ranks it first, "bad" last, "flat" ties everywhere."""
    model = _pixels_model({(1, 2): 4.0})
    g = torch.Generator().manual_seed(0)
    x = torch.rand(12, 1, 4, 4, generator=g) * 0.5 + 0.5
    x[:, 0, 1, 2] = 3.0  # brighter than its neighbours: blur and ROAD's imputation remove it too
    y = torch.zeros(12, dtype=torch.long)
    good = torch.zeros(12, 1, 4, 4)
    good[:, 0, 1, 2] = 1.0
    bad = -good  # last with "signed", tied with every other pixel at 0 with "positive"
    maps = {"good": good, "bad": bad, "flat": torch.zeros(12, 1, 4, 4)}
    return model, x, y, maps


def _study(one_pixel_study, **kw):
    model, x, y, maps = one_pixel_study
    kw = {"black": torch.tensor([0.0]), "steps": 4, "random_maps": 3, "bootstrap": 500, **kw}
    return F.faithfulness_study(model, x, y, kw.pop("maps", maps), **kw)


def test_study_tells_a_faithful_map_from_random_and_from_an_unfaithful_one(one_pixel_study):
    study = _study(one_pixel_study, sign="signed")
    assert study.methods == ("good", "bad", "flat", "random")
    assert set(study.curves) == {(m, metric, b) for m in study.methods for metric in F.METRICS
                                 for b in ("black", "blur", "road")}
    assert set(study.tests) == {k for k in study.curves if k[0] != "random"}
    for metric in F.METRICS:
        for baseline in ("black", "blur", "road"):
            assert study.verdict("good", metric, baseline).startswith("more faithful than random"), (metric, baseline)
            assert study.verdict("bad", metric, baseline).startswith("less faithful than random"), (metric, baseline)
            s = study.summaries[("good", metric, baseline)]
            assert s.n == 12 and s.ci_low <= s.mean <= s.ci_high
            assert study.curves[("random", metric, baseline)].shape == (12, 5)
    # a map without information (every pixel tied, random order) is a random map
    assert study.verdict("flat", "deletion", "black").startswith("not distinguishable")


def test_study_positive_ties_evidence_against_with_the_rest(one_pixel_study):
    """With "positive" the bad map's −1 ties with nothing at 0, so it is no longer ranked last."""
    signed, positive = _study(one_pixel_study, sign="signed"), _study(one_pixel_study, sign="positive")
    key = ("bad", "deletion", "black")
    assert positive.summaries[key].mean < signed.summaries[key].mean
    assert positive.summaries[("good", "deletion", "black")] == signed.summaries[("good", "deletion", "black")]


def test_study_is_seeded_json_and_independent_of_the_other_methods(one_pixel_study):
    _, _, _, maps = one_pixel_study
    study = _study(one_pixel_study)
    d = study.as_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["sign"] == F.SIGN == "positive" and d["sign_rule"] == F.SIGN_RULES["positive"]
    assert d["n"] == 12 and d["baselines"] == ["black", "blur", "road"]
    entry = d["methods"]["good"]["deletion"]["road"]
    assert set(entry) == {"auc", "mean_curve", "vs_random"} and len(entry["mean_curve"]) == 5
    assert "vs_random" not in d["methods"]["random"]["insertion"]["blur"]
    assert _study(one_pixel_study).as_dict() == d
    alone = _study(one_pixel_study, maps={"bad": maps["bad"]})
    for key, test in alone.tests.items():
        assert study.tests[key] == test  # the randomness of one method does not depend on the others'
    assert _study(one_pixel_study, seed=1).as_dict() != d
    fig = study.figure_curves("road", "blur")
    assert set(fig) == set(study.methods) and fig["good"]["deletion"].shape == (12, 5)
    assert fig["good"]["insertion_auc"] == study.summaries[("good", "insertion", "blur")].mean
    with pytest.raises(dataclasses.FrozenInstanceError):
        study.sign = "signed"  # type: ignore[misc]


def test_study_rejects_bad_input(one_pixel_study):
    model, x, y, maps = one_pixel_study
    with pytest.raises(ValueError, match="control"):
        _study(one_pixel_study, maps={"random": maps["good"]})
    with pytest.raises(ValueError, match="baselines"):
        _study(one_pixel_study, baselines=("black", "black"))
    with pytest.raises(ValueError, match="maps"):
        _study(one_pixel_study, maps={"good": maps["good"][:, :, :3]})
    with pytest.raises(ValueError, match="2 images"):
        F.faithfulness_study(model, x[:1], y[:1], {"good": maps["good"][:1]}, black=None, baselines=("blur",))
    with pytest.raises(ValueError, match="black"):
        _study(one_pixel_study, black=None)


def test_study_defaults_are_the_config_defaults():
    cfg = VisualizeConfig()
    params = inspect.signature(F.faithfulness_study).parameters
    options = F.study_options(cfg)
    assert set(options) == set(params) - {"model", "images", "targets", "maps", "black", "confidence", "batch_size"}
    for name, value in options.items():
        assert params[name].default == value, name
    fields = {f.name: f for f in dataclasses.fields(VisualizeConfig)}
    assert fields["faithfulness_sign"].metadata["choices"] == F.SIGNS
    assert fields["faithfulness_baselines"].metadata["choices"] == F.BASELINES
    assert fields["deletion_baseline"].metadata["choices"] == F.BASELINES
    with pytest.raises(ConfigError, match="faithfulness_baselines"):
        parse(VisualizeConfig, {"deletion_baseline": "mean"}, "visualize")
    with pytest.raises(ConfigError, match="twice"):
        parse(VisualizeConfig, {"faithfulness_baselines": ["black", "blur", "black"]}, "visualize")
    with pytest.raises(ConfigError, match="faithfulness_sign"):
        parse(VisualizeConfig, {"faithfulness_sign": "negative"}, "visualize")
