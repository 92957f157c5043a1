"""From a manifest to the train/val/test slice sets a trainer needs, with the intensity window."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from coinseg.data.crop import ORGAN_RIM_PX, OrganCrop
from coinseg.data.manifest import duplicate_problems, read_manifest, training_splits
from coinseg.data.slices import SliceSet, compute_window, fit_entries_crop, intensity_of, load_slices
from coinseg.data.store import from_store
from coinseg.runtime.console import progress_bar


@dataclass
class Prepared:
    """``window``: (lo, hi) HU, or None for grey-value inputs (``intensity == "unit"``); ``window_from``: where
    it came from: ``"organ"`` (percentiles of organ pixels: every training row has an organ mask), ``"body"``
    (of body pixels, HU > -500), ``"given"`` (passed in: a setting, or the classifier's for a GAN), None for
    grey values; ``crop``: the organ-centred box the slices were cut to, or None (whole slices); ``organ_only``:
    whether the slices were blanked outside their organ (:func:`coinseg.data.crop.blank_outside`)."""

    train: SliceSet
    val: SliceSet
    test: SliceSet | None
    window: tuple[float, float] | None
    intensity: str
    crop: OrganCrop | None = None
    notes: list[str] = field(default_factory=list)
    window_from: str | None = None
    organ_only: bool = False


def prepare_data(
    manifest: Path,
    size: int,
    percentiles: list[float],
    window: tuple[float, float] | None = None,
    seed: int = 0,
    organ_margin: float | None = None,
    crop: OrganCrop | None = None,
    window_from: str | None = "given",
    organ_only: bool = False,
    floor_margin: float = 0.0,
    organ_parts: bool = False,
) -> Prepared:
    """Read and validate ``manifest``, compute the window from the training split (unless ``window`` is given,
    e.g. the classifier's, which a GAN must reuse, with ``window_from`` saying where it came from) and load every
    split at ``size x size``.

    Organ-centred crop: ``crop`` given (the classifier's, for a GAN) is used as it is; else, with
    ``organ_margin`` not None and an organ mask on every row of a plain manifest (not a ``coinseg prepare``
    store, whose slices are organ-centred already), a box is fitted on the training split
    (:func:`coinseg.data.crop.fit_crop`), one per component of each slice's organ with ``organ_parts``
    (:meth:`coinseg.data.crop.OrganCrop.regions`; each split then has one input per component). ``organ_only``:
    blank every slice outside its organ when every row has an organ mask (else whole slices); a window computed
    here then has its floor lowered by ``floor_margin`` times its width (a given window, e.g. the classifier's, is
    used as it is), so that tissue darker than the organ is not set to the floor that the blanked outside is.
    ``notes``: what the run log should say (a held-out validation split; the organ-only input; the crop; duplicate
    rows and images in two splits, as warnings)."""
    entries = read_manifest(manifest)
    train, val, note = training_splits(entries, manifest)
    test = [e for e in entries if e.split == "test"]
    intensity = intensity_of(entries, manifest)
    every_organ = all(e.organ for e in entries)
    organ_only = organ_only and every_organ
    lowered = False
    if intensity == "unit":
        window, window_from = None, None
    elif window is None:
        window = compute_window(train, percentiles, seed)
        window_from = "organ" if all(e.organ for e in train) else "body"
        if organ_only and floor_margin:
            window, lowered = (window[0] - floor_margin * (window[1] - window[0]), window[1]), True
    notes = [note] if note else []
    if organ_only:
        lowered_by = f" (lowered by {floor_margin:g} of the organ's window width)" if lowered else ""
        notes.append(
            f"organ-only input: pixels more than {ORGAN_RIM_PX} px from each slice's organ set to the window's floor"
            + lowered_by
        )
    if crop is None and organ_margin is not None and every_organ and not from_store(entries):
        crop = fit_entries_crop(train, organ_margin, organ_parts)
    if crop is None and organ_parts:
        notes.append(
            "organ_parts: no organ-centred crop (not every row has an organ mask, or a prepared store): whole inputs"
        )
    if crop is not None:
        around = (
            "each connected component of each slice's organ (one input each)" if crop.parts else "each slice's organ"
        )
        notes.append(f"organ-centred crop: {crop.height} x {crop.width} px around {around}")
    sets = {}
    with progress_bar("loading slices", len(train) + len(val) + len(test)) as (progress, task):
        for name, chosen in (("train", train), ("val", val), ("test", test)):
            if chosen:
                sets[name] = load_slices(chosen, size, window, lambda n: progress.advance(task, n), crop, organ_only)
    notes += [f"warning: {problem}" for problem in duplicate_problems(entries, manifest)]
    return Prepared(
        sets["train"], sets["val"], sets.get("test"), window, intensity, crop, notes, window_from, organ_only
    )
