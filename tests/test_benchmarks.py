"""The benchmarks still run (tiny sizes, no timing asserted): each checks its contenders agree before timing."""

from __future__ import annotations

import pytest


def test_attribution_benchmark_runs_and_checks_agreement(capsys, tmp_path):
    from benchmarks import attribution

    attribution.main(["--model", str(tmp_path / "none.pt"), "--images", "6", "--probe", "2", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "random p1_cnn" in out
    assert out.count("speed-up vs backward loop") == 2 and "speed-up vs pytorch-grad-cam" in out
    assert out.count("vs with F.conv2d + clamp") == 1  # conv2 only: conv1 has no first block to go through


def test_paired_ratio_is_the_median_of_per_round_ratios():
    from benchmarks.attribution import paired

    times = {"ours": [1.0, 2.0, 1.0], "peer": [3.0, 2.0, 10.0]}
    assert paired(times, "peer") == (3.0, 1.0, 10.0)
    with pytest.raises(ValueError):
        paired({"ours": [1.0], "peer": [1.0, 2.0]}, "peer")


def test_phash_benchmark_runs_and_checks_bit_exactness(capsys):
    from benchmarks import phash

    phash.main(["--maps", "300", "--reference-maps", "40", "--fingerprints", "64", "--reference-pairs", "100",
                "--repeat", "1"])
    out = capsys.readouterr().out
    assert "bit-exact with imagehash.phash: the 40 maps timed below: True; stripes and a constant image: True" in out
    assert "fingerprints, 28x28 float maps" in out and "pairwise Hamming" in out
