"""Per-slice labels of a scan from its lesion and organ masks (``coinseg prepare``).

A plane (slice along the scan's superior-inferior axis) is

* abnormal (1) when it holds at least ``min_lesion_mm2`` of lesion (and more than nothing);
* normal (0) when the organ region (organ or lesion voxels) is present and it holds no lesion voxel; without an
  organ mask every plane without lesion is normal;
* excluded (-1) otherwise: a lesion cross-section smaller than ``min_lesion_mm2`` (the cap of a tumour, too
  small to call the slice abnormal, wrong to call it normal), or no organ in the plane.

Default ``min_lesion_mm2 = 25`` mm^2: a 5.6 mm disc, half the 10 mm smallest measurable lesion of RECIST 1.1
(a 10 mm lesion's central cross-section is 79 mm^2). Smaller cross-sections are mostly the first and last
planes of a tumour, blurred by partial volume at 3-5 mm slice thickness, and span only a few pixels at the
paper's 256 px; they are excluded, not called normal, and counted in the log.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

DEFAULT_MIN_LESION_MM2 = 25.0

ABNORMAL, NORMAL, EXCLUDED = 1, 0, -1


def slice_labels(
    n_planes: int,
    region_present: np.ndarray | None,
    lesion_mm2: np.ndarray | None,
    min_lesion_mm2: float,
    volume_label: int | None = None,
) -> tuple[np.ndarray, Counter[str]]:
    """Labels (int8: 1, 0 or -1 = excluded) of ``n_planes`` planes, and the count of each reason.

    ``region_present``: bool per plane, organ or lesion present (None: no organ mask given); ``lesion_mm2``: lesion
    area per plane in mm^2 (None: no lesion mask; then every plane with the region gets ``volume_label``, or 0).
    """
    present = np.ones(n_planes, dtype=bool) if region_present is None else np.asarray(region_present, dtype=bool)
    labels = np.full(n_planes, EXCLUDED, dtype=np.int8)
    if lesion_mm2 is None:
        labels[present] = NORMAL if volume_label is None else volume_label
    else:
        area = np.asarray(lesion_mm2, dtype=np.float64)
        labels[(area > 0) & (area >= min_lesion_mm2)] = ABNORMAL
        labels[present & (area == 0)] = NORMAL
    excluded = labels == EXCLUDED
    small = excluded & (np.asarray(lesion_mm2) > 0) if lesion_mm2 is not None else np.zeros(n_planes, dtype=bool)
    reasons: Counter[str] = Counter()
    reasons["abnormal"] = int((labels == ABNORMAL).sum())
    reasons["normal"] = int((labels == NORMAL).sum())
    reasons["excluded: lesion below --min-lesion-mm2"] = int(small.sum())
    reasons["excluded: no organ in the slice"] = int((excluded & ~small).sum())
    return labels, reasons
