"""Bringing a map made at the network's size back to a slice's own pixels.

The networks see a slice resized to S x S (64 px in the quick profile), so a lesion of a few slice pixels is one
or two network pixels, and a bilinear resize of the map back to the slice blurs its edge over several slice
pixels. ``guided`` resizing (joint bilateral upsampling, Kopf et al., SIGGRAPH 2007) uses the slice itself as the
guide: each slice pixel takes a weighted mean of the map over the nearby network pixels, weighted by distance
(Gaussian, ``spatial_sigma`` network pixels) and by how close the network pixel's intensity is to the slice
pixel's (Gaussian, ``range_sigma`` in [-1, 1] image units), so the map's edge follows the lesion's edge in the
slice. Where the image is flat the range weights are all equal and it is a smooth interpolation of the map.
Measured on three runs (benchmarks/RESULTS.md, "Guided upsampling"): pooled IoU +0.03 to +0.05.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

RANGE_SIGMA = 0.1  # [-1, 1] image units: 5 % of the intensity window
SPATIAL_SIGMA = 1.0  # network pixels
RADIUS = 2  # network pixels each way: a 4 x 4 neighbourhood around each slice pixel


def bilinear(low_map: Tensor, shape: tuple[int, int]) -> Tensor:
    """S x S map -> H x W (bilinear, half-pixel centres)."""
    return F.interpolate(low_map[None, None].float(), size=shape, mode="bilinear", align_corners=False)[0, 0]


def guided(
    low_map: Tensor,
    low_image: Tensor,
    image: Tensor,
    range_sigma: float = RANGE_SIGMA,
    spatial_sigma: float = SPATIAL_SIGMA,
) -> Tensor:
    """Joint bilateral upsampling of one map.

    Args:
        low_map: S_h x S_w map at the network's size (any values; [0, 1] difference maps in coinseg).
        low_image: S_h x S_w, the network's input for that map, in [-1, 1].
        image: H x W, the same slice (or box) at its own resolution, normalised with the same window, in [-1, 1].

    Returns:
        H x W float32 on ``low_map``'s device: at every pixel a convex combination of ``low_map`` values, so
        it stays within the map's range.
    """
    device = low_map.device
    low_map, low_image = low_map.float(), low_image.float().to(device)
    image = image.float().to(device)
    (sh, sw), (h, w) = low_map.shape, image.shape
    # each slice pixel's position in network pixels (half-pixel centres, as F.interpolate with align_corners=False)
    cy = ((torch.arange(h, device=device) + 0.5) * sh / h - 0.5)[:, None].expand(h, w)
    cx = ((torch.arange(w, device=device) + 0.5) * sw / w - 0.5)[None, :].expand(h, w)
    base_y, base_x = cy.floor().long(), cx.floor().long()
    num = torch.zeros(h, w, device=device)
    den = torch.zeros(h, w, device=device)
    flat_map, flat_image = low_map.reshape(-1), low_image.reshape(-1)
    for dy in range(1 - RADIUS, RADIUS + 1):
        qy = (base_y + dy).clamp(0, sh - 1)
        for dx in range(1 - RADIUS, RADIUS + 1):
            qx = (base_x + dx).clamp(0, sw - 1)
            index = qy * sw + qx
            weight = torch.exp(
                -((cy - qy) ** 2 + (cx - qx) ** 2) / (2 * spatial_sigma**2)
                - (image - flat_image[index]) ** 2 / (2 * range_sigma**2)
            )
            num += weight * flat_map[index]
            den += weight
    # the nearest network pixel always weighs at least exp(-1/spatial_sigma^2 - 2/range_sigma^2) > 0 in float64;
    # in float32 the range term can underflow for a pixel unlike all its neighbours: fall back to bilinear there
    weighed = den > 1e-20
    back = num / den.clamp_min(1e-20)
    return back if bool(weighed.all()) else torch.where(weighed, back, bilinear(low_map, (h, w)))
