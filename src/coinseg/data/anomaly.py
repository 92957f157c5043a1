"""The paper's synthetic anomaly: a bright, distorted Gaussian blob added inside an organ (as in the paper's code).

Works on any 2-D slice in [0, 1] intensity space with any organ mask, so the same code serves the phantom
and real CT with real kidney masks. :func:`hu_to_unit` maps HU into that space with a window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

MAX_CENTRE_TRIES = 1000  # the paper resamples recursively until Python's recursion limit (~1000)


@dataclass(frozen=True)
class Anomaly:
    """Result of :func:`inject_anomaly`.

    ``image01``: float32, (H, W), in [0, 1], the slice with the blob added (a new array). ``mask``: bool,
    (H, W), the ground-truth lesion (all False when nothing was injected). ``injected``: True iff ``mask`` has
    a pixel.
    """

    image01: np.ndarray
    mask: np.ndarray
    injected: bool


def hu_to_unit(hu: np.ndarray, window: Sequence[float]) -> np.ndarray:
    """Clip HU to ``window = (lo, hi)`` and map it linearly to [0, 1] (float32, same shape)."""
    lo, hi = float(window[0]), float(window[1])
    if not hi > lo:
        raise ValueError(f"window: expected lo < hi, got ({lo}, {hi})")
    unit = (np.asarray(hu, dtype=np.float32) - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(unit, 0.0, 1.0)


def blob_template(size: int = 20, sigma: float = 0.4) -> np.ndarray:
    """The untransformed blob ``T = exp(-d^2 / (2 sigma^2))`` on a ``linspace(-1, 1, size)`` grid.

    float64, (size, size), values in (0, 1); at size 20 its maximum is 0.983 and ``T > 0.25`` has 120 px.
    """
    axis = np.linspace(-1.0, 1.0, size)
    d2 = axis[:, None] ** 2 + axis[None, :] ** 2
    return np.exp(-d2 / (2 * sigma**2))


def _source_coords(
    size: int, rng: np.random.Generator, scale: tuple[float, float], distort: float, max_rotation: float
) -> np.ndarray:
    """Draw the blob's scale, grid distortion and rotation; return where each output pixel reads the template.

    One resampling replaces the paper's albumentations chain (each step interpolated again):

    1. RandomScale: output side ``n = round(size * s)`` (albumentations floors), ``s ~ U(scale)``, pixel-centre
       aligned (cv2 resize).
    2. GridDistortion(num_steps=1): per axis a step factor ``k ~ U(1 - distort, 1 + distort)``; output pixel
       ``j`` reads ``j * n * k / (n - 1)`` (a stretch anchored at the top-left corner, as albumentations does).
    3. Rotate by ``U(-max_rotation, max_rotation)`` degrees about the centre, same size, border 0.
    Returns template (row, col) coordinates, float64 array (2, n, n), for :func:`scipy.ndimage.map_coordinates`.
    """
    s = rng.uniform(*scale)
    n = max(1, round(size * s))
    k = rng.uniform(1 - distort, 1 + distort, size=2)  # rows, cols
    theta = np.deg2rad(rng.uniform(-max_rotation, max_rotation))

    rows, cols = np.mgrid[0:n, 0:n].astype(np.float64)
    c = (n - 1) / 2
    # Inverse rotation: output pixel -> pixel of the distorted image.
    cos, sin = np.cos(theta), np.sin(theta)
    r = c + cos * (rows - c) - sin * (cols - c)
    q = c + sin * (rows - c) + cos * (cols - c)
    # Inverse grid distortion: -> pixel of the scaled image.
    stretch = n / (n - 1) if n > 1 else 1.0
    r, q = r * k[0] * stretch, q * k[1] * stretch
    # Inverse scale (pixel-centre aligned): -> pixel of the template.
    ratio = size / n
    return np.stack([(r + 0.5) * ratio - 0.5, (q + 0.5) * ratio - 0.5])


def _pick_centre(
    labels: np.ndarray, region: int, box: tuple[slice, slice], rng: np.random.Generator
) -> tuple[int, int] | None:
    """A pixel of ``labels == region`` drawn uniformly in ``box`` less a 5 % margin per side, or None."""
    (r0, r1), (c0, c1) = ((s.start, s.stop) for s in box)
    h, w = r1 - r0, c1 - c0
    rows = rng.integers(r0 + int(0.05 * h), r1 - int(0.05 * h), size=MAX_CENTRE_TRIES)
    cols = rng.integers(c0 + int(0.05 * w), c1 - int(0.05 * w), size=MAX_CENTRE_TRIES)
    inside = np.flatnonzero(labels[rows, cols] == region)
    if inside.size == 0:
        return None
    return int(rows[inside[0]]), int(cols[inside[0]])


def inject_anomaly(
    image01: np.ndarray,
    organ: np.ndarray,
    rng: np.random.Generator,
    p: float = 0.65,
    alpha: float = 0.9,
    size: int = 20,
    sigma: float = 0.4,
    mask_threshold: float = 0.25,
    scale: tuple[float, float] = (0.75, 1.0),
    distort: float = 0.2,
    max_rotation: float = 90.0,
) -> Anomaly:
    """With probability ``p``, add ``alpha`` times a randomly transformed Gaussian blob inside ``organ``.

    ``image01``: (H, W) slice in [0, 1] (not modified). ``organ``: (H, W) mask, nonzero = organ (e.g. the
    kidneys). ``rng``: the only source of randomness (same state, same result). The other parameters are the
    paper's: blob template ``size`` px with ``sigma`` on a [-1, 1] grid, lesion mask = transformed blob >
    ``mask_threshold`` (120 px untransformed), ``scale`` range, grid ``distort`` limit, rotation limit in
    degrees.

    Steps (as in the paper's code): draw ``rng.random() < p``; label the organ's connected regions
    (8-connectivity) and pick one of the two largest uniformly; give up if its bounding box has at most
    ``size**2`` pixels; draw a centre uniformly in the box less a 5 % margin per side until it falls in the
    region (at most 1000 draws, then give up); scale, grid-distort and rotate blob and mask template together
    (blob linear, mask nearest, border 0); add the blob centred on that point.

    Departures from the paper's code:

    * a blob crossing the image border is cropped, not dropped (the paper's shape mismatch silently produced
      no anomaly);
    * **deliberate**: the lesion is confined to the organ. Both the added intensity ``alpha * T'`` and the
      mask ``M'`` are multiplied by the organ region the centre lies in, so every changed pixel and every
      lesion pixel is inside the organ (the paper adds the whole square, faint tails included, wherever it
      falls).

    Returns an :class:`Anomaly`: ``image01 = clip(image01 + alpha * T' * region, 0, 1)`` (float32) and
    ``mask = M' & region``; ``injected`` is True only when that mask is non-empty.
    """
    image = np.asarray(image01, dtype=np.float32)
    organ = np.asarray(organ)
    if image.ndim != 2 or organ.shape != image.shape:
        raise ValueError(f"image01 and organ: expected two 2-D arrays of one shape, got {image.shape}, {organ.shape}")
    nothing = Anomaly(image01=image.copy(), mask=np.zeros(image.shape, dtype=bool), injected=False)
    if rng.random() >= p:
        return nothing

    labels, n_regions = ndimage.label(organ != 0, structure=np.ones((3, 3), dtype=bool))
    if n_regions == 0:
        return nothing
    areas = np.bincount(labels.ravel(), minlength=n_regions + 1)[1:]
    largest = np.argsort(-areas, kind="stable")[:2] + 1
    region = int(largest[rng.integers(len(largest))])
    box = ndimage.find_objects(labels, max_label=region)[region - 1]
    assert box is not None
    if (box[0].stop - box[0].start) * (box[1].stop - box[1].start) <= size * size:
        return nothing
    centre = _pick_centre(labels, region, box, rng)
    if centre is None:
        return nothing

    template = blob_template(size, sigma)
    coords = _source_coords(size, rng, scale, distort, max_rotation)
    blob = ndimage.map_coordinates(template, coords, order=1, mode="constant", cval=0.0)
    blob_mask = ndimage.map_coordinates((template > mask_threshold).astype(np.float64), coords, order=0) > 0.5

    # Paste rows [cy - h // 2, cy - h // 2 + h) (likewise columns), cropped to the image.
    h, w = blob.shape
    top, left = centre[0] - h // 2, centre[1] - w // 2
    r0, c0 = max(top, 0), max(left, 0)
    r1, c1 = min(top + h, image.shape[0]), min(left + w, image.shape[1])
    inside = labels[r0:r1, c0:c1] == region
    crop = (slice(r0 - top, r1 - top), slice(c0 - left, c1 - left))

    result = image.copy()
    added = np.float32(alpha) * blob[crop].astype(np.float32) * inside
    result[r0:r1, c0:c1] = np.clip(result[r0:r1, c0:c1] + added, 0.0, 1.0)
    mask = np.zeros(image.shape, dtype=bool)
    mask[r0:r1, c0:c1] = blob_mask[crop] & inside
    if not mask.any():
        return nothing
    return Anomaly(image01=result, mask=mask, injected=True)
