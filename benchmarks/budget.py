"""Where a finished `dvc repro` spent its time, and how fast its trainings ran against this machine's peak.

    python -m benchmarks.budget [--reports reports] [--dataset fashion_mnist] [--budget-min 30]

Reads the run records of the run (``reports/runs/<dataset>/…``, the per-seed stages under ``seeds/<seed>/``)
with pandas: wall seconds per stage, summed over the seeds, and the total (the stages' own time; DVC's
hashing and the download are not in it). For every training of paper 1's CNN (the baseline, the adjusted
model and its uniform-width control, per seed) the FLOPs per image of a training step are counted exactly
(torch.utils.flop_counter.FlopCounterMode: convolutions and linear layers, forward and backward, as in
benchmarks.train_throughput), so achieved GFLOP/s = FLOPs per image × images trained / training seconds. The
peers are two fp32 GEMM peaks measured in this run, on this machine, with the same threads: torch.matmul (the
BLAS) and the same GEMM as a 1x1 convolution (oneDNN, the library the model's convolutions run on). A run
from another machine compares with this machine's peak only if the CPUs match (the records name the CPU).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import torch

from benchmarks.train_throughput import BATCH, gemm_gflops, step_flops


def stage_rows(runs: Path) -> pd.DataFrame:
    rows = []
    for f in sorted(runs.rglob("*.json")):
        doc = json.loads(f.read_text())
        rel = f.relative_to(runs).parts
        seed = int(rel[-2]) if len(rel) >= 3 and rel[-3] == "seeds" else None
        rows.append({"record": f.stem, "seed": seed, "seconds": doc.get("stage_seconds"),
                     "cpu": (doc.get("environment") or {}).get("cpu"),
                     "isa": (doc.get("environment") or {}).get("cpu_isa")})
    return pd.DataFrame(rows)


def trainings(metrics: Path, runs: Path) -> pd.DataFrame:
    """One row per training of p1_cnn: model, seed, widths, images trained, training seconds."""
    rows = []
    for d in sorted((metrics / "seeds").iterdir()):
        seed, rd = int(d.name), runs / "seeds" / d.name
        if not all((where / f).is_file() for where in (d, rd) for f in ("baseline.json", "adjusted.json")):
            continue  # a seed whose trainings did not both finish (a partial or interrupted run)
        base, base_run = json.loads((d / "baseline.json").read_text()), json.loads((rd / "baseline.json").read_text())
        adj, adj_run = json.loads((d / "adjusted.json").read_text()), json.loads((rd / "adjusted.json").read_text())
        rows.append({"model": "baseline", "seed": seed, "widths": tuple(adj["widths"]["before"]),
                     "images": base["train_images"] * base["epochs"], "seconds": base_run["train_seconds"]})
        epochs = adj_run["recipe"]["epochs"]
        for model, cfg, run in (("adjusted", adj["model"], "after"), ("control", adj["control_model"], "control")):
            rows.append({"model": model, "seed": seed, "widths": tuple(cfg["widths"]),
                         "images": base["train_images"] * epochs, "seconds": adj_run["runs"][run][0]["train_seconds"]})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reports", type=Path, default=Path("reports"))
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--budget-min", type=float, default=30.0)
    p.add_argument("--matmul-size", type=int, default=2048)
    args = p.parse_args(argv)
    runs, metrics = args.reports / "runs" / args.dataset, args.reports / "metrics" / args.dataset

    stages = stage_rows(runs)
    per_stage = stages.groupby("record", sort=False).agg(runs=("seconds", "size"), seconds=("seconds", "sum"))
    per_stage = per_stage.sort_values("seconds", ascending=False)
    total = float(per_stage.seconds.sum())
    per_stage["share"] = (per_stage.seconds / total).map("{:.0%}".format)
    seeds = sorted(s for s in stages.seed.dropna().unique())
    print(f"{args.dataset}: {len(stages)} stage runs, {len(seeds)} seeds, on {', '.join(sorted(set(stages.cpu.dropna())))} "
          f"({', '.join(sorted(set(stages.isa.dropna())))})")
    print(per_stage.to_string(float_format="{:.1f}".format))
    print(f"total {total:.0f} s = {total / 60:.1f} min of stage time; budget {args.budget_min:.0f} min "
          f"= {total / 60 / args.budget_min:.2f}x of it")

    t = trainings(metrics, runs)
    flops = {w: step_flops(w) / BATCH for w in sorted(set(t.widths))}
    t["gflop_per_image"] = t.widths.map(flops) / 1e9
    t["gflops"] = t.gflop_per_image * t.images / t.seconds
    matmul, onednn = gemm_gflops(args.matmul_size)
    print(f"\np1_cnn trainings ({torch.get_num_threads()} threads); fp32 GEMM {args.matmul_size}^3 measured now: "
          f"torch.matmul {matmul:.0f} GFLOP/s, as a 1x1 conv on oneDNN {onednn:.0f} GFLOP/s")
    t["% oneDNN peak"] = (100 * t.gflops / onednn).round(0)
    t["widths"] = t.widths.map(lambda w: "/".join(map(str, w)))
    print(t.to_string(index=False, float_format="{:.2f}".format))
    train_s = float(t.seconds.sum())
    print(f"these trainings: {train_s:.0f} s = {train_s / total:.0%} of the stage time, "
          f"{(t.gflop_per_image * t.images).sum() / 1e3:.1f} TFLOP at {(t.gflop_per_image * t.images).sum() / train_s:.0f} "
          "GFLOP/s overall")


if __name__ == "__main__":
    main()
