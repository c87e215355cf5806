"""A researcher's CAM written for pytorch-grad-cam (a ``BaseCAM`` subclass), registered unchanged for the tests."""

import numpy as np
from pytorch_grad_cam.base_cam import BaseCAM

from benchmark.methods import from_pytorch_grad_cam


class AbsGradCAM(BaseCAM):
    """Grad-CAM whose channel weights are the mean absolute gradients (a made-up variant)."""

    def __init__(self, model, target_layers, reshape_transform=None):
        super().__init__(model, target_layers, reshape_transform)

    def get_cam_weights(self, input_tensor, target_layer, target_category, activations, grads):
        return np.mean(np.abs(grads), axis=(2, 3))


from_pytorch_grad_cam("absgradcam", AbsGradCAM, paper="tests: mean |gradient| weights")
