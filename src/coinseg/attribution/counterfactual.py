"""Counterfactual methods (COIN, Singla et al.*) under the attribution contract: the map is |x - x_cf| / 2."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from coinseg.config import GanConfig
from coinseg.evaluation.metrics import difference_map
from coinseg.method import conditions, counterfactual, prob
from coinseg.models.inpainter import Inpainter


class CounterfactualMaps:
    """``__call__(images)``: B x 1 x H x W in [-1, 1] -> difference maps |x - x_cf| / 2 in [0, 1], same shape.

    COIN (single conditioning) needs no classifier at inference (condition 0); dual conditioning (Singla) uses
    the classifier to pick the condition bin(1 - f(x)). ``mirror``: x_cf averaged with the mirror's, as the run was
    calibrated (:func:`coinseg.method.counterfactual`).
    """

    def __init__(
        self, name: str, inpainter: Inpainter, cfg: GanConfig, classifier: nn.Module, mirror: bool = False
    ) -> None:
        self.name = name
        self.inpainter = inpainter.eval()
        self.classifier = classifier.eval()
        self.cfg = cfg
        self.mirror = mirror

    @torch.no_grad()
    def counterfactual(self, images: Tensor) -> Tensor:
        """x_cf, B x 1 x H x W in [-1, 1], on the images' device."""
        c = conditions(prob(self.classifier, images), self.cfg)[1]
        return counterfactual(self.inpainter, images, c, self.mirror).float()

    def __call__(self, images: Tensor) -> Tensor:
        return difference_map(images, self.counterfactual(images))
