"""The named tests behind the tables' comparisons."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest, ttest_ind

from cnnvis import stats as S


def test_mcnemar_counts_only_the_images_one_model_gets_right():
    a = np.array([1, 1, 1, 1, 0, 0, 1, 0] * 25, dtype=bool)
    b = np.array([1, 1, 0, 0, 0, 1, 1, 0] * 25, dtype=bool)
    c = S.mcnemar(a, b, ("adjusted", "control"))
    assert c.test == "McNemar exact" and c.n == 200 and c.difference == pytest.approx(100 * (50 - 25) / 200)
    assert c.p_value == pytest.approx(binomtest(50, 75, 0.5).pvalue)
    assert c.as_dict()["verdict"].startswith("adjusted better than control by 12.50 points (McNemar exact, n=200")


def test_mcnemar_equal_models_and_small_differences_are_not_distinguishable():
    same = np.ones(100, dtype=bool)
    assert S.mcnemar(same, same).p_value == 1.0
    a = np.r_[np.ones(90), np.zeros(10)].astype(bool)
    b = np.r_[np.ones(89), np.zeros(11)].astype(bool)  # one image apart
    v = S.verdict(S.mcnemar(a, b, ("adjusted", "control")))
    assert v.startswith("adjusted and control not distinguishable at α=0.05") and "1 images right only by adjusted" in v
    with pytest.raises(ValueError):
        S.mcnemar(a, b[:50])


def test_welch_needs_two_seeds_and_equals_scipy():
    assert S.welch([92.3], [92.1]) is None
    a, b = [92.3, 92.6, 92.1], [91.0, 91.2, 90.9]
    c = S.welch(a, b, ("adjusted", "control"))
    assert c.p_value == pytest.approx(ttest_ind(a, b, equal_var=False).pvalue) and c.n == 3
    assert S.verdict(c).startswith("adjusted better than control by 1.30 points (Welch t, n=3")


def test_paired_bootstrap_sign_ci_and_p():
    rng = np.random.default_rng(0)
    better = rng.normal(-5.0, 10.0, 400)  # A's per-image error minus B's: A makes fewer errors
    c = S.paired_bootstrap(better, ("importance", "random"), seed=1)
    assert c.test == "paired bootstrap" and c.n == 400 and c.difference == pytest.approx(-better.mean())
    assert c.p_value < 0.01 and S.verdict(c).startswith("importance better than random by")
    noise = rng.normal(0.0, 10.0, 400)
    assert S.paired_bootstrap(noise - noise.mean(), seed=1).p_value > 0.5  # mean exactly 0
    assert S.paired_bootstrap(np.zeros(10)).p_value == 1.0
    with pytest.raises(ValueError):
        S.paired_bootstrap(np.zeros(1))
