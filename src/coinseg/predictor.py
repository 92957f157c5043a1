"""A trained run ready for inference (nnU-Net calls this a predictor): counterfactual maps, the frozen
classifier, the intensity window and the network size, and the mask threshold.

For 2-D slices: blanked outside the organ when the run's networks saw only the organ
(:func:`coinseg.data.crop.blank_outside`), cut to the run's organ-centred box when it has one
(:mod:`coinseg.data.crop`; the slice's organ mask is needed for either), normalise with the run's window,
resize to the run's size, x_cf = I(x, c), difference map |x - x_cf| / 2 resized back to the box or the whole
slice (guided by the slice, or bilinear: :mod:`coinseg.data.upsample`), pasted into a zero map of the slice's
size, and zero outside the slice's organ when it has an organ mask (lesions are looked for inside the organ, as on
a ``coinseg prepare`` dataset).

A run whose crop is by parts (``data.organ_parts``) makes one input per connected component of a slice's organ
(:meth:`Predictor.expand`); each input is gated by its own f(x), its map is zero outside its own component, and a
slice's map is the pixel-wise maximum of its inputs' maps (:func:`merge_maps`), its f(x) and f(x_cf) the largest
of theirs (:func:`coinseg.data.crop.slice_max`). Every other run has one input per slice, and these steps change
nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from coinseg.attribution.counterfactual import CounterfactualMaps
from coinseg.config import DeviceChoice, MapUpsample
from coinseg.data.crop import Box, OrganCrop, blank_outside, slice_max
from coinseg.data.manifest import Entry
from coinseg.data.normalise import normalise
from coinseg.data.slices import read_organ, slice_tensor
from coinseg.data.upsample import bilinear, guided
from coinseg.errors import RunError, UsageError
from coinseg.evaluation.metrics import chance_warning, difference_map
from coinseg.method import load_classifier, load_inpainter, probs
from coinseg.runtime.console import console
from coinseg.runtime.device import resolve_device

PAPER_THRESHOLD = 0.25
THRESHOLD_RULES = ("auto", "floor")


@dataclass
class Predictor:
    """A loaded ``coinseg train`` run: counterfactual maps, the frozen classifier, window, intensity kind
    ("hu" or "unit"), network size in pixels, device, the threshold calibrated at training time, the
    organ-centred box (None: whole slices), how maps are resized back to the slices, where the window came
    from (``"organ"``, ``"body"``, ``"given"``; None: grey values or a run trained before this was recorded),
    whether the networks saw only each slice's organ, and the classifier's check against chance made when the run
    was trained."""

    maps: CounterfactualMaps
    classifier: nn.Module
    window: tuple[float, float] | None
    intensity: str
    size: int
    device: torch.device
    auto_threshold: float | None = None
    crop: OrganCrop | None = None
    upsample: MapUpsample = MapUpsample.guided
    window_from: str | None = None
    organ_only: bool = False
    half_max: float | None = None
    floor: float | None = None
    classifier_check: dict[str, Any] | None = None

    def at_chance(self) -> str | None:
        """A one-line warning when the frozen classifier ranked its training manifest's validation slices no
        better than chance, as checked when this run was trained (``classifier_check``: AUROC, its one-sided
        Mann-Whitney ``auroc_p``, slice counts); None otherwise or for a run trained before the check was kept."""
        check = self.classifier_check
        if not check:
            return None
        where = "its training manifest's validation split"
        return chance_warning(check["auroc"], check["auroc_p"], check["n_abnormal"], check["n_normal"], where)

    def threshold(self, value: float | str) -> float:
        """The mask threshold for ``value`` (from :func:`parse_threshold`): a number as it is; ``"auto"`` the
        noise floor calibrated on normal validation slices at training time; ``"floor"`` the run's ``floor``,
        calibrated without masks at training time: the larger of that noise floor and ``half_max``, half the
        typical lesion's change on validation slices labelled abnormal (a lesion reaches to half its contrast).

        Runs trained before ``floor`` was stored (or without normal validation slices) keep the rule of their
        time: the noise floor, at least the paper's 0.25 unless the window was taken over the whole body (0.25
        without a noise floor), and at least ``half_max`` when it is known."""
        if not isinstance(value, str):
            return value
        if value == "floor":
            if self.floor is not None:
                return self.floor
            if self.window_from == "body" and self.auto_threshold is not None:
                base = self.auto_threshold
            else:
                base = max(PAPER_THRESHOLD, self.auto_threshold or 0.0)
            return max(base, self.half_max or 0.0)
        if self.auto_threshold is None:
            raise RunError(
                "--threshold auto: this run's checkpoint has no calibrated threshold (no normal validation slices, "
                "or trained by an older coinseg); give a number"
            )
        return self.auto_threshold

    def below_noise_floor(self, cut: float) -> str | None:
        """A one-line warning when ``cut`` lies below the run's noise floor (masks will then hold the GAN's own
        change on normal tissue), else None."""
        if self.auto_threshold is None or cut >= self.auto_threshold:
            return None
        return (
            f"warning: threshold {cut:.3f} is below this run's noise floor {self.auto_threshold:.3f} (the change it "
            "makes on 95 % of normal validation slices): expect false positives; --threshold floor never goes below it"
        )

    def entry_organs(self, entries: list[Entry], arrays: list[np.ndarray]) -> list[np.ndarray | None]:
        """The organ mask of each manifest entry (bool, the shape of its slice in ``arrays``); None for a row
        without one."""
        return [None if e.organ is None else read_organ(e, a.shape) for e, a in zip(entries, arrays, strict=True)]

    def expand(
        self, arrays: list[np.ndarray], organs: Sequence[np.ndarray | None] | None, source: str = "the input"
    ) -> tuple[list[np.ndarray], Sequence[np.ndarray | None] | None, np.ndarray]:
        """The network inputs of N raw 2-D slices: (each input's slice, each input's organ region, ``owner``: M
        ints, the slice of each input). One input per slice (``arrays`` and ``organs`` as they are) unless the
        run's crop is by parts: then one per connected component of each slice's organ (nonzero = organ;
        :meth:`coinseg.data.crop.OrganCrop.regions`), which every slice then needs (an error naming ``source``)."""
        if self.crop is None or not self.crop.parts:
            return arrays, organs, np.arange(len(arrays))
        every = _every_organ(organs, f"{source}: this run was trained on organ-centred crops and needs")
        regions = [self.crop.regions(organ) for organ in every]
        owner = np.repeat(np.arange(len(arrays)), [len(r) for r in regions])
        return [arrays[i] for i in owner], [region for split in regions for region in split], owner

    def seen(
        self, arrays: list[np.ndarray], organs: Sequence[np.ndarray | None] | None, source: str = "the input"
    ) -> list[np.ndarray]:
        """Raw 2-D slices as the networks saw them in training: blanked outside their organ mask (nonzero = organ)
        when the run is organ-only, else as they are. An organ-only run without every slice's organ mask is an
        error naming ``source``."""
        if not self.organ_only:
            return arrays
        every = _every_organ(organs, f"{source}: this run's networks saw only each slice's organ and need")
        return [blank_outside(a, o) for a, o in zip(arrays, every, strict=True)]

    def boxes(self, organs: Sequence[np.ndarray | None] | None, source: str = "the input") -> list[Box] | None:
        """Each slice's box from its organ mask (H x W, nonzero = organ) when the run crops; None when it does
        not. A cropping run without every slice's organ mask is an error naming ``source``."""
        if self.crop is None:
            return None
        every = _every_organ(organs, f"{source}: this run was trained on organ-centred crops and needs")
        return [self.crop.box(organ) for organ in every]

    def inputs(self, arrays: list[np.ndarray], boxes: list[Box] | None = None) -> torch.Tensor:
        """Raw 2-D slices (HU or grey values, any sizes), cut to ``boxes`` when given -> N x 1 x S x S network
        inputs in [-1, 1] (CPU)."""
        return torch.stack([slice_tensor(a, self.size, self.window) for a in _cut(arrays, boxes)])[:, None]

    def guides(self, arrays: list[np.ndarray], boxes: list[Box] | None = None) -> list[torch.Tensor] | None:
        """The guides of guided resizing: each raw slice (cut to its box) at its own resolution, normalised to
        [-1, 1] (CPU); None when this predictor resizes bilinearly."""
        if self.upsample is MapUpsample.bilinear:
            return None
        return [torch.from_numpy(normalise(a, self.window)) for a in _cut(arrays, boxes)]

    def to_slices(
        self,
        maps: torch.Tensor,
        x: torch.Tensor,
        arrays: list[np.ndarray],
        boxes: list[Box] | None = None,
        guides: list[torch.Tensor] | None = None,
    ) -> list[np.ndarray]:
        """N x 1 x S x S maps made from the inputs ``x`` (:meth:`inputs` of the raw ``arrays`` and ``boxes``) ->
        each slice's own H_i x W_i float32 map, resized as ``self.upsample`` says (:func:`to_original_size`).
        ``guides``: :meth:`guides` of the same arrays, for a caller that resizes several maps of them (made
        here when not given)."""
        if guides is None:
            guides = self.guides(arrays, boxes)
        return to_original_size(maps, [a.shape for a in arrays], boxes, None if guides is None else (x, guides))

    def probs(self, images: torch.Tensor, batch: int = 64) -> np.ndarray:
        """f(images) for N x 1 x S x S inputs in [-1, 1] (any device), in batches: N probabilities."""
        return probs(self.classifier, images, self.device, batch)

    def run(
        self,
        arrays: list[np.ndarray],
        batch: int = 64,
        organs: Sequence[np.ndarray | None] | None = None,
        source: str = "the input",
        gate: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """Raw 2-D slices -> (f(x), f(x_cf), difference maps at each slice's own size, float32 in [0, 1]), per
        slice (over its inputs, :meth:`expand`: the largest f, the pixel-wise maximum of the maps). ``organs``: each
        slice's organ mask (nonzero = organ) or None; an organ-only or cropping run needs every one, and an input's
        map is zero outside its organ region (its slice's organ, or its component; :func:`confine_maps`).
        ``gate``: an input's map is zero where f calls that input normal (the classifier gate, :func:`gate_maps`)."""
        inputs, regions, owner = self.expand(arrays, organs, source)
        boxes = self.boxes(regions, source)
        p, p_cf, diffs = [], [], []
        for start in range(0, len(inputs), batch):
            chunk_regions = None if regions is None else regions[start : start + batch]
            chunk = self.seen(inputs[start : start + batch], chunk_regions, source)  # blanked chunk by chunk
            chunk_boxes = None if boxes is None else boxes[start : start + batch]
            x = self.inputs(chunk, chunk_boxes).to(self.device)
            x_cf = self.maps.counterfactual(x)
            p.append(self.probs(x, batch))
            p_cf.append(self.probs(x_cf, batch))
            diffs.extend(self.to_slices(difference_map(x, x_cf), x, chunk, chunk_boxes))
        n, p_in = len(arrays), np.concatenate(p)
        maps = self.per_slice_maps(diffs, regions, owner, p_in if gate else None)
        return slice_max(p_in, owner, n), slice_max(np.concatenate(p_cf), owner, n), maps

    @staticmethod
    def per_slice_maps(
        maps: list[np.ndarray],
        regions: Sequence[np.ndarray | None] | None,
        owner: np.ndarray,
        probs: np.ndarray | None = None,
    ) -> list[np.ndarray]:
        """The maps of M network inputs at their slices' sizes (:meth:`to_slices`) -> one per slice, as ``segment``
        writes them: zero where f calls the input normal (``probs``: the inputs' f, when gated,
        :func:`gate_maps`), zero outside the input's organ region (:func:`confine_maps`), the pixel-wise maximum
        over a slice's inputs (:func:`merge_maps`). ``regions`` and ``owner``: from :meth:`expand`."""
        if probs is not None:
            maps = gate_maps(maps, probs)
        return merge_maps(confine_maps(maps, regions), owner, int(owner.max()) + 1 if len(owner) else 0)


def _every_organ(organs: Sequence[np.ndarray | None] | None, needs: str) -> list[np.ndarray]:
    """``organs`` when every slice has one, else a RunError that starts with ``needs`` (the input and why the run
    needs them) and says how to give them."""
    if organs is None or any(organ is None for organ in organs):
        raise RunError(
            f"{needs} each slice's organ mask; give a manifest with an organ column (or a prepared dataset with organs)"
        )
    return [organ for organ in organs if organ is not None]


def _cut(arrays: list[np.ndarray], boxes: list[Box] | None) -> list[np.ndarray]:
    """``arrays`` cut to their ``boxes`` (as they are when None)."""
    return arrays if boxes is None else [OrganCrop.cut(a, box) for a, box in zip(arrays, boxes, strict=True)]


def merge_maps(maps: list[np.ndarray], owner: np.ndarray, n: int) -> list[np.ndarray]:
    """The maps of M network inputs (each at its slice's size) -> one per slice: the pixel-wise maximum over the
    inputs ``owner`` (M ints in [0, n)) gives to it; a slice with one input keeps its map as it is."""
    out: list[np.ndarray | None] = [None] * n
    for m, i in zip(maps, owner, strict=True):
        kept = out[i]
        out[i] = m if kept is None else np.maximum(kept, m)
    if any(m is None for m in out):
        raise ValueError("a slice has no network input")
    return [m for m in out if m is not None]


def gate_maps(maps: list[np.ndarray], probs: np.ndarray) -> list[np.ndarray]:
    """The classifier gate: ``maps`` with those of slices f calls normal (``probs`` < 0.5) set to zero."""
    return [m if p >= 0.5 else np.zeros_like(m) for m, p in zip(maps, probs, strict=True)]


def confine_maps(maps: list[np.ndarray], organs: Sequence[np.ndarray | None] | None) -> list[np.ndarray]:
    """``maps`` (H x W each) set to zero outside their slice's organ mask (same shape, nonzero = organ) where one is
    given; a map without one (None, or ``organs`` None) is left as it is. Lesions are looked for inside the organ,
    so an organ mask must cover its lesions (``coinseg prepare`` stores the organ joined with the lesion masks)."""
    if organs is None:
        return maps
    return [m if o is None else np.where(o != 0, m, 0.0).astype(m.dtype) for m, o in zip(maps, organs, strict=True)]


def to_original_size(
    maps: torch.Tensor,
    shapes: list[tuple[int, ...]],
    boxes: list[Box] | None = None,
    guides: tuple[torch.Tensor, list[torch.Tensor]] | None = None,
) -> list[np.ndarray]:
    """B x 1 x S x S maps -> list of H_i x W_i float32 arrays, one per original slice shape: resized to the whole
    slice, or to its box (``boxes``) and pasted into a zero map at the box's pixel offsets. Bilinear, or with
    ``guides`` = (the B x 1 x S x S network inputs, each slice or box at its own size in [-1, 1]) guided by the
    slice (:func:`coinseg.data.upsample.guided`)."""
    out = []
    for i, shape in enumerate(shapes):
        box = None if boxes is None else boxes[i]
        target = (int(shape[0]), int(shape[1])) if box is None else (box[2], box[3])
        back = bilinear(maps[i, 0], target) if guides is None else guided(maps[i, 0], guides[0][i, 0], guides[1][i])
        sized = back.cpu().numpy()
        out.append(sized if box is None else OrganCrop.paste(sized, box, tuple(shape)))
    return out


def load_predictor(
    run_dir: Path, device: DeviceChoice | str = DeviceChoice.auto, upsample: MapUpsample | str = MapUpsample.guided
) -> Predictor:
    """Load the best E+G and the frozen classifier of a ``coinseg train`` run directory onto ``device``; maps
    will be resized back to the slices as ``upsample`` says."""
    target = resolve_device(device)
    inpainter, settings, ckpt = load_inpainter(run_dir)
    if not (run_dir / "run.json").is_file():
        console.print(
            f"warning: {run_dir} has no run.json: its training did not finish (killed or still running); "
            f"using best.pt from step {ckpt.get('step')}",
            highlight=False,
        )
    classifier, _ = load_classifier(run_dir, run_dir / "checkpoints" / "classifier.pt")
    classifier = classifier.to(target)
    # mirrored maps only for runs calibrated with them (runs trained before the setting have no record of it)
    mirror = bool(ckpt.get("mirror_maps"))
    maps = CounterfactualMaps(ckpt["method"], inpainter.to(target), settings.gan, classifier, mirror)
    window = tuple(ckpt["window"]) if ckpt["window"] else None
    crop = OrganCrop.from_json(ckpt.get("crop"))
    return Predictor(
        maps,
        classifier,
        window,
        ckpt["intensity"],
        ckpt["size"],
        target,
        ckpt.get("auto_threshold"),
        crop,
        MapUpsample(upsample),
        ckpt.get("window_from"),
        bool(ckpt.get("organ_only")),
        ckpt.get("half_max"),
        ckpt.get("floor"),
        ckpt.get("classifier_check"),
    )


def parse_threshold(value: float | str) -> float | str:
    """``--threshold``: a number in [0, 1), ``auto`` or ``floor`` (returned as that word, lower case; see
    :meth:`Predictor.threshold`)."""
    if isinstance(value, str) and value.strip().lower() in THRESHOLD_RULES:
        return value.strip().lower()
    try:
        number = float(value)
    except ValueError:
        raise UsageError(f"--threshold {value!r}: give a number in [0, 1), 'floor' or 'auto'") from None
    if not 0.0 <= number < 1.0:
        raise UsageError(f"--threshold {value}: must be in [0, 1)")
    return number
