"""RISE: randomized input sampling for explanation (Petsiuk et al., 2018), vectorised.

Follows the reference evaluation: N = 6000 masks from an 8 x 8 grid with keep-probability 0.1, each grid
upsampled bilinearly to ``(grid + 1) * cell`` (``cell = ceil(H / grid)``) and cropped to ``H x W`` at a random
shift in ``[0, cell)``. Masks are generated on the image's device from a generator re-seeded on every call
(same seed -> same masks -> same map); nothing is cached.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from coinseg.attribution.base import minmax_normalise


class RISE:
    """RISE saliency for a single-logit classifier.

    Args:
        model: classifier ``B x 1 x H x W`` -> ``B`` logits (sigmoid = P(abnormal)).
        n_masks: number of random masks N.
        grid: grid size s (masks are s x s binary grids before upsampling).
        p_keep: probability that a grid cell is kept (mask = 1).
        batch_size: masks generated / evaluated per forward pass (bounds memory).
        seed: seed of the mask generator (re-seeded on every call).
        fill: value of masked-out pixels (0 = mid-grey in [-1, 1], as the reference; -1 = black).

    Calling it on images ``B x 1 x H x W`` in [-1, 1] returns ``B x 1 x H x W`` maps in [0, 1]:
    ``Σ_i sigmoid(f(m_i x + (1 - m_i) fill)) m_i / (N p_keep)``, min-max normalised per image.
    """

    name = "rise"

    def __init__(
        self,
        model: nn.Module,
        n_masks: int = 6000,
        grid: int = 8,
        p_keep: float = 0.1,
        batch_size: int = 256,
        seed: int = 0,
        fill: float = 0.0,
    ) -> None:
        if n_masks < 1 or grid < 1 or batch_size < 1:
            raise ValueError("n_masks, grid and batch_size must be >= 1")
        if not 0.0 < p_keep <= 1.0:
            raise ValueError(f"p_keep must be in (0, 1], got {p_keep}")
        self.model = model
        self.n_masks = n_masks
        self.grid = grid
        self.p_keep = p_keep
        self.batch_size = batch_size
        self.seed = seed
        self.fill = fill

    def _mask_chunks(self, height: int, width: int, device: torch.device, dtype: torch.dtype) -> Iterator[Tensor]:
        """Yield masks ``n x 1 x H x W`` in [0, 1], ``n <= batch_size``, N in total.

        The low-resolution grids and shifts (small) are drawn up front, so the masks do not depend on
        ``batch_size``; only ``batch_size`` full-size masks exist at a time.
        """
        gen = torch.Generator(device=device).manual_seed(self.seed)
        s, n = self.grid, self.n_masks
        cell_h, cell_w = math.ceil(height / s), math.ceil(width / s)
        grids = (torch.rand(n, 1, s, s, generator=gen, device=device) < self.p_keep).to(dtype)
        shift_y = torch.randint(0, cell_h, (n,), generator=gen, device=device)
        shift_x = torch.randint(0, cell_w, (n,), generator=gen, device=device)
        rows = torch.arange(height, device=device)
        cols = torch.arange(width, device=device)
        for start in range(0, n, self.batch_size):
            stop = min(start + self.batch_size, n)
            up = F.interpolate(
                grids[start:stop],
                size=((s + 1) * cell_h, (s + 1) * cell_w),
                mode="bilinear",
                align_corners=False,
            )[:, 0]
            idx = torch.arange(stop - start, device=device)[:, None, None]
            r = (shift_y[start:stop, None] + rows)[:, :, None]
            c = (shift_x[start:stop, None] + cols)[:, None, :]
            yield up[idx, r, c].unsqueeze(1)

    def __call__(self, images: Tensor) -> Tensor:
        """``images``: ``B x 1 x H x W`` in [-1, 1] -> saliency ``B x 1 x H x W`` in [0, 1] (same device)."""
        if images.dim() != 4 or images.shape[1] != 1:
            raise ValueError(f"expected B x 1 x H x W images, got shape {tuple(images.shape)}")
        b, _, h, w = images.shape
        dtype = images.dtype if images.is_floating_point() else torch.float32
        x = images.to(dtype)
        saliency = torch.zeros(b, h, w, device=images.device, dtype=dtype)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                for masks in self._mask_chunks(h, w, images.device, dtype):
                    n = masks.shape[0]
                    background = (1.0 - masks) * self.fill
                    for i in range(b):
                        probs = torch.sigmoid(self.model(masks * x[i] + background).reshape(n))
                        saliency[i] += torch.einsum("n,nhw->hw", probs, masks[:, 0])
        finally:
            self.model.train(was_training)
        saliency /= self.n_masks * self.p_keep
        return minmax_normalise(saliency.unsqueeze(1))
