"""Common contract of the attribution baselines.

Every attributor maps a batch of images ``B x 1 x H x W`` in [-1, 1] to saliency maps ``B x 1 x H x W`` in
[0, 1] (per-sample min-max normalised, on the input's device). The classifier it explains is an ``nn.Module``
mapping ``B x 1 x H x W`` to ``B`` logits (sigmoid = probability of "abnormal") with a ``cam_layer`` property.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class Attributor(Protocol):
    """Callable producing saliency maps.

    Attributes:
        name: method name, e.g. ``"rise"`` or ``"scorecam"``.
    """

    name: str

    def __call__(self, images: Tensor) -> Tensor:
        """``images``: ``B x 1 x H x W`` in [-1, 1] -> maps ``B x 1 x H x W`` in [0, 1], same device."""
        ...


def minmax_normalise(maps: Tensor) -> Tensor:
    """Min-max normalise each sample of ``maps`` (``B x 1 x H x W``) to [0, 1].

    A constant map (max == min) becomes all zeros. Returns a new tensor of the same shape, dtype and device.
    """
    if maps.dim() != 4:
        raise ValueError(f"expected B x 1 x H x W maps, got shape {tuple(maps.shape)}")
    lo = maps.amin(dim=(1, 2, 3), keepdim=True)
    hi = maps.amax(dim=(1, 2, 3), keepdim=True)
    span = hi - lo
    safe = torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, (maps - lo) / safe, torch.zeros_like(maps))
