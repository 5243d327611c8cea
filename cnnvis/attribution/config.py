"""``VisualizeConfig``: the ``visualize`` section of params.yaml (conf/visualize/)."""

from __future__ import annotations

from dataclasses import dataclass

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
    eval_images: int = opt(64, ge=1)
    faithfulness_steps: int = opt(14, ge=2)  # curve points (14 = two image rows of pixels per step at 28 px)
    deletion_baseline: str = opt("black", choices=("black", "mean", "blur"))  # mean = the dataset's mean pixel
    insertion_baseline: str = opt("blur", choices=("black", "mean", "blur"))
    blur_sigma: float = opt(2.0, gt=0.0)  # px
    randomization: bool = opt(True)  # cascading model-parameter randomization test
    seed: int = opt(0, ge=0)
