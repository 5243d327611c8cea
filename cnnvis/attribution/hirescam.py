"""HiResCAM (Draelos & Carin, 2020, "Use HiResCAM instead of Grad-CAM for faithful explanations").

    L^c = ReLU(Σ_k ∂y^c/∂A^k ⊙ A^k)          (element-wise, no spatial average)

then upsampled like Grad-CAM. Grad-CAM's α_k^c averages the gradient over
positions first; where the gradient changes sign across positions (a fully
connected head) that average cancels, HiResCAM's element-wise product does not.
When ∂y^c/∂A^k is constant over positions (A read by global average pooling
then a linear layer) the two maps are equal, and equal to CAM (Zhou et al. 2016).
"""

from __future__ import annotations

import torch

from cnnvis.attribution.gradcam import GradCAM


class HiResCAM(GradCAM):
    """Grad-CAM with the element-wise gradient × activation: float [N, 1, H, W] (same options as ``GradCAM``)."""

    def channel_sum(self, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """Σ_k ∂y^c/∂A^k ⊙ A^k before the ReLU, [N, 1, h, w]."""
        return (grads * acts).sum(dim=1, keepdim=True)
