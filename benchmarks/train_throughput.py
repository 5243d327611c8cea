"""Training throughput of the project's trainer against two peers, in one run.

    python -m benchmarks.train_throughput [--images 12000] [--epochs 2] [--repeats 3]

Peers, with the same model, batch size, optimizer, data and threads:
- minimal: a hand-written loop over pre-normalized in-memory tensors (the floor of overhead);
- dataloader: torch DataLoader over a TensorDataset (the common default).
Each is timed over whole epochs, repeated and interleaved; the median images/s
is reported with the ratio trainer / minimal.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from cnnvis.config import HardwareConfig, ModelConfig, TrainConfig
from cnnvis.data import RawDataset, TensorData, make_synthetic, normalize, prepare
from cnnvis.models import build_model
from cnnvis.training import make_optimizer, train


def model_and_opt(cfg: TrainConfig):
    torch.manual_seed(0)
    model = build_model(ModelConfig(kernel_sizes=(5, 5)), in_channels=1, num_classes=10, image_size=28)
    return model, make_optimizer(model, cfg)


def run_trainer(data: TensorData, cfg: TrainConfig, hw: HardwareConfig) -> float:
    model, _ = model_and_opt(cfg)
    result = train(model, data, cfg, hw)
    return result.images_per_s


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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=12000)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    train_split, test_split, classes = make_synthetic(28, args.images, 100, seed=0)
    data = prepare(RawDataset("synthetic", train_split, test_split, classes, "synthetic"), val_size=0)
    # the trainer's own options that the peers lack are off: no augmentation, constant LR, no validation
    cfg = TrainConfig(epochs=args.epochs, batch_size=128, augment="none", schedule="constant", val_size=0)
    hw = HardwareConfig(threads=args.threads)
    runs = {"trainer": [], "minimal": [], "dataloader": []}
    for _ in range(args.repeats):  # interleaved so drifts in machine load hit all three alike
        runs["trainer"].append(run_trainer(data, cfg, hw))
        runs["minimal"].append(run_minimal(data, cfg))
        runs["dataloader"].append(run_dataloader(data, cfg))
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(f"p1_cnn 32/64 5x5, 28x28x1, batch {cfg.batch_size}, {len(data.train_y)} images x {args.epochs} epoch(s), "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    for k, v in med.items():
        # paired: each repeat's ratio against the minimal loop timed right beside it, so load drifts cancel
        ratios = [a / b for a, b in zip(runs[k], runs["minimal"], strict=True)]
        print(f"  {k:<11} {v:8.0f} images/s (range {min(runs[k]):.0f}-{max(runs[k]):.0f})  ratio vs minimal: "
              f"median {statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f})")


if __name__ == "__main__":
    main()
