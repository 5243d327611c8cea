"""Study of stage `retrain`: paper 1's Table I, the adjusted architecture against the baseline and a
uniform-width control.

One seed (``train.seed``; the pipeline runs the stage once per seed of its
seed list): the adjusted model and the control (every layer widened/narrowed
by one shared factor to the adjusted model's parameter count: the same
capacity change without pHash guidance), both with the same recipe (plus the
adjust stage's extra epochs, if rule (1) fired — the control gets them too,
the "before" column, the baseline of the same seed, does not). Adjusted vs
control is tested on every test image (McNemar); across seeds the ``table1``
stage tests them. Paper 1 Fig 13 / 14 are drawn from the adjusted model.

Table I is cross-dataset and across seeds while `retrain` runs once per
dataset and seed, so each run gives its own row and ``table1``
(cnnvis.studies.table1) joins them.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
from torch import nn

from cnnvis import ConfigError, DataError, models, training
from cnnvis import adjust as A
from cnnvis import data as D
from cnnvis import stats as S
from cnnvis.config import ModelConfig, TrainConfig, parse, to_dict
from cnnvis.models import conv_layers
from cnnvis.similarity import SimilarityConfig
from cnnvis.studies.adjust import Probes, probe_images
from cnnvis.studies.similarity import LayerStudy, layer_study
from cnnvis.studies.training import Trained

DATASET_NAMES = {"mnist": "MNIST", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "fashion_mnist": "Fashion-MNIST",
                 "tiny_imagenet": "Tiny ImageNet", "digits": "digits (sklearn)", "synthetic": "synthetic"}
COLUMNS = ("before", "after", "control")


@dataclass(frozen=True)
class Adjusted:
    """adjusted.yaml of the adjust-architecture stage."""

    model: ModelConfig  # the adjusted architecture
    baseline: ModelConfig  # the same with the baseline's widths
    train_overrides: dict

    @classmethod
    def from_doc(cls, doc: object, where: str = "adjusted.yaml") -> Adjusted:
        if not isinstance(doc, dict) or "model" not in doc:
            raise ConfigError(f"{where}: no 'model' section; rerun the adjust-architecture stage")
        return cls(parse(ModelConfig, doc["model"], f"{where}:model"),
                   parse(ModelConfig, {**doc["model"], "widths": doc["baseline_widths"]}, "baseline model"),
                   dict(doc.get("train_overrides") or {}))


def summary(values: list[float]) -> dict:
    return {"mean": round(statistics.fmean(values), 3),
            "std": round(statistics.stdev(values), 3) if len(values) > 1 else 0.0, "n": len(values), "values": values}


def with_(cfg: ModelConfig | TrainConfig, **changes: object) -> ModelConfig | TrainConfig:
    return parse(type(cfg), {**to_dict(cfg), **changes}, "model" if isinstance(cfg, ModelConfig) else "train")


TrainFn = Callable[[str, ModelConfig, TrainConfig], Trained]  # (tag, model, recipe) → the trained run


@dataclass(frozen=True)
class RetrainStudy:
    seeds: tuple[int, ...]
    adjusted: Trained  # the kept checkpoints
    control: Trained
    recipe: TrainConfig  # of the adjusted model and the control
    overrides: dict
    baseline_epochs: int
    widths: dict  # before / after / control → conv widths
    parameters: dict  # before / after / control → parameter count
    results: dict  # before / after / control → summary of the seed's test top-1 % (n = 1; table1 joins seeds)
    tests: dict  # "mcnemar": adjusted vs control on every test image
    runs: dict  # before / after / control → the seed's run record
    layers: tuple[LayerStudy, ...]  # the adjusted model's similarity on every probe image
    probe_label: str
    similarity: SimilarityConfig

    def metrics(self, dataset: str) -> dict:
        res, runs = self.results, self.runs
        return {"dataset": dataset, "tag": "adjusted", "model": to_dict(self.adjusted.model_cfg),
                "control_model": to_dict(self.control.model_cfg), "recipe": to_dict(self.recipe),
                "train_overrides": self.overrides, "test": runs["after"][0]["test"] if runs["after"] else None,
                "top1": res.get("after"), "control_top1": res.get("control"),
                "before": {"top1": res["before"]["mean"], **res["before"]},
                "control": {"top1": res["control"]["mean"], **res["control"]},
                "parameters": self.parameters, "widths": self.widths, "adjusted_vs_control": self.tests,
                "runs": runs, "similarity_after": [layer.record() for layer in self.layers]}

    def row(self, dataset: str) -> dict:
        """This dataset's Table I row (the paper's numbers are joined in by ``table1``)."""
        return {"dataset": dataset, "name": DATASET_NAMES.get(dataset, dataset), "seeds": list(self.seeds),
                "epochs": {"before": self.baseline_epochs, "after": self.recipe.epochs, "control": self.recipe.epochs},
                "widths": self.widths, "parameters": self.parameters, "tests": self.tests, **self.results}

    def figures(self) -> Iterator[tuple[str, plt.Figure]]:
        """Paper 1 Fig 13 / 14 (the last conv layer), maps + matrix of every other conv layer."""
        from cnnvis.plotting.similarity import layer_figures

        last = len(self.layers) - 1
        figures = layer_figures(self.layers, self.similarity, probe_label=self.probe_label,
                                model_tag="adjusted model", paper={last: {"groups": "p1_fig13", "matrix": "p1_fig14"}})
        # the suffix spelled out: a layer name such as features.conv1 would otherwise read as one
        return ((f"{stem}.png", fig) for stem, fig in figures)


def as_saved(t: Trained) -> nn.Module:
    """The model as its checkpoint rebuilds it (``cnnvis.models.load_checkpoint``): a fresh module in eval mode."""
    spec = t.spec
    model = models.build_model(with_(t.model_cfg, pretrained=False), in_channels=spec["in_channels"],
                               num_classes=spec["num_classes"], image_size=spec["image_size"])
    model.load_state_dict({k: v.detach().cpu() for k, v in t.model.state_dict().items()})
    return model.eval()


def test_correct(raw: D.RawDataset, t: Trained) -> np.ndarray:
    """[N] bool: which test images (the same subset ``fit`` evaluated) the trained model classifies right."""
    cfg = t.train_cfg
    td = D.prepare(raw, val_size=cfg.val_size, max_train=cfg.max_train_images, max_test=cfg.max_test_images,
                   seed=cfg.seed)
    logits = training.predict_logits(t.model, td.test_x, td.mean, td.std, batch_size=cfg.eval_batch_size)
    return (logits.argmax(1) == td.test_y).numpy()


def retrain_study(raw: D.RawDataset, adjusted: Adjusted, baseline_metrics: dict, probes: Probes,
                  train_cfg: TrainConfig, sim_cfg: SimilarityConfig, cfg: A.AdjustConfig, *, train: TrainFn,
                  baseline_source: str) -> RetrainStudy:
    """Train the adjusted model and the control of seed ``train_cfg.seed`` with ``train``; measure the adjusted
    model's similarity on every probe image. ``baseline_metrics`` (named by ``baseline_source``) are of the
    baseline of the same seed: the "before" column."""
    if baseline_metrics.get("seed", train_cfg.seed) != train_cfg.seed:
        raise DataError(f"{baseline_source}: the baseline of seed {baseline_metrics['seed']}, this run's seed is "
                        f"{train_cfg.seed}; pass the baseline of the same seed")
    recipe = parse(TrainConfig, {**to_dict(train_cfg), **adjusted.train_overrides}, "adjusted.yaml:train_overrides")
    base_cfg = adjusted.baseline
    seed = train_cfg.seed
    a = train("adjusted", adjusted.model, with_(recipe, seed=seed))
    spec = a.spec
    target = models.count_parameters_of(adjusted.model, spec)

    def count(ws: tuple[int, ...]) -> int:
        return models.count_parameters_of(with_(base_cfg, widths=list(ws)), spec)

    control_cfg = with_(base_cfg, widths=list(A.uniform_control_widths(base_cfg.widths, count, target)))
    c = train("control", control_cfg, with_(recipe, seed=seed))
    before = baseline_metrics["test"]["top1"]
    values = {"before": [before], "after": [a.metrics["test"]["top1"]], "control": [c.metrics["test"]["top1"]]}
    runs = {"before": [{"seed": seed, "test_top1": before, "source": baseline_source}],
            "after": [a.run_record()], "control": [c.run_record()]}
    model = as_saved(a)
    correct = {"adjusted": test_correct(raw, a), "control": test_correct(raw, c)}
    tests = {"mcnemar": S.mcnemar(correct["adjusted"], correct["control"], ("adjusted", "control")).as_dict()}
    x, labels = probe_images(raw, probes, None, spec)
    layers = tuple(layer_study(name, i, A.reconstruct(model, i, x, mode=cfg.deconv_mode, rectify=cfg.deconv_rectify),
                               sim_cfg) for i, (name, _) in enumerate(conv_layers(model)))
    classes = spec.get("classes") or []
    label = f"probe image 0, class {classes[int(labels[0])] if classes else int(labels[0])}"
    return RetrainStudy(
        (seed,), a, c, recipe, adjusted.train_overrides, train_cfg.epochs,
        widths={"before": list(base_cfg.widths), "after": list(adjusted.model.widths),
                "control": list(control_cfg.widths)},
        parameters={"before": models.count_parameters_of(base_cfg, spec), "after": target,
                    "control": models.count_parameters_of(control_cfg, spec)},
        results={k: summary(v) for k, v in values.items() if v}, tests=tests, runs=runs, layers=layers,
        probe_label=label,
        similarity=sim_cfg)
