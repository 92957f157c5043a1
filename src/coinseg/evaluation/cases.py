"""Per-scan scoring of slice masks that come from a slice store written by ``coinseg prepare``.

Slice masks (at the stored slice size) are stacked by case in ``slice`` order, pasted back into the source scan's
voxels (:func:`coinseg.data.roi.paste_back`) together with the stored ground truth, and scored per volume
(:func:`coinseg.evaluation.volume.score_volume`: Dice, IoU, lesion-wise detection, lesion ml). Only the slices
being scored count: a case whose slices are spread over several splits (a study of fewer than three cases) is
scored on the slices of the chosen split, the other planes being empty in both prediction and truth.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from coinseg.data.manifest import Entry
from coinseg.data.roi import CaseGeometry, paste_back, paste_back_values
from coinseg.data.store import GEOMETRY, store_folder
from coinseg.evaluation.volume import VolumeScore, remove_small_lesions, score_volume, spacing_from_affine


@dataclass
class CaseMasks:
    """One scan's prediction and truth in its source voxels (bool, ``geometry.source_shape``), its score and the
    store folder it came from."""

    folder: Path
    geometry: CaseGeometry
    pred: np.ndarray
    truth: np.ndarray
    score: VolumeScore

    def ct(self) -> np.ndarray:
        """The stored CT (HU, injected lesions included) pasted into the source grid, -1024 HU elsewhere."""
        stored = np.load(self.folder / "image.npy", mmap_mode="r")
        return paste_back_values(self.geometry, np.asarray(stored, dtype=np.float32), -1024.0)


def score_cases(
    entries: list[Entry],
    masks: list[np.ndarray],
    truths: list[np.ndarray],
    postprocess: bool = False,
    min_lesion_mm3: float = 0.0,
) -> list[CaseMasks]:
    """Score ``masks`` (bool H x W per entry, the stored size) against ``truths`` scan by scan, in case order.
    With ``postprocess`` the pasted prediction keeps only 3-D lesions of at least ``min_lesion_mm3``."""
    groups: dict[Path, list[int]] = {}
    for i, entry in enumerate(entries):
        folder = store_folder(entry)
        if folder is None:
            raise ValueError(f"row {entry.row}: not a slice of a prepared store")
        groups.setdefault(folder, []).append(i)
    out = []
    for folder in sorted(groups):
        geometry = CaseGeometry.from_json(json.loads((folder / GEOMETRY).read_text()))
        shape = (len(geometry.slice_index), *geometry.stored_shape)
        pred, truth = np.zeros(shape, dtype=bool), np.zeros(shape, dtype=bool)
        for i in groups[folder]:
            index = entries[i].slice
            assert index is not None
            pred[index], truth[index] = masks[i], truths[i]
        spacing = spacing_from_affine(geometry.affine)
        pasted, pasted_truth = paste_back(geometry, pred), paste_back(geometry, truth)
        if postprocess:
            pasted = remove_small_lesions(pasted, spacing, min_lesion_mm3)
        score = score_volume(geometry.case, pasted, pasted_truth, spacing)
        out.append(CaseMasks(folder, geometry, pasted, pasted_truth, score))
    return out
