"""Class-activation-map baselines through ``pytorch_grad_cam`` (grad-cam package).

The classifier outputs one logit per image (shape ``B``); it is wrapped to ``B x 1`` and every image is
explained for output 0 (``ClassifierOutputTarget(0)``) at ``model.cam_layer``.
"""

from __future__ import annotations

import contextlib
import io

import torch
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, LayerCAM, ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import Tensor, nn

from coinseg.attribution.base import minmax_normalise

CAM_METHODS = {
    "scorecam": ScoreCAM,
    "layercam": LayerCAM,
    "gradcam": GradCAM,
    "gradcampp": GradCAMPlusPlus,
}


class _SingleLogit(nn.Module):
    """Reshape a ``B``-logit classifier's output to ``B x 1`` (what pytorch_grad_cam expects)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x).reshape(x.shape[0], 1)


class CamAttributor:
    """CAM saliency (ScoreCAM, LayerCAM, Grad-CAM, Grad-CAM++) at ``model.cam_layer``.

    Args:
        model: classifier ``B x 1 x H x W`` -> ``B`` logits, with a ``cam_layer`` module.
        method: one of ``"scorecam"``, ``"layercam"``, ``"gradcam"``, ``"gradcampp"``.
        batch_size: masked images per forward pass in ScoreCAM (ignored by the other methods).

    Calling it on images ``B x 1 x H x W`` in [-1, 1] returns ``B x 1 x H x W`` maps in [0, 1] on the input's
    device (the package upsamples the layer map bilinearly to H x W; here it is min-max normalised per image).
    Hooks are registered for the duration of a call only; the model's train/eval mode is restored afterwards.
    Gradients flow through the input, so a frozen classifier (``requires_grad=False``) works.
    """

    def __init__(self, model: nn.Module, method: str, batch_size: int = 64) -> None:
        if method not in CAM_METHODS:
            raise ValueError(f"unknown CAM method {method!r}; choose one of {sorted(CAM_METHODS)}")
        self.model = model
        self.name = method
        self.batch_size = batch_size

    def __call__(self, images: Tensor) -> Tensor:
        """``images``: ``B x 1 x H x W`` in [-1, 1] -> saliency ``B x 1 x H x W`` in [0, 1] (same device)."""
        if images.dim() != 4 or images.shape[1] != 1:
            raise ValueError(f"expected B x 1 x H x W images, got shape {tuple(images.shape)}")
        was_training = self.model.training
        cam = CAM_METHODS[self.name](model=_SingleLogit(self.model), target_layers=[self.model.cam_layer])
        cam.batch_size = self.batch_size  # read by ScoreCAM only
        targets = [ClassifierOutputTarget(0) for _ in range(images.shape[0])]
        try:
            if self.name == "scorecam":
                # grad-cam's ScoreCAM prints a tqdm bar per image to stderr, with no option to turn it off.
                with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
                    maps = cam(input_tensor=images.detach(), targets=targets)
            else:
                with torch.enable_grad():
                    x = images.detach().clone().requires_grad_(True)
                    maps = cam(input_tensor=x, targets=targets)
        finally:
            cam.activations_and_grads.release()
            self.model.train(was_training)
        out = torch.as_tensor(maps, dtype=torch.float32, device=images.device).unsqueeze(1)
        return minmax_normalise(out)
