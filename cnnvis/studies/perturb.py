"""Study of stage `perturbation-eval`: paper 4's section 5.3 perturbations on every given model of a dataset.

Every perturbation is applied once to the uint8 test images, with one seed, and
the same perturbed images go to every model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from cnnvis import CheckpointError
from cnnvis import data as D
from cnnvis import perturb as P
from cnnvis.report import md_table
from cnnvis.training import predict_logits

log = logging.getLogger(__name__)

# Paper 4's one printed number of section 5.3, read from reports/paper_reference.yaml by table id and row key.
PAPER_ID, PAPER_KEY = "p4_perturbation", "grayscale_encdec"


@dataclass(frozen=True)
class Grid:
    """One perturbation's example images and every model's logits on them (the figure of that perturbation)."""

    perturbation: P.Perturbation
    perturbed: torch.Tensor  # E×C×H×W uint8
    logits: dict[str, torch.Tensor]  # model → E×K


@dataclass(frozen=True)
class PerturbStudy:
    dataset: str
    config: P.PerturbConfig
    classes: tuple[str, ...]
    shape: tuple[int, int, int]  # C, H, W of the test images
    n: int
    models: dict[str, tuple[torch.nn.Module, dict]]  # name → (model, checkpoint dict)
    rows: list[dict[str, Any]]  # clean first, then per applicable perturbation, per model
    skipped: list[dict[str, str]]  # perturbations that do not apply, with the reason
    perturbations: tuple[P.Perturbation, ...]  # every configured one, applicable or not
    examples: torch.Tensor  # E×C×H×W uint8 clean example images
    example_labels: torch.Tensor  # E
    clean_logits: dict[str, torch.Tensor]  # model → E×K on the clean examples
    grids: tuple[Grid, ...]

    def noise_counts(self) -> dict[str, int]:
        """λ (as written in the perturbation's name) → M, the salt & pepper values changed per image."""
        rates = self.config.salt_pepper_rates
        return {f"{r:g}": m for r, m in zip(rates, P.noise_counts(rates, self.shape), strict=True)}

    def metrics(self, paper_grayscale_top1: float) -> dict:
        return {
            "dataset": self.dataset, "n": self.n, "image_shape_chw": list(self.shape), "seed": self.config.seed,
            "models": {name: {"model": state["model"]["name"], "tag": state.get("tag")}
                       for name, (_, state) in self.models.items()},
            "rows": self.rows, "not_applicable": self.skipped,
            "salt_pepper_counts": self.noise_counts(),
            "salt_pepper_rule": "M noisy channel values per image = round(λ·H·W·C), at least 1 and at least one "
                                "more than the level with the next smaller λ",
            "paper": {"grayscale_top1": paper_grayscale_top1,
                      "what": "paper 4 5.3.1: its encoder-decoder on 100 random grayscale Tiny ImageNet val images"},
        }

    def table(self, paper_grayscale_top1: float) -> str:
        """The stage's Markdown table: every row with its Δ to clean, the not-applicable ones, and notes."""
        c, h, w = self.shape
        body = []
        for r in self.rows:
            if r["perturbation"] == "clean":
                body.append(("clean", r["model"], f"{r['top1']:.2f}", "—", f"{r['conf_pred']:.2f}", "—",
                             f"{r['conf_true']:.2f}", "—"))
            else:
                body.append((r["label"], r["model"], f"{r['top1']:.2f}", f"{r['delta_top1']:+.2f}",
                             f"{r['conf_pred']:.2f}", f"{r['delta_conf_pred']:+.2f}", f"{r['conf_true']:.2f}",
                             f"{r['delta_conf_true']:+.2f}"))
        body += [(s["label"], "all", s["reason"], "", "", "", "", "") for s in self.skipped]
        notes = ["", "Notes:"]
        counts = self.noise_counts()
        for p in self.perturbations:
            if "rate" in p.params:
                m = counts[f"{p.params['rate']:g}"]
                notes.append(f"- {p.label}: {m} channel value{'s' if m != 1 else ''} per image set to 0 or 255 "
                             f"({P.noise_rule(p.params['rate'], m, self.shape)}).")
        gray = next((r for r in self.rows if r["perturbation"] == "grayscale" and r["model"] == "encdec"), None)
        ours = (f"ours (encdec, whole test set): {gray['top1']:.2f} %" if gray is not None else
                "ours: " + next((s["reason"] for s in self.skipped if s["name"] == "grayscale"), "not evaluated"))
        notes.append(f"- Paper 4 (5.3.1): grayscale input, {paper_grayscale_top1:.2f} % top-1 on 100 random Tiny "
                     f"ImageNet validation images (its encoder-decoder); {ours}.")
        head = [f"# Perturbation robustness — {self.dataset} (paper 4, section 5.3)", "",
                f"Test set: n = {self.n} images, {h}×{w}×{c}. Perturbations are applied to the uint8 pixels before "
                "normalization, seeded; Δ = perturbed − clean in percentage points. conf(pred) / conf(true): mean "
                "softmax probability of the predicted / the true class.", ""]
        headers = ("perturbation", "model", "top-1 %", "Δ top-1", "conf(pred) %", "Δ", "conf(true) %", "Δ")
        return "\n".join([*head, md_table(headers, body, align="llrrrrrr"), *notes]) + "\n"


def evaluation_images(raw: D.RawDataset, cfg: P.PerturbConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The uint8 N×C×H×W test images and labels, capped at ``cfg.max_test_images`` by a seeded subset."""
    x, y = D.to_tensor(raw.test.images), torch.as_tensor(raw.test.labels)
    if cfg.max_test_images is not None and cfg.max_test_images < len(y):
        keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(cfg.seed))[:cfg.max_test_images]
        keep = keep.sort().values
        x, y = x[keep], y[keep]
    return x, y


def perturbation_study(raw: D.RawDataset, models: Mapping[str, tuple[torch.nn.Module, dict]],
                       cfg: P.PerturbConfig) -> PerturbStudy:
    """Every configured perturbation of ``raw``'s test images, evaluated on every model of ``models``."""
    if not models:
        raise CheckpointError("no model to evaluate: pass at least one of --baseline/--adjusted/--pruned/--encdec "
                              "with an existing checkpoint")
    x, y = evaluation_images(raw, cfg)
    shape = tuple(x.shape[1:])
    for name, (_, state) in models.items():
        spec = state["spec"]
        if (spec["in_channels"], spec["image_size"]) != (shape[0], shape[1]):
            raise CheckpointError(f"--{name}: model expects {spec['in_channels']}×{spec['image_size']} px input, "
                                  f"the {raw.name} test set is {shape[0]}×{shape[1]} px")
    P.noise_counts(cfg.salt_pepper_rates, shape)  # fails now, before any evaluation, if the levels cannot differ
    perts = P.perturbations(cfg)
    skipped = [{"name": p.name, "label": p.label, "reason": reason} for p in perts
               if (reason := P.applicability(p, shape[0])) is not None]

    def evaluate(images: torch.Tensor) -> dict[str, tuple[dict, torch.Tensor]]:
        out = {}
        for name, (model, state) in models.items():
            logits = predict_logits(model, images, tuple(state["spec"]["mean"]), tuple(state["spec"]["std"]),
                                    batch_size=cfg.batch_size)
            out[name] = (P.confidence_metrics(logits, y), logits)
        return out

    clean = evaluate(x)
    rows: list[dict[str, Any]] = [{"perturbation": "clean", "label": "clean", "model": m, **r}
                                  for m, (r, _) in clean.items()]
    ex = torch.randperm(len(y), generator=torch.Generator().manual_seed(cfg.seed + 1))[:cfg.examples].sort().values
    grids = []
    for i, pert in enumerate(perts):
        if P.applicability(pert, shape[0]) is not None:
            continue
        xp = pert(x, seed=cfg.seed * 1000 + i)
        results = evaluate(xp)
        for name, (r, _) in results.items():
            rows.append({"perturbation": pert.name, "label": pert.label, "model": name, **pert.params,
                         **P.with_deltas(r, clean[name][0])})
            log.info("%-20s %-8s top-1 %.2f %% (clean %.2f)", pert.name, name, r["top1"], clean[name][0]["top1"])
        grids.append(Grid(pert, xp[ex], {name: logits[ex] for name, (_, logits) in results.items()}))
    return PerturbStudy(raw.name, cfg, tuple(raw.classes), shape, int(len(y)), dict(models), rows, skipped,
                        tuple(perts), x[ex], y[ex], {name: logits[ex] for name, (_, logits) in clean.items()},
                        tuple(grids))
