"""benchmarks/organ_parts.py: component rows cut at known positions and their masks pasted back exactly."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
organ_parts = pytest.importorskip("organ_parts")


def _member(folder: Path) -> Path:
    """Two 40 x 60 slices, each with two kidneys (rows 10-19, columns 5-14 and 40-49); slice 0 has a lesion at
    rows 12-13, columns 42-43 (the right kidney), slice 1 none. Slice 0 is the training and test slice."""
    for sub in ("images", "masks", "organs"):
        (folder / sub).mkdir(parents=True)
    organ = np.zeros((40, 60), np.uint8)
    organ[10:20, 5:15] = organ[10:20, 40:50] = 1
    rows = []
    for i, split in enumerate(("test", "train")):
        image = np.where(organ > 0, 30.0, -100.0).astype(np.float32) + i
        lesion = np.zeros((40, 60), np.uint8)
        if i == 0:
            lesion[12:14, 42:44] = 1
            image[lesion > 0] = 90.0
        for sub, array in (("images", image), ("masks", lesion), ("organs", organ)):
            np.save(folder / sub / f"s{i}.npy", array)
        rows.append([f"images/s{i}.npy", int(i == 0), f"masks/s{i}.npy", split, f"organs/s{i}.npy"])
    with (folder / "manifest.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "label", "mask", "split", "organ"])
        writer.writerows(rows)
    return folder


def test_each_kidney_gets_its_square_and_its_mask_goes_back_to_the_slice(tmp_path: Path) -> None:
    data = _member(tmp_path / "member")
    manifest, records = organ_parts.write_parts(data, tmp_path / "parts")
    rows = list(csv.DictReader(manifest.open(newline="")))
    # 10 x 10 components, +10 % on each side: 12 px squares centred on each kidney
    assert [r["image"] for r in rows] == [f"images/s{i}_c{k}.npy" for i in (0, 1) for k in (0, 1)]
    assert [r["label"] for r in rows] == ["1", "1", "0", "0"]  # the slice's label, lesion or not
    boxes = [tuple(int(v) for v in r["box"].strip("[]").split(",")) for r in records]
    assert boxes[:2] == [(9, 4, 12, 12), (9, 39, 12, 12)]
    right = np.load(tmp_path / "parts" / "masks" / "s0_c1.npy")
    assert right.shape == (12, 12) and np.argwhere(right > 0).tolist() == [[3, 3], [3, 4], [4, 3], [4, 4]]
    assert not np.load(tmp_path / "parts" / "masks" / "s0_c0.npy").any()  # the lesion is not the left kidney's
    # segment's output for the test components: the right kidney's lesion found, plus one false pixel in the left
    seg = tmp_path / "seg"
    (seg / "masks").mkdir(parents=True)
    found = (right > 0).astype(np.uint8) * 255
    stray = np.zeros((12, 12), np.uint8)
    stray[0, 0] = 255  # slice pixel (9, 4)
    Image.fromarray(found).save(seg / "masks" / "c1.png")
    Image.fromarray(stray).save(seg / "masks" / "c0.png")
    with (seg / "predictions.csv").open("w", newline="") as handle:
        handle.write("image,prob,mask\nimages/s0_c0.npy,0.9,masks/c0.png\nimages/s0_c1.npy,0.9,masks/c1.png\n")
    summary = organ_parts.score_slices(data, records, seg)
    assert summary["n_abnormal"] == 1 and summary["n_normal"] == 0
    assert summary["pooled_iou"] == pytest.approx(4 / 5)  # 4 lesion pixels found, 1 false pixel
