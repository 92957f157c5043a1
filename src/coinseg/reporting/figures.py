"""Figures: mask overlays, Figure-2-style comparison grids, training samples and progress curves.

Everything uses matplotlib's object-oriented ``Figure`` API with the Agg canvas, so no global pyplot state
is touched. Every file is written atomically (:func:`coinseg.io.files.atomic_file`).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.ndimage import binary_erosion

from coinseg.io.files import atomic_file

DPI = 100
MAX_WIDTH_PX = 2000
ALPHA = 0.5
TP_COLOUR = (0, 200, 0)  # green
FP_COLOUR = (230, 0, 0)  # red
FN_COLOUR = (255, 220, 0)  # yellow
GT_CONTOUR_COLOUR = (0, 255, 255)  # cyan


def _save_png(fig: Figure, path: Path) -> Path:
    path = Path(path)
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    with atomic_file(path) as tmp:
        tmp.write_bytes(buf.getvalue())
    return path


def _clear_axis(ax: Axes) -> None:
    """No ticks and no frame, but keep the y-label (used as a row label)."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def overlay(image: np.ndarray, pred: np.ndarray, gt: np.ndarray | None, outline: bool = True) -> np.ndarray:
    """Colour a predicted mask against the ground truth on a grey image.

    ``image`` is HxW in [0, 1] (clipped); ``pred`` and ``gt`` are boolean HxW. True positives are blended
    green, false positives red, false negatives yellow (alpha 0.5); without ``gt`` the whole prediction is
    drawn red. When ``gt`` is given and ``outline`` is true, the 1-pixel boundary of ``gt`` is drawn in cyan
    on top. Returns HxWx3 uint8.
    """
    image = np.asarray(image, dtype=np.float64)
    pred = np.asarray(pred, dtype=bool)
    if image.ndim != 2 or pred.shape != image.shape:
        raise ValueError(f"overlay: image must be HxW and pred the same shape, got {image.shape}, {pred.shape}")
    grey = np.clip(np.nan_to_num(image), 0.0, 1.0) * 255.0
    out = np.repeat(grey[..., None], 3, axis=-1)

    if gt is None:
        gt_mask = None
        classes = [(pred, FP_COLOUR)]
    else:
        gt_mask = np.asarray(gt, dtype=bool)
        if gt_mask.shape != image.shape:
            raise ValueError(f"overlay: gt shape {gt_mask.shape} differs from image shape {image.shape}")
        classes = [(pred & gt_mask, TP_COLOUR), (pred & ~gt_mask, FP_COLOUR), (~pred & gt_mask, FN_COLOUR)]

    for mask, colour in classes:
        out[mask] = (1.0 - ALPHA) * out[mask] + ALPHA * np.asarray(colour, dtype=np.float64)

    if gt_mask is not None and outline:
        out[_boundary(gt_mask)] = GT_CONTOUR_COLOUR

    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _boundary(mask: np.ndarray) -> np.ndarray:
    """The 1-pixel inner boundary of a boolean mask."""
    return mask & ~binary_erosion(mask)


def _outlined(image: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """The grey image with only the ground-truth contour drawn (no fill), HxWx3 uint8."""
    out = overlay(image, np.zeros(np.shape(image), dtype=bool), None)
    out[_boundary(np.asarray(gt, dtype=bool))] = GT_CONTOUR_COLOUR
    return out


def comparison_grid(
    images: list[np.ndarray],
    gts: list[np.ndarray],
    rows: dict[str, list[np.ndarray]],
    path: Path,
    maps: dict[str, list[np.ndarray]] | None = None,
    title: str | None = None,
) -> Path:
    """Figure-2-style grid: columns are slices; first row the inputs with the ground truth outlined, then per
    method an optional row of its continuous map (``maps[name]``, in [0, 1], hot colormap) followed by a row
    of ``overlay(image, pred, gt)``. Returns ``path``.
    """
    n = len(images)
    if n == 0:
        raise ValueError("comparison_grid: no images")
    maps = maps or {}
    if len(gts) != n:
        raise ValueError(f"comparison_grid: {len(gts)} ground truths for {n} images")
    for name, seq in [*rows.items(), *maps.items()]:
        if len(seq) != n:
            raise ValueError(f"comparison_grid: method {name!r} has {len(seq)} entries for {n} images")
    unknown = set(maps) - set(rows)
    if unknown:
        raise ValueError(f"comparison_grid: maps given for methods without masks: {sorted(unknown)}")

    # (label, kind, data) per row; kind is "input", "map" or "mask"
    layout: list[tuple[str, str, list[np.ndarray]]] = [("input", "input", list(gts))]
    for name, preds in rows.items():
        if name in maps:
            layout.append((f"{name} map", "map", maps[name]))
        layout.append((name, "mask", preds))

    label_in = 1.0
    cell_in = min(1.6, (MAX_WIDTH_PX / DPI - label_in) / n)
    title_in = 0.4 if title else 0.0
    fig = Figure(figsize=(label_in + cell_in * n, cell_in * len(layout) + title_in), dpi=DPI)
    axes = fig.subplots(len(layout), n, squeeze=False)
    fig.subplots_adjust(
        left=label_in / fig.get_figwidth(),
        right=0.995,
        bottom=0.005,
        top=1.0 - (title_in + 0.02) / fig.get_figheight(),
        wspace=0.03,
        hspace=0.03,
    )
    if title:
        fig.suptitle(title, fontsize=10)

    for r, (label, kind, data) in enumerate(layout):
        for c in range(n):
            ax = axes[r, c]
            if kind == "input":
                ax.imshow(_outlined(images[c], data[c]), interpolation="nearest")
            elif kind == "map":
                ax.imshow(np.asarray(data[c], dtype=np.float64), cmap="hot", vmin=0.0, vmax=1.0)
            else:
                ax.imshow(overlay(images[c], data[c], gts[c]), interpolation="nearest")
            _clear_axis(ax)
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    return _save_png(fig, path)


def sample_grid(x: np.ndarray, x_cf: np.ndarray, path: Path) -> Path:
    """Training samples: rows x, x_cf (both N x H x W in [-1, 1]) and |x - x_cf| / 2 (hot, 0..1); at most 8
    columns. A singleton channel axis (N x 1 x H x W) is accepted. Returns ``path``.
    """
    x = np.asarray(x, dtype=np.float64)
    x_cf = np.asarray(x_cf, dtype=np.float64)
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x_cf.ndim == 4 and x_cf.shape[1] == 1:
        x_cf = x_cf[:, 0]
    if x.ndim != 3 or x.shape != x_cf.shape or len(x) == 0:
        raise ValueError(f"sample_grid: x and x_cf must both be N x H x W (N>0), got {x.shape}, {x_cf.shape}")
    x, x_cf = x[:8], x_cf[:8]
    n = len(x)
    layout = [
        ("x", (x + 1.0) / 2.0, "gray"),
        ("x_cf", (x_cf + 1.0) / 2.0, "gray"),
        ("|x - x_cf| / 2", np.abs(x - x_cf) / 2.0, "hot"),
    ]
    cell_in = 1.6
    label_in = 1.0
    fig = Figure(figsize=(label_in + cell_in * n, cell_in * len(layout)), dpi=DPI)
    axes = fig.subplots(len(layout), n, squeeze=False)
    fig.subplots_adjust(
        left=label_in / fig.get_figwidth(), right=0.995, bottom=0.005, top=0.995, wspace=0.03, hspace=0.03
    )
    for r, (label, data, cmap) in enumerate(layout):
        for c in range(n):
            axes[r, c].imshow(data[c], cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
            _clear_axis(axes[r, c])
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    return _save_png(fig, path)


def _parse_float(cell: str | None) -> float | None:
    """None for an empty cell; raises ValueError for a non-numeric one."""
    if cell is None or cell.strip() == "":
        return None
    return float(cell)


def _read_curves(metrics_csv: Path) -> dict[str, tuple[list[float], list[float]]]:
    """Numeric, non-empty columns of a CSV with a ``step`` column, as {column: (steps, values)}."""
    with open(metrics_csv, newline="") as f:
        reader = csv.DictReader(f)
        fields = list(reader.fieldnames or [])
        records = list(reader)
    if "step" not in fields:
        raise ValueError(f"{metrics_csv}: no 'step' column (columns: {fields})")

    curves: dict[str, tuple[list[float], list[float]]] = {}
    for column in fields:
        if column == "step":
            continue
        steps: list[float] = []
        values: list[float] = []
        try:
            for record in records:
                value = _parse_float(record.get(column))
                step = _parse_float(record.get("step"))
                if value is not None and step is not None:
                    steps.append(step)
                    values.append(value)
        except ValueError:
            continue  # a non-numeric column
        if values:
            curves[column] = (steps, values)
    return curves


def progress_plot(metrics_csv: Path, path: Path) -> Path:
    """One small subplot per numeric column of ``metrics_csv`` against ``step``. Empty cells are skipped,
    empty and non-numeric columns are left out; with nothing to plot the PNG says so. Returns ``path``.
    """
    curves = _read_curves(Path(metrics_csv))
    n = len(curves)
    ncols = min(3, max(n, 1))
    nrows = max(1, math.ceil(n / ncols))
    fig = Figure(figsize=(3.4 * ncols, 2.4 * nrows), dpi=DPI, layout="constrained")
    if n == 0:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no numeric metrics yet", ha="center", va="center")
        ax.set_axis_off()
        return _save_png(fig, path)

    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (column, (steps, values)) in zip(axes, curves.items(), strict=False):
        marker = "o" if len(values) < 30 else None
        ax.plot(steps, values, marker=marker, markersize=3, linewidth=1)
        ax.set_title(column, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[n:]:
        ax.set_axis_off()
    return _save_png(fig, path)
