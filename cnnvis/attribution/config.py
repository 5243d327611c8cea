"""``VisualizeConfig``: the ``visualize`` section of params.yaml (conf/visualize/)."""

from __future__ import annotations

from dataclasses import dataclass

from cnnvis import ConfigError
from cnnvis.config import opt


@dataclass(frozen=True)
class VisualizeConfig:
    # --- paper 1 figures
    figure_classes: tuple[int, ...] = opt((0, 1, 2), ge=0, min_length=1)  # Fig 2-4: one test image of each class
    feature_map: int = opt(6, ge=0)  # Fig 5a/6: "the 7th feature map" (0-based index 6)
    feature_map_images: int = opt(16, ge=1)  # Fig 5a/6: test images the map is projected for
    gradcam_images: int = opt(6, ge=1)  # Fig 7/8: test images shown
    gradcam_on: str = opt("relu", choices=("relu", "conv"))  # Grad-CAM's A^k: the rectified maps or the raw conv output
    projection: str = opt("all", choices=("all", "max"))  # signal: the whole map, or its strongest activation
    rectify: bool = opt(True)  # project the map after its ReLU (Zeiler & Fergus), not the raw conv output
    # --- reconstructions for the similarity stage
    probe_images: int = opt(10, ge=1)  # test images, taken class by class round-robin
    max_batch: int = opt(4096, ge=1)  # replicated images per backward pass (memory bound)
    # --- beyond the papers: sanity checks and faithfulness on a test subset
    eval_images: int = opt(64, ge=1)  # the randomization test and class sensitivity
    faithfulness_images: int = opt(512, ge=2)  # deletion / insertion and their paired tests (a seeded test subset)
    faithfulness_steps: int = opt(14, ge=2)  # curve points (14 = two image rows of pixels per step at 28 px)
    # one importance per pixel: the channel sum, then positive = max(·, 0) (evidence for the class; default),
    # absolute = |·|, signed = as is (cnnvis.attribution.faithfulness.pixel_importance)
    faithfulness_sign: str = opt("positive", choices=("positive", "absolute", "signed"))
    # baselines of both deletion and insertion: black, mean (the dataset's mean pixel), blur, road (Rong et al. 2022)
    faithfulness_baselines: tuple[str, ...] = opt(("black", "blur", "road"), choices=("black", "mean", "blur", "road"),
                                                  min_length=1)
    faithfulness_random_maps: int = opt(4, ge=1)  # the control: independent uniform random maps per image
    faithfulness_alpha: float = opt(0.05, gt=0.0, lt=1.0)  # level of the Wilcoxon test against the random control
    faithfulness_bootstrap: int = opt(10000, ge=100)  # resamples of the 95 % bootstrap CIs
    deletion_baseline: str = opt("black", choices=("black", "mean", "blur", "road"))  # the figure's deletion curves
    insertion_baseline: str = opt("blur", choices=("black", "mean", "blur", "road"))  # the figure's insertion curves
    blur_sigma: float = opt(2.0, gt=0.0)  # px
    road_noise: float = opt(0.01, ge=0.0)  # σ of ROAD's noise on imputed pixels, in normalized image units
    randomization: bool = opt(True)  # cascading model-parameter randomization test
    seed: int = opt(0, ge=0)

    def check(self, section: str) -> None:
        if len(set(self.faithfulness_baselines)) < len(self.faithfulness_baselines):
            raise ConfigError(f"{section}.faithfulness_baselines = {list(self.faithfulness_baselines)}: a baseline twice")
        for key in ("deletion_baseline", "insertion_baseline"):
            if getattr(self, key) not in self.faithfulness_baselines:
                raise ConfigError(f"{section}.{key} = {getattr(self, key)!r}: the figure shows computed curves only; "
                                  f"add it to faithfulness_baselines ({', '.join(self.faithfulness_baselines)})")
