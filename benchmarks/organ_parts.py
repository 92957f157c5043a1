"""One network input per organ component: an experiment on a generalization-suite member, not a feature.

With an organ column, coinseg's crop is one square around the slice's whole organ (``coinseg.data.crop``). For a
paired organ such as the kidneys that square spans both and the spine between them, so it hardly magnifies (188
of 256 px on ``phantom-small-multi``), and lesions of 3-10 mm stay below visibility on the 64 px input. This
script gives each connected component of a slice's organ (each kidney) its own square instead: side = the longest
component bounding-box side over the training split, +10 % on each side (the rule of ``fit_crop``), centred on
the component (the run's own crop, ``data.organ_margin``, then finds that square again: a wider cut is cropped
back to it). It writes a *component manifest* (one row per component: the image, that component as the organ
and the slice's lesion mask inside it, cut to the square; labelled with the slice's label, since no component
label is known to a user), runs the quick profile on it through the CLI (``train-classifier``, ``train``,
``segment --split test``), pastes each component's mask back into its slice at the square's offsets, and scores
the slices: pooled IoU (sum over abnormal slices), mean Dice, normal slices with any mask pixel. Before training it
prints the lesions' detectability d (Rose's index, as the suite's diagnosis) on the 64 px input through the
whole-organ square and through the component's square.

    python benchmarks/organ_parts.py --data /tmp/gen18/phantom-small-multi/data --work /tmp/parts/small-multi \
        [--seed 0] [--threads 1] [--minutes 15]

``--data`` is a member's data folder written by ``benchmarks/generalization.py`` (``manifest.csv`` with an organ
column, ``clean/`` lesion-free twins); results go under ``--work`` (``result.json``), never beside the data.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from coinseg.config import profile_settings, save_settings
from coinseg.data.crop import Box, OrganCrop, fit_crop
from coinseg.data.normalise import fingerprint_window, normalise
from coinseg.data.slices import resize
from coinseg.evaluation.metrics import SegmentationTally

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generalization import coinseg, detectability  # noqa: E402

SIZE = 64  # the quick profile's network input, px
MARGIN = 0.1  # the quick profile's data.organ_margin
NICE = 10  # the training runs' niceness, as the suite's


def components(organ: np.ndarray) -> list[np.ndarray]:
    """The connected components (4-connected) of an H x W organ mask, as bool masks, in label order."""
    labelled, n = ndimage.label(organ)
    return [labelled == i for i in range(1, n + 1)]


def read_rows(data: Path) -> list[dict[str, str]]:
    with (data / "manifest.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def load(data: Path, relative: str) -> np.ndarray:
    return np.load(data / relative)


def write_parts(data: Path, out: Path) -> tuple[Path, list[dict[str, str]]]:
    """Write the component manifest ``out/manifest.csv`` (and its arrays) from ``data``; return it and one record
    per component row: its slice's row number (``slice``, 0-based in ``data``'s manifest) and its box."""
    rows = read_rows(data)
    if any(not r.get("organ") for r in rows):
        raise SystemExit(f"{data / 'manifest.csv'}: every row needs an organ mask (the organ column)")
    crop = fit_crop([c for r in rows if r["split"] == "train" for c in components(load(data, r["organ"]) > 0)], MARGIN)
    if crop is None:
        raise SystemExit(f"{data}: no training slice holds an organ pixel")
    for sub in ("images", "masks", "organs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    parts, records = [], []
    for i, row in enumerate(rows):
        image = load(data, row["image"])
        lesions = load(data, row["mask"]) > 0 if row["mask"] else np.zeros(image.shape, bool)
        for k, part in enumerate(components(load(data, row["organ"]) > 0)):
            box = crop.box(part)
            name = f"{Path(row['image']).stem}_c{k}.npy"
            arrays = {"images": image, "masks": lesions & part, "organs": part}
            for sub, array in arrays.items():
                np.save(out / sub / name, np.ascontiguousarray(OrganCrop.cut(array, box)).astype(np.float32))
            parts.append({"image": f"images/{name}", "label": row["label"], "mask": f"masks/{name}"})
            parts[-1].update(split=row["split"], organ=f"organs/{name}")
            records.append({"slice": str(i), "image": f"images/{name}", "box": json.dumps(list(box))})
    manifest = out / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "label", "mask", "split", "organ"])
        writer.writeheader()
        writer.writerows(parts)
    return manifest, records


def input_detectability(data: Path) -> dict[str, float]:
    """Median d of the abnormal test slices' lesions on the 64 px input through the whole-organ square (the run's
    crop) and through the square of the component holding the lesion, under the organ's window (percentiles of the
    test slices' organ pixels, as a run's without ``floor_margin``), so it needs no trained run."""
    rows = read_rows(data)
    organs = {i: load(data, r["organ"]) > 0 for i, r in enumerate(rows)}
    train = [organs[i] for i, r in enumerate(rows) if r["split"] == "train"]
    whole = fit_crop(train, MARGIN)
    part_crop = fit_crop([c for o in train for c in components(o)], MARGIN)
    assert whole is not None and part_crop is not None
    tests = [i for i, r in enumerate(rows) if r["split"] == "test" and r["label"] == "1"]
    window = fingerprint_window((load(data, rows[i]["image"]), organs[i]) for i in tests)

    def seen(array: np.ndarray, box: Box) -> np.ndarray:
        cut = normalise(np.ascontiguousarray(OrganCrop.cut(array, box)), window)
        return resize(torch.from_numpy(cut)[None, None], (SIZE, SIZE))[0, 0].numpy()

    d: dict[str, list[float]] = {"whole organ": [], "component": []}
    for i in tests:
        image, clean = load(data, rows[i]["image"]), load(data, rows[i]["image"].replace("images/", "clean/"))
        lesion = np.abs(image - clean) > 0
        holding = [c for c in components(organs[i]) if (c & lesion).any()]
        for key, box in (("whole organ", whole.box(organs[i])), ("component", part_crop.box(holding[0]))):
            d[key].append(float(detectability([seen(image, box)], [seen(clean, box)])[0]))
    return {key: float(np.nanmedian(np.where(np.isinf(v), np.nan, v))) for key, v in d.items()}


def score_slices(data: Path, records: list[dict[str, str]], segmented: Path) -> dict[str, float | None]:
    """The test slices' masks: each component's mask (``segment``'s PNG) pasted back at its box, united per slice,
    scored against the slice's lesion mask."""
    rows = read_rows(data)
    predictions = {p["image"]: p["mask"] for p in csv.DictReader((segmented / "predictions.csv").open(newline=""))}
    masks: dict[int, np.ndarray] = {}
    for record in records:
        if record["image"] not in predictions:
            continue  # not a test component
        i = int(record["slice"])
        shape = load(data, rows[i]["image"]).shape
        part = np.asarray(Image.open(segmented / predictions[record["image"]])) > 0
        pasted = OrganCrop.paste(part.astype(np.float32), tuple(json.loads(record["box"])), shape) > 0
        masks[i] = masks.get(i, np.zeros(shape, bool)) | pasted
    tally = SegmentationTally()
    for i, row in enumerate(rows):
        if row["split"] == "test":
            truth = load(data, row["mask"]) > 0 if row["mask"] else np.zeros(load(data, row["image"]).shape, bool)
            tally.add(masks.get(i, np.zeros(truth.shape, bool)), truth, row["label"] == "1")
    return tally.summary()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a suite member's data folder (organ column)")
    parser.add_argument("--work", type=Path, required=True, help="where the component data and runs go")
    parser.add_argument("--seed", type=int, default=0, help="training seed (the quick profile's otherwise)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--minutes", type=float, default=15.0, help="budget of each training (the steps bind first)")
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    manifest, records = write_parts(args.data, work / "data")  # first: it says so when no organ is given
    print("lesion detectability d on the 64 px input (median):", input_detectability(args.data))
    log, cpu = work / "log.txt", ["--device", "cpu"]
    if args.seed:
        settings = profile_settings("quick")
        settings.seed = args.seed
        save_settings(settings, work / "settings.yaml")
        cpu += ["--config", str(work / "settings.yaml")]
    clf_args = ["train-classifier", str(manifest), "--out", str(work / "clf"), *cpu, "--max-minutes", str(args.minutes)]
    seconds = {"classifier": coinseg(clf_args, log, NICE, args.threads)}
    train = ["train", str(manifest), "--classifier", str(work / "clf"), "--out", str(work / "gan"), *cpu]
    seconds["gan"] = coinseg([*train, "--max-minutes", str(args.minutes)], log, NICE, args.threads)
    segment = ["segment", str(work / "gan"), str(manifest), "--split", "test", "--out", str(work / "seg")]
    seconds["segment"] = coinseg([*segment, "--device", "cpu"], log, NICE, args.threads)
    summary = score_slices(args.data, records, work / "seg")
    clf = json.loads((work / "clf" / "test_metrics.json").read_text())["test"]
    result = {"slices": summary, "component_auroc": clf["auroc"], "seconds": seconds, "components": len(records)}
    (work / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
