"""Filter-importance throughput: cnnvis.importance (one forward + one batched backward per batch
for all classes) vs a loop of one backward per image and class.

    python -m benchmarks.importance [--checkpoint data/models/fashion_mnist/seeds/0/baseline.pt] \
        [--data data/raw/fashion_mnist] [--images 10000] [--loop-images 50] [--threads 2]

The issue's target: the Fashion-MNIST test set (10,000 images, all conv layers,
all 10 classes) in ≤ 60 s on this machine. The loop reference (``torch.autograd.grad``
of y_c for one image w.r.t. every analysed conv weight, then the norm per filter)
is timed on ``--loop-images`` images only and extrapolated linearly to ``--images``
(its cost per image is constant); the printout says so. Wall and CPU seconds are
both printed: on a shared machine the wall clock also measures the neighbours.
Without the checkpoint or the data, a freshly initialized model of the default
architecture and random images stand in (the timing does not depend on the weights).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


def _timed(fn) -> tuple[float, float, object]:
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=Path("data/models/fashion_mnist/seeds/0/baseline.pt"))
    p.add_argument("--data", type=Path, default=Path("data/raw/fashion_mnist"))
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--loop-images", type=int, default=50, help="images timed for the per-image loop (extrapolated)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from cnnvis import data as D
    from cnnvis.config import ModelConfig
    from cnnvis.importance import FilterImportance, compute_importance
    from cnnvis.models import build_model, load_checkpoint

    if args.checkpoint.exists():
        model, state = load_checkpoint(args.checkpoint)
        spec, source = state["spec"], str(args.checkpoint)
    else:
        spec = {"in_channels": 1, "num_classes": 10, "image_size": 28, "mean": [0.286], "std": [0.353]}
        model, source = build_model(ModelConfig(widths=(32, 64), kernel_sizes=(5, 5)), in_channels=1, num_classes=10,
                                    image_size=28).eval(), "untrained p1_cnn [32, 64] 5×5"
    if (args.data / "test.npz").exists():
        raw = D.load_npz(args.data)
        x = D.normalize(D.to_tensor(raw.test.images[: args.images]), tuple(spec["mean"]), tuple(spec["std"]))
        y = torch.as_tensor(raw.test.labels[: args.images])
    else:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(args.images, spec["in_channels"], spec["image_size"], spec["image_size"], generator=g)
        y = torch.randint(0, spec["num_classes"], (args.images,), generator=g)
    n, c = len(y), spec["num_classes"]
    fi = FilterImportance(model)
    weights = [fi.convs[name].weight for name in fi.layers]
    print(f"model: {source}; layers: {', '.join(fi.layers)}; {n} images × {c} classes; {torch.get_num_threads()} threads")

    wall, cpu, stats = _timed(lambda: compute_importance(model, x, y, batch_size=args.batch_size))
    print(f"cnnvis.importance (batched):  {wall:8.1f} s wall  {cpu:8.1f} s CPU   {n / wall:8.1f} images/s   "
          f"(target ≤ 60 s wall for 10,000 images)")

    k = min(args.loop_images, n)

    def loop() -> list[torch.Tensor]:
        out = []
        for i in range(k):
            for cls in range(c):
                grads = torch.autograd.grad(model(x[i : i + 1])[0, cls], weights)
                out.append(torch.cat([g.flatten(1).norm(dim=1) for g in grads]))
        return out

    lwall, lcpu, ref = _timed(loop)
    scale = n / k
    print(f"loop, one backward per image and class: {lwall:6.2f} s wall {lcpu:6.2f} s CPU for {k} images × {c} classes "
          f"→ extrapolated to {n}: {lwall * scale:8.1f} s wall  {lcpu * scale:8.1f} s CPU")
    ours = torch.cat([stats.own[name][:k] for name in fi.layers], 1)
    mine = torch.stack(ref).view(k, c, -1)[torch.arange(k), y[:k]]
    print(f"max |difference| of the importances on those {k} images (own class): {(ours - mine).abs().max().item():.2e}")
    print(f"speed-up (loop / batched): {lwall * scale / wall:.1f}× wall, {lcpu * scale / cpu:.1f}× CPU")


if __name__ == "__main__":
    main()
