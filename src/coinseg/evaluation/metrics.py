"""Evaluation metrics for counterfactual lesion segmentation (pure numpy).

Conventions
-----------
* Images are in [-1, 1]; difference maps are in [0, 1].
* Masks are boolean ``H x W`` arrays.
* Segmentation is scored on ground-truth-abnormal slices (pooled and per-slice IoU/Dice); normal slices only
  count false-positive detections (see :class:`SegmentationTally`).
* Functions whose value is undefined for the given input (no positives, no eligible slices, ...) return
  ``None`` rather than a number, so that an undefined metric is never mistaken for 0.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import scipy.ndimage as ndi
import scipy.stats
import torch

from coinseg.config import MaskExtent

_SQUARE_3x3 = np.ones((3, 3), dtype=bool)
ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def difference_map(x: ArrayT, x_cf: ArrayT) -> ArrayT:
    """Absolute difference between an image and its counterfactual on the [0, 1] scale.

    Args:
        x: image(s) in [-1, 1], any shape: a float numpy array or a torch tensor (kept on its device).
        x_cf: counterfactual(s), same type, shape and range as ``x``.

    Returns:
        ``|x - x_cf| / 2`` of the same type and shape, in [0, 1].
    """
    if x.shape != x_cf.shape:
        raise ValueError(f"shape mismatch: {tuple(x.shape)} vs {tuple(x_cf.shape)}")
    return abs(x - x_cf) / 2.0


def lesion_mask(diff: np.ndarray, cut: float, extent: MaskExtent | str = MaskExtent.half_peak) -> np.ndarray:
    """The lesion mask of one 2-D difference map.

    The threshold finds the lesions: each 4-connected component of ``diff > cut`` is one. With ``threshold``
    extent, those pixels are the mask (the paper's rule). With ``half-peak`` extent, each lesion reaches to half
    its own peak change P (where a blurred lesion's edge lies), but below ``cut`` only by as much as P exceeds
    it, to ``low = max(P / 2, 2 * cut - P)``: a lesion at twice ``cut`` or more keeps its pixels >= P / 2, one
    below that becomes the 4-connected region of ``diff >= low`` around it (one just above ``cut`` keeps what is
    above it). A slice has a mask pixel exactly when it has one by threshold.

    Args:
        diff: ``H x W`` map |x - x_cf| / 2, values in [0, 1].
        cut: the threshold, in [0, 1).
        extent: :class:`~coinseg.config.MaskExtent` (or its value).

    Returns:
        Boolean ``H x W`` mask.
    """
    core = diff > cut
    if MaskExtent(extent) is MaskExtent.threshold:
        return core
    labels, n = ndi.label(core)
    if n == 0:
        return core
    index = np.arange(1, n + 1)
    peaks = ndi.maximum(diff, labels, index)
    tops = ndi.maximum_position(diff, labels, index)
    lows = np.maximum(peaks / 2, 2 * cut - peaks)
    mask = core & (diff >= np.concatenate([[0.0], lows])[labels])  # each lesion's pixels down to its own low
    # Lesions with low < cut grow below it. Lowest first: a lesion whose peak lies in a region grown already lies
    # in it whole (that region reaches lower). Each region lies in one part of diff >= min(lows): label only there.
    support, _ = ndi.label(diff >= lows.min())
    boxes = ndi.find_objects(support)
    grown = np.zeros_like(core)
    for k in np.argsort(lows, kind="stable"):
        if lows[k] >= cut:
            break
        if grown[tops[k]]:
            continue
        box = boxes[support[tops[k]] - 1]
        region, _ = ndi.label(diff[box] >= lows[k])
        top = tuple(t - b.start for t, b in zip(tops[k], box, strict=True))
        grown[box] |= region == region[top]
    return mask | grown


def _erode(mask: np.ndarray) -> np.ndarray:
    # Pixels outside the image count as foreground (OpenCV's default border for erosion),
    # so objects touching the border are not eaten away.
    return ndi.binary_erosion(mask, structure=_SQUARE_3x3, border_value=1)


def _dilate(mask: np.ndarray) -> np.ndarray:
    return ndi.binary_dilation(mask, structure=_SQUARE_3x3, border_value=0)


def postprocess(mask: np.ndarray) -> np.ndarray:
    """Clean a binary mask as in the reference evaluation.

    3x3 binary opening, then 3x3 closing (both with OpenCV border semantics: the image border neither erodes
    nor grows objects), then keep only the largest 8-connected component (ties: the first in raster order).

    Args:
        mask: boolean ``H x W`` mask.

    Returns:
        Boolean ``H x W`` mask. An empty mask (or one emptied by the opening) is returned empty.
    """
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {m.shape}")
    m = _dilate(_erode(m))  # opening
    m = _erode(_dilate(m))  # closing
    labels, n = ndi.label(m, structure=_SQUARE_3x3)
    if n == 0:
        return np.zeros_like(m)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0  # background
    return labels == int(np.argmax(sizes))


class SegmentationTally:
    """Accumulates segmentation scores slice by slice.

    Abnormal slices (ground-truth label 1) contribute pooled confusion counts (TP, FP, FN) and per-slice IoU
    and Dice. Normal slices contribute only whether any pixel was predicted (a false-positive detection).

    Empty-mask conventions (per-slice): if both prediction and ground truth are empty, IoU = Dice = 1.0; if
    only one of them is empty, IoU = Dice = 0.0.
    """

    def __init__(self) -> None:
        self.tp = 0
        self.fp = 0
        self.fn = 0
        self.ious: list[float] = []
        self.dices: list[float] = []
        self.n_normal = 0
        self.n_normal_positive = 0

    def add(self, pred: np.ndarray, gt: np.ndarray, abnormal: bool) -> None:
        """Add one slice.

        Args:
            pred: boolean ``H x W`` predicted mask.
            gt: boolean ``H x W`` ground-truth mask (ignored for normal slices except for the shape check).
            abnormal: ground-truth slice label.
        """
        p = np.asarray(pred, dtype=bool)
        g = np.asarray(gt, dtype=bool)
        if p.shape != g.shape:
            raise ValueError(f"shape mismatch: pred {p.shape} vs gt {g.shape}")
        if not abnormal:
            self.n_normal += 1
            self.n_normal_positive += int(p.any())
            return
        tp = int(np.count_nonzero(p & g))
        fp = int(np.count_nonzero(p & ~g))
        fn = int(np.count_nonzero(~p & g))
        self.tp += tp
        self.fp += fp
        self.fn += fn
        union = tp + fp + fn
        self.ious.append(tp / union if union else 1.0)
        self.dices.append(2 * tp / (2 * tp + fp + fn) if union else 1.0)

    def summary(self) -> dict[str, float | int | None]:
        """Return the scores.

        Returns:
            dict with ``pooled_iou`` (ΣTP / (ΣTP + ΣFP + ΣFN) over abnormal slices; None if that union is 0),
            ``mean_iou`` and ``mean_dice`` (per-slice means; None without abnormal slices), ``normal_fp_rate``
            (fraction of normal slices with any predicted pixel; None without normal slices), ``n_abnormal``,
            ``n_normal``.
        """
        union = self.tp + self.fp + self.fn
        n_abn = len(self.ious)
        return {
            "pooled_iou": self.tp / union if union else None,
            "mean_iou": float(np.mean(self.ious)) if n_abn else None,
            "mean_dice": float(np.mean(self.dices)) if n_abn else None,
            "normal_fp_rate": self.n_normal_positive / self.n_normal if self.n_normal else None,
            "n_abnormal": n_abn,
            "n_normal": self.n_normal,
        }


POLARITIES = ("brighter", "darker")


def lesion_polarity(image: np.ndarray, truth: np.ndarray, ring_px: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """The lesions of one slice and whether each is darker than what surrounds it.

    Args:
        image: ``H x W`` slice in any intensity unit (HU or grey values).
        truth: boolean ``H x W`` ground-truth mask.
        ring_px: width in pixels of the ring around a lesion (outside every lesion) it is compared with.

    Returns:
        ``(labels, darker)``: int32 ``H x W`` labels of the 8-connected lesions (0 = background, 1..n) and a bool
        array of n: the lesion's mean intensity is below its ring's (a lesion with no ring, filling the slice,
        counts as brighter).
    """
    t = np.asarray(truth, dtype=bool)
    labels, n = ndi.label(t, structure=np.ones((3, 3), bool))
    darker = np.zeros(n, dtype=bool)
    for k, box in enumerate(ndi.find_objects(labels), start=1):
        # the lesion's bounding box grown by the ring: the dilation never reaches past it
        box = tuple(slice(max(b.start - ring_px, 0), b.stop + ring_px) for b in box)
        lesion = labels[box] == k
        ring = ndi.binary_dilation(lesion, iterations=ring_px) & ~t[box]
        if ring.any():
            darker[k - 1] = float(image[box][lesion].mean()) < float(image[box][ring].mean())
    return labels.astype(np.int32, copy=False), darker


class LesionTally:
    """Lesions detected on abnormal slices, counted apart for lesions brighter and darker than their surroundings
    (:func:`lesion_polarity`). A lesion is *detected* when any pixel of it is predicted, the rule of
    :func:`coinseg.evaluation.volume.lesion_detection`: a weak mask's extent follows its threshold, and whether it
    reaches a lesion at all is what this count asks. A method that finds one polarity only (a counterfactual
    that brightens no dark lesion) shows here while its pooled IoU only looks low."""

    def __init__(self) -> None:
        self.n = dict.fromkeys(POLARITIES, 0)
        self.detected = dict.fromkeys(POLARITIES, 0)

    def add(self, pred: np.ndarray, labels: np.ndarray, darker: np.ndarray) -> None:
        """One slice: boolean ``H x W`` ``pred`` and its ``(labels, darker)`` from :func:`lesion_polarity`."""
        hit = np.bincount(labels[np.asarray(pred, dtype=bool)].ravel(), minlength=len(darker) + 1)[1:] > 0
        for polarity, chosen in zip(POLARITIES, (~darker, darker), strict=True):
            self.n[polarity] += int(chosen.sum())
            self.detected[polarity] += int((hit & chosen).sum())

    def summary(self) -> dict[str, int | float | None]:
        """Per polarity ``P`` in :data:`POLARITIES`: ``lesions_P`` (count), ``detected_P`` and
        ``lesion_sensitivity_P`` = detected / lesions (None without lesions of that polarity)."""
        out: dict[str, int | float | None] = {}
        for p in POLARITIES:
            n, hit = self.n[p], self.detected[p]
            out.update({f"lesions_{p}": n, f"detected_{p}": hit, f"lesion_sensitivity_{p}": hit / n if n else None})
        return out


ONE_POLARITY_RATIO = 5.0  # one polarity's lesions found this many times more often than the other's
ONE_POLARITY_MIN_LESIONS = 10  # of each polarity, so that a handful of lesions raises nothing


def polarity_warning(summary: dict[str, int | float | None]) -> str | None:
    """A one-line note when a method finds lesions of one polarity far more often than of the other (a
    :meth:`LesionTally.summary`): with at least ``ONE_POLARITY_MIN_LESIONS`` lesions of each polarity, one
    sensitivity at least 0.2 and ``ONE_POLARITY_RATIO`` times the other. None otherwise."""
    hits = {p: int(summary[f"detected_{p}"] or 0) for p in POLARITIES}
    totals = {p: int(summary[f"lesions_{p}"] or 0) for p in POLARITIES}
    if min(totals.values()) < ONE_POLARITY_MIN_LESIONS:
        return None
    rates = {p: hits[p] / totals[p] for p in POLARITIES}
    high, low = sorted(POLARITIES, key=rates.__getitem__, reverse=True)
    if rates[high] < 0.2 or rates[high] < ONE_POLARITY_RATIO * rates[low]:
        return None
    return (
        f"found {hits[high]} of {totals[high]} lesions {high} than their surroundings but {hits[low]} "
        f"of {totals[low]} {low} ones: the counterfactual removes one polarity only (on the generalization "
        "suite, dark lesions without an organ mask stay, the GAN flipping the classifier by diffuse edits; "
        "benchmarks/RESULTS.md)"
    )


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float | None:
    """Threshold-free pixel average precision (step-wise area under the precision-recall curve).

    ``AP = Σ_n (R_n - R_{n-1}) P_n`` over the distinct score values taken as thresholds in decreasing order
    (pixels with equal scores enter together), as ``sklearn.metrics.average_precision_score``.
    O(n log n) via one argsort, so ~10 M pixels take a second or two.

    Args:
        scores: real-valued scores, any shape (flattened), higher = more lesion-like.
        targets: binary targets, same number of elements.

    Returns:
        AP in [0, 1], or None if there is no positive target.
    """
    s = np.asarray(scores).ravel()
    t = np.asarray(targets).ravel().astype(bool)
    if s.shape != t.shape:
        raise ValueError(f"size mismatch: {s.size} scores vs {t.size} targets")
    n_pos = int(np.count_nonzero(t))
    if n_pos == 0:
        return None
    order = np.argsort(-s)  # order within ties is irrelevant: only the end of each tie group is used
    s = s[order]
    tps = np.cumsum(t[order], dtype=np.int64)
    # last index of every group of equal scores
    ends = np.append(np.flatnonzero(np.diff(s)), s.size - 1)
    tp = tps[ends].astype(np.float64)
    precision = tp / (ends + 1)
    recall = tp / n_pos
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def counterfactual_validity(p: np.ndarray, p_cf: np.ndarray, tau: float = 0.8) -> float | None:
    """Counterfactual validity (CV).

    Args:
        p: classifier probabilities of the original slices, shape N, in [0, 1].
        p_cf: probabilities of their counterfactuals, shape N.
        tau: confidence / required drop.

    Returns:
        Among slices with ``p > tau``, the fraction with ``p - p_cf > tau``; None if no slice has ``p > tau``.
    """
    a = np.asarray(p, dtype=np.float64).ravel()
    b = np.asarray(p_cf, dtype=np.float64).ravel()
    sel = a > tau
    if not sel.any():
        return None
    return float(np.mean((a[sel] - b[sel]) > tau))


def flip_rate(p: np.ndarray, p_cf: np.ndarray) -> float | None:
    """Fraction of predicted-abnormal slices (``p >= 0.5``) whose counterfactual is predicted normal
    (``p_cf < 0.5``); None if no slice has ``p >= 0.5``. Shapes N, values in [0, 1]."""
    a = np.asarray(p, dtype=np.float64).ravel()
    b = np.asarray(p_cf, dtype=np.float64).ravel()
    sel = a >= 0.5
    if not sel.any():
        return None
    return float(np.mean(b[sel] < 0.5))


def auroc_p_value(labels: np.ndarray, probs: np.ndarray) -> float | None:
    """How likely a classifier that cannot tell the classes apart ranks the positives this high: the one-sided
    Mann-Whitney U test's p-value (probs of label 1 greater than those of label 0), in [0, 1]; None if only
    one class is present. ``labels``, ``probs``: shape N, as in :func:`accuracy_auroc`."""
    y = np.asarray(labels).ravel().astype(bool)
    s = np.asarray(probs, dtype=np.float64).ravel()
    if y.all() or not y.any():
        return None
    return float(scipy.stats.mannwhitneyu(s[y], s[~y], alternative="greater").pvalue)


# A classifier whose AUROC is not above chance at this significance (one-sided Mann-Whitney U) is
# reported as at chance: 1 in 100 classifiers that cannot tell the classes apart escapes the warning.
CHANCE_SIGNIFICANCE = 0.01


def chance_warning(
    auroc: float | None, p_value: float | None, n_abnormal: int, n_normal: int, where: str
) -> str | None:
    """A warning line when a classifier's ``auroc`` on ``n_abnormal`` + ``n_normal`` slices is no better than
    chance (its :func:`auroc_p_value` ``p_value`` >= ``CHANCE_SIGNIFICANCE``); None otherwise, or when either is
    None (one class). ``where`` names the slices, e.g. "the validation split"."""
    if auroc is None or p_value is None or p_value < CHANCE_SIGNIFICANCE:
        return None
    return (
        f"warning: the classifier ranks {where}'s abnormal slices above its normal ones no better than chance "
        f"(AUROC {auroc:.3f}, one-sided Mann-Whitney p = {p_value:.2g}, {n_abnormal} abnormal / "
        f"{n_normal} normal slices). COIN removes what the classifier sees, so its masks will be "
        "empty or wrong. Lesions too small or too faint at data.size px are the usual cause: an organ column (the "
        "networks then see the organ, cropped) or a larger data.size (classifier.stem_stride 2 keeps its cost) "
        "enlarges them; lesions no darker or brighter than patches of the organ's normal texture may stay "
        "unseen even at their own pixels (benchmarks/RESULTS.md, Generalization suite)"
    )


def accuracy_auroc(labels: np.ndarray, probs: np.ndarray) -> tuple[float, float | None]:
    """Classification accuracy at 0.5 and AUROC.

    Args:
        labels: binary labels, shape N (N >= 1).
        probs: predicted probabilities of label 1, shape N; predicted label = ``probs >= 0.5``.

    Returns:
        ``(accuracy, auroc)``; AUROC is the Mann-Whitney statistic with average ranks for ties (a tied
        positive/negative pair counts 1/2), or None if only one class is present.
    """
    y = np.asarray(labels).ravel().astype(bool)
    s = np.asarray(probs, dtype=np.float64).ravel()
    if y.shape != s.shape or y.size == 0:
        raise ValueError(f"need equal, non-zero sizes, got {y.size} labels and {s.size} probs")
    accuracy = float(np.mean((s >= 0.5) == y))
    n_pos = int(np.count_nonzero(y))
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return accuracy, None
    ranks = scipy.stats.rankdata(s)  # average ranks for ties
    u = float(np.sum(ranks[y])) - n_pos * (n_pos + 1) / 2.0
    return accuracy, u / (n_pos * n_neg)
