"""Attribution baselines (RISE and CAMs) sharing one contract: see :mod:`coinseg.attribution.base`."""

from __future__ import annotations

from typing import Any

from torch import nn

from coinseg.attribution.base import Attributor, minmax_normalise
from coinseg.attribution.cams import CamAttributor
from coinseg.attribution.rise import RISE
from coinseg.registry import ATTRIBUTION

__all__ = [
    "Attributor",
    "CamAttributor",
    "RISE",
    "build_attributor",
    "minmax_normalise",
]


def build_attributor(name: str, model: nn.Module, **kwargs: Any) -> Attributor:
    """Build the attributor called ``name`` for ``model``.

    Args:
        name: an attribution method of :data:`coinseg.registry.METHODS`.
        model: classifier ``B x 1 x H x W`` -> ``B`` logits with a ``cam_layer`` property.
        **kwargs: passed to :class:`RISE` (``n_masks``, ``grid``, ``p_keep``, ``batch_size``, ``seed``,
            ``fill``) or :class:`CamAttributor` (``batch_size``).

    Raises:
        ValueError: unknown name (the message lists the choices).
    """
    if name == "rise":
        return RISE(model, **kwargs)
    if name in ATTRIBUTION:
        return CamAttributor(model, name, **kwargs)
    raise ValueError(f"unknown attribution method {name!r}; choose one of {list(ATTRIBUTION)}")
