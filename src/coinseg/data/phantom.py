"""Procedural 2-D axial abdominal CT slices at kidney level (the built-in demo data).

Image convention (radiological, patient supine): row 0 is anterior, the last row posterior; the image's left
is the patient's right (liver, IVC), the image's right the patient's left (spleen, aorta).

Geometry is drawn in normalised coordinates ``u`` (columns) and ``v`` (rows), both in (-1, 1) over the image,
so the anatomy scales with ``size``; one unit is ``size / 2`` pixels. Every structure is an ellipse (the body
a perturbed super-ellipse) painted in order, later ones on top. Intensities are Hounsfield units (HU), drawn
per slice around typical contrast-enhanced values, then blurred (partial volume), textured and noised.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

AIR_HU = -1000.0


@dataclass(frozen=True)
class Phantom:
    """One synthetic slice.

    ``hu``: float32, (size, size), Hounsfield units (air -1000, fat about -100, soft tissue 40-200, bone up to
    about 800). ``kidney``: bool, (size, size), both kidneys (cortex + medulla, renal sinus excluded).
    ``body``: bool, (size, size), everything inside the skin.
    """

    hu: np.ndarray
    kidney: np.ndarray
    body: np.ndarray


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised pixel-centre coordinates ``(u, v)``, float32, (size, size), in (-1, 1); read-only."""
    axis = ((np.arange(size, dtype=np.float32) + 0.5) - size / 2) / (size / 2)
    v, u = np.meshgrid(axis, axis, indexing="ij")
    u.setflags(write=False)
    v.setflags(write=False)
    return u, v


class _Canvas:
    """An HU image plus the coordinate grid and the slice's pose (centre shift and in-plane rotation)."""

    def __init__(self, size: int, centre: tuple[float, float], angle: float) -> None:
        self.u, self.v = _grid(size)
        self.hu = np.full((size, size), AIR_HU, dtype=np.float32)
        self.centre = centre
        self.angle = angle
        self._cos, self._sin = np.cos(angle), np.sin(angle)

    def place(self, du: float, dv: float) -> tuple[float, float]:
        """Image position of the body-relative offset ``(du, dv)`` (normalised units, rotated with the body)."""
        return (
            self.centre[0] + self._cos * du - self._sin * dv,
            self.centre[1] + self._sin * du + self._cos * dv,
        )

    def local(
        self, du: float, dv: float, angle: float = 0.0, reach: float | None = None
    ) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
        """Coordinates in the frame of a structure at body offset ``(du, dv)`` turned by ``angle`` (rad).

        Returns ``(window, x, y)``: the grid is cut to the square ``window`` within ``reach`` normalised units
        of the centre (the whole grid when ``reach`` is None), so small structures cost little.
        """
        cu, cv = self.place(du, dv)
        size = self.u.shape[0]
        if reach is None:
            window = (slice(0, size), slice(0, size))
        else:

            def span(centre: float) -> slice:
                lo = int(np.floor((centre - reach + 1) * size / 2))
                hi = int(np.ceil((centre + reach + 1) * size / 2)) + 1
                return slice(min(max(lo, 0), size), min(max(hi, 0), size))

            window = (span(cv), span(cu))
        c, s = np.float32(np.cos(self.angle + angle)), np.float32(np.sin(self.angle + angle))
        x, y = self.u[window] - np.float32(cu), self.v[window] - np.float32(cv)
        return window, c * x + s * y, c * y - s * x

    def full(self, window: tuple[slice, slice], crop: np.ndarray) -> np.ndarray:
        """A full-size bool mask that is ``crop`` inside ``window`` and False elsewhere."""
        mask = np.zeros(self.u.shape, dtype=bool)
        mask[window] = crop
        return mask

    def ellipse(self, du: float, dv: float, ru: float, rv: float, angle: float = 0.0) -> np.ndarray:
        """Bool mask of an ellipse centred at body offset ``(du, dv)`` with semi-axes ``(ru, rv)``."""
        window, x, y = self.local(du, dv, angle, reach=max(ru, rv))
        return self.full(window, (x / ru) ** 2 + (y / rv) ** 2 <= 1.0)

    def paint(self, mask: np.ndarray, value: float) -> None:
        self.hu[mask] = value


def make_phantom(size: int, rng: np.random.Generator) -> Phantom:
    """Draw one abdominal CT slice at kidney level.

    ``size``: image side in pixels (64..512 work). At 128 a kidney's bounding box is typically 20-28 px wide
    and 24-33 px tall (5th-95th percentile), over 400 px in area in about 97 % of kidneys, so the paper's
    20 x 20 blob fits. ``rng``: the only source of randomness (same state, same slice). Shapes, sizes,
    positions, rotations and intensities of all structures vary between slices; about one slice in eight has
    one smaller kidney.
    Returns a :class:`Phantom` (HU float32 image and bool kidney and body masks, all ``(size, size)``).
    """
    if size < 16:
        raise ValueError(f"size: must be >= 16, got {size}")
    px = size / 2  # pixels per normalised unit
    canvas = _Canvas(
        size,
        centre=(rng.uniform(-0.04, 0.04), rng.uniform(0.0, 0.08)),
        angle=np.deg2rad(rng.uniform(-7.0, 7.0)),
    )

    body, interior, cavity = _body(canvas, rng, px)
    _viscera(canvas, rng, cavity)
    bone = _spine_and_muscles(canvas, rng, interior)
    vessels = _vessels(canvas, rng)
    kidney = _kidneys(canvas, rng, cavity & ~bone & ~vessels)

    hu = canvas.hu
    # Partial-volume blur, tissue texture inside the body, scanner noise everywhere.
    hu = ndimage.gaussian_filter(hu, sigma=max(0.35, 0.6 * px / 64))
    sigma_tex = 1.5 * px / 64
    texture = ndimage.gaussian_filter(rng.standard_normal((size, size), dtype=np.float32), sigma_tex)
    texture *= np.float32(2 * np.sqrt(np.pi) * sigma_tex * rng.uniform(10.0, 20.0))  # unit std -> HU
    hu += texture * body
    hu += rng.standard_normal((size, size), dtype=np.float32) * np.float32(rng.uniform(10.0, 15.0))
    np.clip(hu, -1024.0, 3071.0, out=hu)
    return Phantom(hu=hu.astype(np.float32, copy=False), kidney=kidney, body=body)


def _body(canvas: _Canvas, rng: np.random.Generator, px: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paint skin, subcutaneous fat, the muscle wall and the visceral fat of the abdominal cavity.

    Returns bool masks: the body, the interior (inside the subcutaneous fat) and the cavity (inside the
    muscle wall).
    """
    ax, ay = rng.uniform(0.80, 0.93), rng.uniform(0.58, 0.70)
    power = rng.uniform(2.2, 3.0)
    _, x, y = canvas.local(0.0, 0.0)
    radius = (np.abs(x / ax) ** power + np.abs(y / ay) ** power) ** (1 / power)  # super-ellipse "radius"
    theta = np.arctan2(y / ay, x / ax)
    outline = np.ones_like(radius)
    for k in range(2, 6):
        outline += rng.uniform(0.0, 0.02) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))

    skin = max(0.012, 1.2 / px)
    fat = rng.uniform(0.04, 0.13) * (1 + rng.uniform(0.2, 0.6) * np.cos(theta - rng.uniform(0, 2 * np.pi)))
    muscle = rng.uniform(0.04, 0.07) * (1 + 0.3 * np.cos(2 * theta))
    body = radius <= outline
    interior = radius <= outline - skin - fat
    cavity = radius <= outline - skin - fat - muscle

    canvas.paint(body, rng.uniform(10.0, 50.0))
    canvas.paint(radius <= outline - skin, rng.uniform(-120.0, -85.0))
    canvas.paint(interior, rng.uniform(40.0, 60.0))
    canvas.paint(cavity, rng.uniform(-110.0, -80.0))
    return body, interior, cavity


def _viscera(canvas: _Canvas, rng: np.random.Generator, cavity: np.ndarray) -> None:
    """Liver (with an occasional gall bladder), spleen and bowel loops with gas pockets and fluid."""
    if rng.random() < 0.9:
        du, dv = rng.uniform(-0.48, -0.36), rng.uniform(-0.12, 0.02)
        liver = canvas.ellipse(du, dv, rng.uniform(0.26, 0.38), rng.uniform(0.28, 0.40), rng.uniform(-0.4, 0.4))
        canvas.paint(liver & cavity, rng.uniform(60.0, 100.0))
        if rng.random() < 0.3:
            gall = canvas.ellipse(du + 0.15, dv - 0.12, rng.uniform(0.05, 0.08), rng.uniform(0.04, 0.06))
            canvas.paint(gall & liver & cavity, rng.uniform(0.0, 20.0))
    if rng.random() < 0.65:
        spleen = canvas.ellipse(
            rng.uniform(0.48, 0.58),
            rng.uniform(0.02, 0.16),
            rng.uniform(0.11, 0.16),
            rng.uniform(0.17, 0.25),
            rng.uniform(-0.6, 0.2),
        )
        canvas.paint(spleen & cavity, rng.uniform(85.0, 115.0))

    for _ in range(rng.integers(5, 13)):
        du, dv = rng.uniform(-0.55, 0.6), rng.uniform(-0.55, 0.05)
        ru = rng.uniform(0.05, 0.12)
        rv = ru * rng.uniform(0.7, 1.3)
        angle = rng.uniform(-np.pi, np.pi)
        window, x, y = canvas.local(du, dv, angle, reach=max(ru, rv))
        r2 = (x / ru) ** 2 + (y / rv) ** 2
        wall = max(0.15, 0.02 / min(ru, rv))  # relative wall thickness, at least ~0.02 units
        loop = canvas.full(window, r2 <= 1.0) & cavity
        lumen = canvas.full(window, r2 <= (1 - wall) ** 2) & cavity
        canvas.paint(loop, rng.uniform(30.0, 50.0))
        kind = rng.random()
        if kind < 0.3:  # gas
            canvas.paint(lumen, AIR_HU)
        elif kind < 0.7:  # fluid or soft contents
            canvas.paint(lumen, rng.uniform(-20.0, 30.0))
        else:  # air-fluid level: gas rises anteriorly (to the top of the image)
            canvas.paint(lumen, rng.uniform(0.0, 30.0))
            level = canvas.place(du, dv)[1] + rng.uniform(-0.5, 0.3) * rv
            canvas.paint(lumen & (canvas.v < level), AIR_HU)


def _spine_and_muscles(canvas: _Canvas, rng: np.random.Generator, interior: np.ndarray) -> np.ndarray:
    """Psoas, quadratus lumborum and paraspinal muscles; vertebra with spinal canal. Returns the bone mask."""
    muscle_hu = rng.uniform(40.0, 60.0)
    vb_v = rng.uniform(0.22, 0.30)  # vertebral body centre (below the body centre)
    vb_ru, vb_rv = rng.uniform(0.12, 0.14), rng.uniform(0.10, 0.12)
    canal_v = vb_v + vb_rv + rng.uniform(0.04, 0.05)
    for side in (-1, 1):
        psoas = canvas.ellipse(side * 0.17, vb_v - 0.02, rng.uniform(0.05, 0.07), rng.uniform(0.06, 0.08))
        quadratus = canvas.ellipse(side * 0.29, vb_v + 0.13, rng.uniform(0.06, 0.08), rng.uniform(0.04, 0.05))
        paraspinal = canvas.ellipse(
            side * 0.14, canal_v + 0.06, rng.uniform(0.11, 0.13), rng.uniform(0.10, 0.12), side * 0.2
        )
        canvas.paint((psoas | quadratus | paraspinal) & interior, muscle_hu)

    cortical, cancellous = rng.uniform(600.0, 800.0), rng.uniform(200.0, 300.0)
    shell = max(0.02, 1.0 / (canvas.u.shape[0] / 2))
    vertebral_body = canvas.ellipse(0.0, vb_v, vb_ru, vb_rv)
    arch = canvas.ellipse(0.0, canal_v, 0.085, 0.075)
    spinous = canvas.ellipse(0.0, canal_v + 0.11, 0.022, 0.06)
    transverse = canvas.ellipse(-0.1, canal_v - 0.02, 0.06, 0.02, -0.3) | canvas.ellipse(
        0.1, canal_v - 0.02, 0.06, 0.02, 0.3
    )
    bone = (vertebral_body | arch | spinous | transverse) & interior
    canvas.paint(bone, cortical)
    canvas.paint(canvas.ellipse(0.0, vb_v, vb_ru - shell, vb_rv - shell) & interior, cancellous)
    canvas.paint(canvas.ellipse(0.0, canal_v, 0.048, 0.042) & interior, rng.uniform(0.0, 20.0))
    return bone


def _vessels(canvas: _Canvas, rng: np.random.Generator) -> np.ndarray:
    """Aorta (patient's left, contrast) and IVC (patient's right), in front of the spine. Returns their mask."""
    top = 0.16  # just in front of the vertebral body
    r_ao = rng.uniform(0.055, 0.075)
    aorta = canvas.ellipse(rng.uniform(0.03, 0.08), top - r_ao, r_ao, r_ao)
    ivc = canvas.ellipse(rng.uniform(-0.15, -0.10), top - 0.05, rng.uniform(0.06, 0.08), rng.uniform(0.035, 0.05))
    canvas.paint(aorta, rng.uniform(140.0, 220.0))
    canvas.paint(ivc, rng.uniform(100.0, 170.0))
    return aorta | ivc


def _kidneys(canvas: _Canvas, rng: np.random.Generator, allowed: np.ndarray) -> np.ndarray:
    """Two bean-shaped kidneys (cortex, medullary pyramids, renal sinus fat at the hilum); returns their mask."""
    # Nephrographic-like phase: little cortico-medullary contrast, so that the kidney fingerprint window centres
    # the parenchyma and a +0.9 synthetic lesion is not lost to clipping at the top of the window.
    cortex_hu = rng.uniform(150.0, 180.0)
    medulla_hu = cortex_hu - rng.uniform(15.0, 35.0)
    small = rng.integers(2) if rng.random() < 0.12 else -1  # index of a smaller kidney, if any
    kidneys = np.zeros_like(allowed)
    for index, side in enumerate((-1, 1)):  # image left (patient right), image right
        scale = rng.uniform(0.7, 0.85) if index == small else 1.0
        ru, rv = scale * rng.uniform(0.145, 0.19), scale * rng.uniform(0.21, 0.29)
        angle = -side * np.deg2rad(rng.uniform(15.0, 45.0))  # long axis: posteromedial to anterolateral
        du, dv = side * rng.uniform(0.33, 0.40), rng.uniform(0.20, 0.30)
        window, x, y = canvas.local(du, dv, angle, reach=max(ru, rv))
        xn, yn = x / ru, y / rv
        r2 = xn**2 + yn**2
        hilum = -side * xn  # > 0 towards the hilum (anteromedial)
        sinus = ((hilum - 0.95) / 0.45) ** 2 + (yn / 0.35) ** 2 <= 1.0
        rho, phi = np.sqrt(r2), np.arctan2(yn, xn)
        pyramids = (rho > 0.35) & (rho < 0.72) & (np.cos(rng.integers(4, 7) * phi + rng.uniform(0, 6.3)) > 0)
        outline = canvas.full(window, r2 <= 1.0) & allowed
        kidney = outline & ~canvas.full(window, sinus)
        canvas.paint(outline & ~kidney, rng.uniform(-100.0, -60.0))
        canvas.paint(kidney, cortex_hu)
        canvas.paint(kidney & canvas.full(window, pyramids), medulla_hu)
        kidneys |= kidney
    return kidneys
