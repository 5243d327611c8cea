"""Training throughput of the project's trainer, against its peers and as GFLOP/s of the GEMM peak, in one run.

    python -m benchmarks.train_throughput [--images 12000] [--epochs 1] [--repeats 3] [--profile-steps 10] [--json PATH]

Peers of the trainer, with the same model (p1_cnn 32/64 5x5), batch size, optimizer, data and threads:
- minimal: a hand-written loop over pre-normalized in-memory tensors (the floor of overhead);
- dataloader: torch DataLoader over a TensorDataset (the common default);
- project settings: the trainer as the pipeline runs it (flip augmentation, a validation pass after every
  epoch on a held-out 1/11 of the images as 5000 of 60000, a tqdm bar), timed around the whole call.

Compute: the FLOPs of one training step (forward + backward, batch 128) are counted exactly with
torch.utils.flop_counter.FlopCounterMode for the baseline 32/64, the adjusted 32/96, the uniform control 46/91
and 48/96 (the control with widths rounded to multiples of 16, a peer to see what odd widths cost; reported
only). FlopCounterMode counts the matmul-like ops (convolutions, linear layers and their gradients), not
ReLU, max-pool, loss or optimizer. Achieved GFLOP/s = FLOPs per image x images/s of the trainer, as a
fraction of two fp32 n x n x n GEMM peaks (median of repeats, the same threads, measured right before each
model's runs in every round): torch.matmul, which goes to the BLAS (MKL, which on AMD CPUs may reach only
part of the machine's peak), and the same GEMM as a 1x1 convolution, which runs on oneDNN like the model's
convolutions. Each model is also trained with HardwareConfig(channels_last=True), the NHWC layout oneDNN
prefers, and reported as the ratio channels_last / default.

Each contender is timed over whole epochs after an untimed warm-up, repeated and interleaved (rounds);
ratios and fractions of peak are paired within a round, so drifts in machine load cancel, and their
medians are reported. --profile-steps N also prints the ops taking the time of N baseline steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from cnnvis.config import HardwareConfig, ModelConfig, TrainConfig
from cnnvis.data import RawDataset, TensorData, make_synthetic, normalize, prepare
from cnnvis.models import build_model
from cnnvis.training import make_optimizer, train

BATCH = 128
MODELS = {"32/64": (32, 64), "32/96": (32, 96), "46/91": (46, 91), "48/96": (48, 96)}
ROLES = {"32/64": "baseline", "32/96": "adjusted", "46/91": "uniform control", "48/96": "control rounded to x16"}


def model_and_opt(cfg: TrainConfig, widths: tuple[int, ...] = (32, 64)):
    torch.manual_seed(0)
    model = build_model(ModelConfig(widths=widths, kernel_sizes=(5, 5)), in_channels=1, num_classes=10, image_size=28)
    return model, make_optimizer(model, cfg)


# --------------------------------------------------------------------------- compute


def gemm_gflops(n: int, repeats: int = 5) -> tuple[float, float]:
    """fp32 n x n x n GEMM with the current threads, median GFLOP/s (2 n^3 per product): (torch.matmul, the same
    GEMM as a 1x1 convolution, which runs on oneDNN like the model's convolutions rather than on the BLAS)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    x, w = b.view(1, n, n, 1), a.view(n, n, 1, 1)  # conv2d(x, w)[0, :, :, 0] == a @ b
    out = []
    for fn in (lambda: torch.matmul(a, b), lambda: F.conv2d(x, w)):
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out.append(2 * n**3 / statistics.median(times) / 1e9)
    return out[0], out[1]


def step_flops(widths: tuple[int, ...], batch: int = BATCH) -> int:
    """FLOPs of one training step (forward, cross-entropy, backward) on a batch of 28x28x1 images.

    Checks on the way that the channels_last layout computes the same loss and gradients as the default."""
    x, y = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(0)), torch.arange(batch) % 10
    counts, grads = [], []
    for channels_last in (False, True):
        model, _ = model_and_opt(TrainConfig(), widths)
        xb = x
        if channels_last:
            model.to(memory_format=torch.channels_last)
            xb = x.contiguous(memory_format=torch.channels_last)
        with FlopCounterMode(display=False) as counter:
            F.cross_entropy(model(xb), y).backward()
        counts.append(counter.get_total_flops())
        grads.append([p.grad for p in model.parameters()])
    if counts[0] != counts[1] or not all(torch.allclose(a, b, rtol=1e-3, atol=1e-5) for a, b in zip(*grads, strict=True)):
        raise AssertionError(f"{widths}: channels_last differs from the default layout (FLOPs {counts})")
    return counts[0]


# --------------------------------------------------------------------------- contenders


def run_trainer(data: TensorData, cfg: TrainConfig, hw: HardwareConfig, widths: tuple[int, ...] = (32, 64)) -> float:
    model, _ = model_and_opt(cfg, widths)
    result = train(model, data, cfg, hw)
    return result.images_per_s


def run_project(data: TensorData, cfg: TrainConfig, hw: HardwareConfig) -> tuple[float, float]:
    """The trainer as the pipeline runs it: (images/s of the steps as it reports them, of the whole call)."""
    from tqdm.auto import tqdm

    model, _ = model_and_opt(cfg)
    bar = io.StringIO()
    t0 = time.perf_counter()
    result = train(model, data, cfg, hw, progress=lambda it, **kw: tqdm(it, file=bar, dynamic_ncols=True, **kw))
    return result.images_per_s, result.images_seen / (time.perf_counter() - t0)


def run_minimal(data: TensorData, cfg: TrainConfig) -> float:
    model, opt = model_and_opt(cfg)
    x = normalize(data.train_x, data.mean, data.std)
    y = data.train_y
    model.train()
    t0 = time.perf_counter()
    for _ in range(cfg.epochs):
        perm = torch.randperm(len(y))
        for i in range(0, len(y), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return cfg.epochs * len(y) / (time.perf_counter() - t0)


def run_dataloader(data: TensorData, cfg: TrainConfig) -> float:
    model, opt = model_and_opt(cfg)
    ds = torch.utils.data.TensorDataset(normalize(data.train_x, data.mean, data.std), data.train_y)
    loader = torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size, shuffle=True)
    model.train()
    t0 = time.perf_counter()
    for _ in range(cfg.epochs):
        for xb, yb in loader:
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return cfg.epochs * len(data.train_y) / (time.perf_counter() - t0)


def profile_steps(steps: int, channels_last: bool, top: int = 6) -> list[tuple[str, float]]:
    """The ops with the most self CPU time over ``steps`` training steps of the baseline: (name, share)."""
    from torch.profiler import ProfilerActivity, profile

    model, opt = model_and_opt(TrainConfig())
    x, y = torch.randn(BATCH, 1, 28, 28), torch.arange(BATCH) % 10
    if channels_last:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(2):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = [e for e in prof.key_averages() if e.key.startswith("aten::") or "Optimizer" in e.key]
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    events.sort(key=lambda e: -e.self_cpu_time_total)
    return [(e.key, e.self_cpu_time_total / total) for e in events[:top]]


# --------------------------------------------------------------------------- main


def paired(values: list[float], ref: list[float]) -> tuple[float, float, float]:
    """(median, min, max) of the per-round ratios values / ref."""
    ratios = [a / b for a, b in zip(values, ref, strict=True)]
    return statistics.median(ratios), min(ratios), max(ratios)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=12000)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--matmul-size", type=int, default=2048, help="n of the n x n x n fp32 GEMM peaks")
    p.add_argument("--profile-steps", type=int, default=0, help="also profile N baseline steps per layout")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    n_val = args.images // 11  # 5000 held out of 55000 + 5000, as the pipeline does
    train_split, test_split, classes = make_synthetic(28, args.images + n_val, 100, seed=0)
    with_val = prepare(RawDataset("synthetic", train_split, test_split, classes, "synthetic"), val_size=n_val)
    data = dataclasses.replace(with_val, val_x=with_val.val_x[:0], val_y=with_val.val_y[:0])
    n = len(data.train_y)
    # the trainer's own options that the peers lack are off: no augmentation, constant LR, no validation
    cfg = TrainConfig(epochs=args.epochs, batch_size=BATCH, augment="none", schedule="constant", val_size=0)
    project_cfg = dataclasses.replace(cfg, augment="flip", schedule="onecycle", val_size=n_val)
    hw = HardwareConfig(threads=args.threads)
    hw_cl = dataclasses.replace(hw, channels_last=True)
    flops = {name: step_flops(w) for name, w in MODELS.items()}  # also checks channels_last agrees

    contenders = {"minimal": lambda d: run_minimal(d, cfg), "dataloader": lambda d: run_dataloader(d, cfg)}
    for name, w in MODELS.items():
        contenders[name] = lambda d, w=w: run_trainer(d, cfg, hw, w)
        contenders[name + " cl"] = lambda d, w=w: run_trainer(d, cfg, hw_cl, w)
    # warm-up (oneDNN builds its kernels per shape): two full batches and the last, short one
    warm = dataclasses.replace(data, train_x=data.train_x[: 2 * BATCH + n % BATCH], train_y=data.train_y[: 2 * BATCH + n % BATCH])
    for fn in contenders.values():
        fn(warm)
    run_project(dataclasses.replace(with_val, train_x=warm.train_x, train_y=warm.train_y), project_cfg, hw)

    runs: dict[str, list[float]] = {k: [] for k in [*contenders, "project steps", "project wall"]}
    runs.update({f"{peak} {name}": [] for name in MODELS for peak in ("matmul", "onednn")})
    for r in range(args.repeats):  # interleaved so drifts in machine load hit all alike
        for name in MODELS:  # each model's pair beside its own measure of the peak, their order alternating
            matmul, onednn = gemm_gflops(args.matmul_size)
            runs["matmul " + name].append(matmul)
            runs["onednn " + name].append(onednn)
            for k in (name, name + " cl")[:: 1 if r % 2 == 0 else -1]:
                runs[k].append(contenders[k](data))
            if name == "32/64":  # the peers of the trainer right beside it
                for k in ("minimal", "dataloader"):
                    runs[k].append(contenders[k](data))
                steps_ips, wall_ips = run_project(with_val, project_cfg, hw)
                runs["project steps"].append(steps_ips)
                runs["project wall"].append(wall_ips)
    med = {k: statistics.median(v) for k, v in runs.items()}
    peaks = {k: [v for name in MODELS for v in runs[f"{k} {name}"]] for k in ("matmul", "onednn")}
    peak = {k: statistics.median(v) for k, v in peaks.items()}

    print(f"p1_cnn 5x5, 28x28x1, batch {BATCH}, {n} images x {args.epochs} epoch(s), {torch.get_num_threads()} "
          f"threads, median of {args.repeats} rounds")
    print(f"fp32 GEMM {args.matmul_size}^3 peak: torch.matmul {peak['matmul']:.0f} GFLOP/s (range "
          f"{min(peaks['matmul']):.0f}-{max(peaks['matmul']):.0f}), as a 1x1 conv on oneDNN {peak['onednn']:.0f} "
          f"(range {min(peaks['onednn']):.0f}-{max(peaks['onednn']):.0f}); measured beside each model, % paired")
    print("FLOPs: convolutions + linear layers, forward + backward (FlopCounterMode); cl = channels_last")
    print(f"  {'model':<6} {'role':<23} {'layout':<7} {'GFLOP/step':>10} {'img/s':>7} {'GFLOP/s':>8} "
          f"{'% matmul':>8} {'% oneDNN':>8}  {'cl / default (range)':<20}")
    rows = []
    for name in MODELS:
        per_image = flops[name] / BATCH
        ratio = paired(runs[name + " cl"], runs[name])
        for layout, k in (("default", name), ("cl", name + " cl")):
            achieved = [ips * per_image / 1e9 for ips in runs[k]]
            of_matmul = paired(achieved, runs["matmul " + name])[0]
            of_onednn = paired(achieved, runs["onednn " + name])[0]
            row = {"model": name, "widths": list(MODELS[name]), "role": ROLES[name], "channels_last": layout == "cl",
                   "gflop_per_step": flops[name] / 1e9, "images_per_s": med[k], "gflops": statistics.median(achieved),
                   "fraction_of_matmul_peak": of_matmul, "fraction_of_onednn_gemm_peak": of_onednn}
            text = ""
            if layout == "cl":
                row.update(channels_last_ratio=ratio[0], channels_last_ratio_range=ratio[1:])
                text = f"{ratio[0]:.3f} ({ratio[1]:.2f}-{ratio[2]:.2f})"
            rows.append(row)
            print(f"  {name:<6} {ROLES[name] if layout == 'default' else '':<23} {layout:<7} {flops[name] / 1e9:10.2f} "
                  f"{med[k]:7.0f} {row['gflops']:8.1f} {100 * of_matmul:7.1f}% {100 * of_onednn:7.1f}%  {text}")
    odd, even = paired(runs["46/91"], runs["48/96"]), paired(runs["46/91 cl"], runs["48/96 cl"])
    per_flop = flops["48/96"] / flops["46/91"]
    print(f"  46/91 vs 48/96: img/s ratio {odd[0]:.3f} default, {even[0]:.3f} channels_last; "
          f"GFLOP/s ratio {odd[0] / per_flop:.3f}, {even[0] / per_flop:.3f} (48/96 has {per_flop:.3f}x the FLOPs)")

    print("peers of the trainer (32/64), ratio vs minimal paired per round:")
    peers = {}
    for k in ("32/64", "minimal", "dataloader", "project steps", "project wall"):
        r = paired(runs[k], runs["minimal"])
        label = {"32/64": "trainer", "project steps": "project, steps", "project wall": "project, wall"}.get(k, k)
        peers[label] = {"images_per_s": med[k], "ratio_vs_minimal": r[0], "ratio_range": r[1:]}
        print(f"  {label:<15} {med[k]:8.0f} images/s (range {min(runs[k]):.0f}-{max(runs[k]):.0f})  ratio vs minimal: "
              f"median {r[0]:.3f} (range {r[1]:.3f}-{r[2]:.3f})")
    wall = paired(runs["project wall"], runs["project steps"])[0]
    print(f"  project: the whole call (validation, bar) takes {1 / wall:.3f}x the time of the steps the trainer "
          f"reports; its steps (flip, onecycle, bar) run at {paired(runs['project steps'], runs['32/64'])[0]:.3f}x "
          "the bare trainer")

    profiles = {}
    if args.profile_steps:
        for layout, cl in (("default", False), ("channels_last", True)):
            profiles[layout] = profile_steps(args.profile_steps, cl)
            print(f"self CPU time of {args.profile_steps} steps of 32/64, {layout}: "
                  + ", ".join(f"{k.removeprefix('aten::')} {100 * s:.0f}%" for k, s in profiles[layout]))

    if args.json:
        args.json.write_text(json.dumps({
            "images": n, "epochs": args.epochs, "repeats": args.repeats, "threads": torch.get_num_threads(),
            "batch_size": BATCH, "gemm_size": args.matmul_size, "matmul_peak_gflops": peak["matmul"],
            "onednn_gemm_peak_gflops": peak["onednn"], "peak_runs": peaks, "models": rows, "peers": peers, "profile": profiles,
        }, indent=2) + "\n")


if __name__ == "__main__":
    main()
