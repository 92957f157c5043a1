"""CT intensity normalisation: a fixed HU window mapped linearly to [-1, 1] (the paper's "fingerprint").

The window is [p0.5, p99.5] of foreground pixels of the *training* split only: the organ mask when the manifest
gives one (the paper's kidney fingerprint), else the body (pixels above -500 HU). It is stored with every model
and reused unchanged at inference. Grey-value inputs (PNG/TIFF, already in [0, 1]) are mapped as 2v - 1.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

BODY_HU = -500.0
PIXELS_PER_IMAGE = 20_000


def foreground(hu: np.ndarray, organ: np.ndarray | None) -> np.ndarray:
    """Bool mask of the pixels that define the window: the organ if given, else the body (HU > -500)."""
    return organ.astype(bool) if organ is not None else hu > BODY_HU


def fingerprint_window(
    samples: Iterable[tuple[np.ndarray, np.ndarray | None]],
    percentiles: tuple[float, float] = (0.5, 99.5),
    seed: int = 0,
) -> tuple[float, float]:
    """HU window from (HU slice, organ mask or None) pairs: percentiles of their foreground pixels.

    At most ``PIXELS_PER_IMAGE`` foreground pixels per slice are drawn (seeded), so memory stays bounded.
    Raises ValueError when no foreground pixel is found or the window is degenerate.
    """
    rng = np.random.default_rng(seed)
    pools = []
    for hu, organ in samples:
        values = hu[foreground(hu, organ)]
        if values.size > PIXELS_PER_IMAGE:
            values = rng.choice(values, PIXELS_PER_IMAGE, replace=False)
        pools.append(values.astype(np.float32))
    pixels = np.concatenate(pools) if pools else np.empty(0, np.float32)
    if pixels.size == 0:
        raise ValueError("no foreground pixels in the training split: cannot compute the intensity window")
    lo, hi = (float(v) for v in np.percentile(pixels, percentiles))
    if not hi > lo:
        raise ValueError(f"degenerate intensity window [{lo}, {hi}] HU: training images are constant")
    return lo, hi


def normalise(values: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    """HU -> [-1, 1] with ``window`` = (lo, hi) HU: 2 (clip(v, lo, hi) - lo) / (hi - lo) - 1.

    ``window=None`` means grey values already in [0, 1], mapped to 2v - 1. Returns float32.
    """
    if window is None:
        return (2.0 * np.clip(values, 0.0, 1.0) - 1.0).astype(np.float32)
    lo, hi = window
    return (2.0 * (np.clip(values, lo, hi) - lo) / (hi - lo) - 1.0).astype(np.float32)
