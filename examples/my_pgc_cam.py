"""Your pytorch-grad-cam CAM, benchmarked without rewriting it (a cambench plugin).

    python run_bench.py run quick --plugin examples/my_pgc_cam.py

``PositiveGradCAM`` is an ordinary pytorch-grad-cam ``BaseCAM`` subclass (as new CAM variants are usually
published); one line registers it as the cambench method ``poscam``. The plugin loader checks it against the
method contract before any benchmark work, and it gets the same post-processing as every built-in method.
"""

import numpy as np
from pytorch_grad_cam.base_cam import BaseCAM

from benchmark.methods import from_pytorch_grad_cam


class PositiveGradCAM(BaseCAM):
    """Grad-CAM weighted by the positive part of the gradients only: alpha_k = mean_ij max(dy^c/dA_k, 0)."""

    def __init__(self, model, target_layers, reshape_transform=None):
        super().__init__(model, target_layers, reshape_transform)

    def get_cam_weights(self, input_tensor, target_layer, target_category, activations, grads):
        return np.mean(np.maximum(grads, 0), axis=(2, 3))


from_pytorch_grad_cam("poscam", PositiveGradCAM, paper="example: Grad-CAM with positive gradients")
