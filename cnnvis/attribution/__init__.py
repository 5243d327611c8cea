"""Attribution methods, one verb for all (Captum's): ``Method(model, layer).attribute(images, target=labels)``.

One small file per method; deconvnet and guided backprop differ by one ReLU rule
(``cnnvis.hooks.relu_rule``), Guided Grad-CAM is a composition of two methods,
HiResCAM is Grad-CAM with one step changed (``GradCAM.channel_sum``).
"""

from cnnvis.attribution._common import BATCH
from cnnvis.attribution.config import VisualizeConfig
from cnnvis.attribution.deconvnet import Deconvnet, project_feature_maps
from cnnvis.attribution.gradcam import GradCAM, minmax_per_image
from cnnvis.attribution.gradient import InputGradient
from cnnvis.attribution.guided_backprop import GuidedBackprop
from cnnvis.attribution.guided_gradcam import GuidedGradCAM
from cnnvis.attribution.hirescam import HiResCAM
from cnnvis.attribution.saliency import Saliency

# name → class, for stages and contract tests (methods are chosen by name, never by class path)
METHODS = {"saliency": Saliency, "deconvnet": Deconvnet, "guided_backprop": GuidedBackprop,
           "gradcam": GradCAM, "guided_gradcam": GuidedGradCAM, "hirescam": HiResCAM}

__all__ = ["BATCH", "METHODS", "Deconvnet", "GradCAM", "GuidedBackprop", "GuidedGradCAM", "HiResCAM", "InputGradient", "Saliency",
           "VisualizeConfig", "minmax_per_image", "project_feature_maps"]
