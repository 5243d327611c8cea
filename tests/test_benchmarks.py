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


def test_train_throughput_benchmark_runs_and_counts_flops(capsys, tmp_path):
    import json

    from benchmarks import train_throughput

    train_throughput.main(["--images", "130", "--repeats", "1", "--matmul-size", "64", "--json", str(tmp_path / "t.json")])
    out = capsys.readouterr().out
    assert "% matmul" in out and "% oneDNN" in out and out.count("images/s (range") == 5
    rows = json.loads((tmp_path / "t.json").read_text())["models"]
    assert [(r["widths"], r["channels_last"]) for r in rows] == [
        (w, cl) for w in ([32, 64], [32, 96], [46, 91], [48, 96]) for cl in (False, True)]
    # 32/64 by hand: multiply-adds x 2 of conv1, conv2, fc1, fc; backward twice the forward (input and weight
    # gradients) except conv1, whose input needs no gradient
    conv1, conv2, fc1, fc = (2 * 128 * m for m in (28 * 28 * 32 * 25, 14 * 14 * 64 * 32 * 25, 64 * 7 * 7 * 128, 128 * 10))
    assert rows[0]["gflop_per_step"] * 1e9 == pytest.approx(conv1 * 2 + (conv2 + fc1 + fc) * 3, rel=1e-12)


def test_budget_reads_a_runs_records_and_prices_its_trainings(capsys, tmp_path):
    """benchmarks.budget on a two-seed tree in the pipeline's layout: stage time per record summed over seeds,
    and GFLOP/s of every p1_cnn training from FlopCounterMode's count."""
    import json

    from benchmarks import budget
    from benchmarks.train_throughput import BATCH, step_flops

    env = {"cpu": "test CPU", "cpu_isa": "AVX2"}
    for seed, seconds in ((0, 10.0), (1, 30.0)):
        runs, metrics = (tmp_path / kind / "ds" / "seeds" / str(seed) for kind in ("runs", "metrics"))
        runs.mkdir(parents=True)
        metrics.mkdir(parents=True)
        (runs / "baseline.json").write_text(json.dumps({"train_seconds": seconds, "stage_seconds": seconds + 1,
                                                        "environment": env}))
        (runs / "adjusted.json").write_text(json.dumps({"recipe": {"epochs": 2}, "stage_seconds": 3 * seconds,
                                                        "runs": {"after": [{"train_seconds": seconds}],
                                                                 "control": [{"train_seconds": seconds}]},
                                                        "environment": env}))
        (metrics / "baseline.json").write_text(json.dumps({"train_images": 640, "epochs": 1}))
        (metrics / "adjusted.json").write_text(json.dumps({
            "widths": {"before": [8, 16]}, "model": {"widths": [8, 24]}, "control_model": {"widths": [10, 20]}}))
    (tmp_path / "runs" / "ds" / "visualize.json").write_text(json.dumps({"stage_seconds": 5.0, "environment": env}))
    (tmp_path / "metrics" / "ds" / "seeds" / "2").mkdir()  # a seed an interrupted run left without its trainings
    budget.main(["--reports", str(tmp_path), "--dataset", "ds", "--matmul-size", "64", "--budget-min", "1"])
    out = capsys.readouterr().out
    assert "ds: 5 stage runs, 2 seeds, on test CPU (AVX2)" in out
    assert "total 167 s = 2.8 min of stage time; budget 1 min = 2.78x of it" in out  # 11 + 31 + 30 + 90 + 5
    gflops = step_flops((8, 16)) / BATCH * 640 / 10.0 / 1e9
    assert f"{gflops:.2f}" in out  # the seed-0 baseline: FLOPs per image x images / seconds
