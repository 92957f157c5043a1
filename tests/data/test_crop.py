"""Organ-centred crops (coinseg.data.crop): the box rule, the exact way back, and a cropping run end to end."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from coinseg.cli import app
from coinseg.config import Settings, profile_settings, save_settings
from coinseg.data.crop import ORGAN_RIM_PX, OrganCrop, blank_outside, fit_crop
from coinseg.data.normalise import normalise
from coinseg.predictor import Predictor


def organ_at(shape: tuple[int, int], rows: slice, cols: slice) -> np.ndarray:
    organ = np.zeros(shape, bool)
    organ[rows, cols] = True
    return organ


def test_box_is_centred_on_the_organ_and_kept_inside_the_image() -> None:
    crop = OrganCrop(10, 16)
    # organ rows 20..29, cols 40..49: centre (25, 45) -> top 20, left 37
    assert crop.box(organ_at((60, 80), slice(20, 30), slice(40, 50))) == (20, 37, 10, 16)
    # organ against the bottom-right corner: the box is shifted inside
    assert crop.box(organ_at((60, 80), slice(55, 60), slice(76, 80))) == (50, 64, 10, 16)
    # no organ pixel: centred on the image
    assert crop.box(np.zeros((60, 80), bool)) == (25, 32, 10, 16)
    # an image smaller than the box: the box is the whole image along that axis
    assert crop.box(organ_at((8, 80), slice(2, 4), slice(0, 3))) == (0, 0, 8, 16)


def test_fit_is_a_square_of_the_longest_extent_plus_the_margin() -> None:
    organs = [organ_at((60, 80), slice(10, 20), slice(5, 25)), organ_at((60, 80), slice(0, 30), slice(0, 4))]
    assert fit_crop(organs, 0.1) == OrganCrop(36, 36)  # a square: ceil(max(30, 20) * 1.2)
    assert fit_crop(organs, 0.0) == OrganCrop(30, 30)
    assert fit_crop([np.zeros((5, 5), bool)], 0.1) is None


def test_paste_puts_box_pixels_at_their_slice_pixels() -> None:
    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = OrganCrop.paste(values, (5, 7, 3, 4), (10, 12))
    assert out.shape == (10, 12) and out[5, 7] == 0 and out[7, 10] == 11 and out.sum() == values.sum()
    with pytest.raises(ValueError):
        OrganCrop.paste(values, (5, 7, 4, 4), (10, 12))


@pytest.mark.parametrize(
    ("shape", "organ_rows", "organ_cols"),
    [
        ((40, 50), slice(10, 20), slice(30, 42)),
        ((37, 61), slice(30, 37), slice(55, 61)),
        ((16, 20), slice(0, 3), slice(0, 2)),
    ],
    ids=["inside", "against-the-corner", "box-the-image-height"],
)
def test_a_lesion_comes_back_at_its_own_pixels(
    shape: tuple[int, int], organ_rows: slice, organ_cols: slice, remove_all_predictor: Callable[..., Predictor]
) -> None:
    """A box of the network's size (16 x 16, no resizing): pixels at the window's top come back exactly there."""
    model = remove_all_predictor((0.0, 100.0), 16, crop=OrganCrop(16, 16))
    organ = organ_at(shape, organ_rows, organ_cols)
    image = np.zeros(shape, np.float32)
    lesion = organ.copy()
    lesion[np.flatnonzero(organ.any(1))[1:], :] = False  # the organ's first row only
    lesion[:, np.flatnonzero(organ.any(0))[::2]] = False  # every other column of it
    image[lesion] = 100.0
    _, _, maps = model.run([image], organs=[organ])
    assert maps[0].shape == shape
    np.testing.assert_array_equal(maps[0] > 0.5, lesion)
    top, left, h, w = model.crop.box(organ)  # type: ignore[union-attr]
    outside = np.ones(shape, bool)
    outside[top : top + h, left : left + w] = False
    assert not maps[0][outside].any()


def run_cli(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, str(result.output)


def train_and_segment(
    tiny_data: Path, settings: Settings, tmp_path: Path
) -> tuple[dict, dict, list[tuple[np.ndarray, np.ndarray]], Path]:
    """Through the CLI with ``settings``: train the classifier and the GAN, evaluate, segment the test split at
    threshold 0. Returns (classifier checkpoint, GAN checkpoint, (organ, written mask) of every test row, a lone
    copy of the first test image)."""
    config = tmp_path / "settings.yaml"
    save_settings(settings, config)
    common = ("--config", config, "--device", "cpu")
    for args in (
        ("train-classifier", tiny_data, "--out", tmp_path / "clf", *common),
        ("train", tiny_data, "--classifier", tmp_path / "clf", "--out", tmp_path / "gan", *common),
        ("evaluate", tmp_path / "gan", tiny_data, "--out", tmp_path / "ev", "--device", "cpu"),
        ("segment", tmp_path / "gan", tiny_data, "--out", tmp_path / "seg", "--threshold", "0", "--device", "cpu"),
    ):
        code, output = run_cli(*args)
        assert code == 0, output
    clf = torch.load(tmp_path / "clf" / "checkpoints" / "best.pt", weights_only=True)
    gan = torch.load(tmp_path / "gan" / "checkpoints" / "best.pt", weights_only=True)
    rows = list(csv.DictReader((tmp_path / "seg" / "predictions.csv").open()))
    test = [r for r in csv.DictReader(tiny_data.open()) if r["split"] == "test"]
    assert len(rows) == len(test) > 0
    from PIL import Image as PILImage

    masks = [
        (np.load(tiny_data.parent / entry["organ"]) > 0, np.asarray(PILImage.open(tmp_path / "seg" / row["mask"])) > 0)
        for row, entry in zip(rows, test, strict=True)
    ]
    lone = tmp_path / "lone.npy"
    np.save(lone, np.load(tiny_data.parent / test[0]["image"]))
    return clf, gan, masks, lone


def test_a_cropping_run_trains_evaluates_and_segments(tiny_data: Path, tiny: Settings, tmp_path: Path) -> None:
    tiny.data.organ_margin = 0.1
    clf, gan, masks, lone = train_and_segment(tiny_data, tiny, tmp_path)
    assert clf["crop"] is not None and gan["crop"] == clf["crop"]
    assert "organ-centred crop" in (tmp_path / "clf" / "log.txt").read_text()
    crop = OrganCrop.from_json(gan["crop"])
    assert crop is not None
    for organ, mask in masks:
        top, left, h, w = crop.box(organ)
        assert mask.shape == organ.shape
        mask[top : top + h, left : left + w] = False
        assert not mask.any()  # nothing outside the slice's box
    code, output = run_cli("segment", tmp_path / "gan", lone, "--out", tmp_path / "s2")
    assert code == 2 and "organ-centred crops" in output


def test_a_run_by_parts_trains_evaluates_and_segments(tiny_data: Path, tiny: Settings, tmp_path: Path) -> None:
    """``data.organ_parts`` through the CLI on the phantom (two or three organ components per slice): both networks
    record the crop by parts, the log says so; every mask lies inside its slice's organ and its components'
    boxes; evaluate scores one row per slice."""
    tiny.data.organ_margin, tiny.data.organ_only, tiny.data.organ_parts = 0.1, True, True
    clf, gan, masks, _ = train_and_segment(tiny_data, tiny, tmp_path)
    crop = OrganCrop.from_json(gan["crop"])
    assert gan["crop"] == clf["crop"] and crop is not None and crop.parts
    assert "around each connected component" in (tmp_path / "clf" / "log.txt").read_text()
    for organ, mask in masks:
        assert mask.shape == organ.shape and not (mask & ~organ).any()
        for region in crop.regions(organ):
            top, left, h, w = crop.box(region)
            mask[top : top + h, left : left + w] = False
        assert not mask.any()
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["n_slices"] == len(masks)


def test_blank_outside_keeps_the_organ_and_its_rim() -> None:
    """A 3 x 3 organ at rows/cols 5-7 of a 12 x 12 slice: pixels up to 2 four-connected steps away keep their
    value, farther ones become the window's floor."""
    assert ORGAN_RIM_PX == 2
    organ = np.zeros((12, 12), np.uint8)
    organ[5:8, 5:8] = 1
    out = blank_outside(np.full((12, 12), 50, np.int16), organ)
    assert out.dtype == np.float32
    for kept in [(6, 6), (3, 6), (6, 9), (4, 4), (9, 7)]:
        assert out[kept] == 50.0, kept
    for gone in [(2, 6), (6, 10), (3, 4), (9, 8), (0, 0)]:
        assert out[gone] == -np.inf, gone
    assert np.array_equal(normalise(out, (0.0, 100.0))[out == -np.inf], np.full(int((out == -np.inf).sum()), -1.0))
    assert (blank_outside(np.ones((4, 4)), np.zeros((4, 4))) == -np.inf).all()


def test_the_quick_profiles_organ_input_crops_and_blanks(tiny_data: Path, tiny: Settings, tmp_path: Path) -> None:
    """The quick profile's default for a manifest with organ masks: the box around the organ and only the organ
    inside it. Both networks record both; every mask lies inside its slice's box and its organ."""
    quick = profile_settings("quick").data
    assert quick.organ_margin is not None and quick.organ_only
    tiny.data.organ_margin, tiny.data.organ_only = quick.organ_margin, quick.organ_only
    clf, gan, masks, lone = train_and_segment(tiny_data, tiny, tmp_path)
    assert gan["crop"] == clf["crop"] is not None and gan["organ_only"] is clf["organ_only"] is True
    crop = OrganCrop.from_json(gan["crop"])
    assert crop is not None
    for organ, mask in masks:
        top, left, h, w = crop.box(organ)
        assert mask.shape == organ.shape and not (mask & ~organ).any()
        mask[top : top + h, left : left + w] = False
        assert not mask.any()
    code, output = run_cli("segment", tmp_path / "gan", lone, "--out", tmp_path / "s2")
    assert code == 2 and "organ-centred crops and needs each slice's organ mask" in output


def test_an_organ_only_run_trains_evaluates_and_segments(tiny_data: Path, tiny: Settings, tmp_path: Path) -> None:
    """Both networks record the organ-only input; segment keeps every mask inside its organ, refuses an input
    without organ masks, and a GAN cannot be trained against the classifier on a manifest without them."""
    tiny.data.organ_only = True
    clf, gan, masks, lone = train_and_segment(tiny_data, tiny, tmp_path)
    assert clf["organ_only"] is True and gan["organ_only"] is True
    assert "organ-only input" in (tmp_path / "clf" / "log.txt").read_text()
    for organ, mask in masks:
        assert mask.shape == organ.shape and not (mask & ~organ).any()
    code, output = run_cli("segment", tmp_path / "gan", lone, "--out", tmp_path / "s2")
    assert code == 2 and "saw only each slice's organ" in output

    no_organs = tmp_path / "no-organs.csv"
    with tiny_data.open() as source, no_organs.open("w", newline="") as target:
        reader = csv.DictReader(source)
        fields = [f for f in reader.fieldnames or [] if f != "organ"]
        writer = csv.DictWriter(target, fieldnames=fields)
        writer.writeheader()
        for r in reader:
            writer.writerow({k: (str(tiny_data.parent / r[k]) if k in ("image", "mask") else r[k]) for k in fields})
    code, output = run_cli(
        "train",
        no_organs,
        "--classifier",
        tmp_path / "clf",
        "--out",
        tmp_path / "g2",
        "--device",
        "cpu",
        "--config",
        tmp_path / "settings.yaml",
    )
    assert code == 2 and "saw only each slice's organ" in output


def test_an_organ_only_window_has_its_floor_lowered_below_the_organ(tiny_data: Path) -> None:
    """With the organ-only input, the computed organ window's floor moves down by ``floor_margin`` of its width
    (the top stays), so tissue darker than the organ is not mapped to the outside's -1; whole slices and a given
    window are untouched."""
    from coinseg.data.prepare import prepare_data

    def prepared(**kw: object) -> tuple[tuple[float, float], list[str]]:
        p = prepare_data(tiny_data, 32, [0.5, 99.5], **kw)  # type: ignore[arg-type]
        assert p.window is not None
        return p.window, p.notes

    (lo, hi), _ = prepared(organ_only=True, floor_margin=0.0)
    (lo2, hi2), notes = prepared(organ_only=True, floor_margin=0.5)
    assert hi2 == hi and lo2 == pytest.approx(lo - 0.5 * (hi - lo))
    assert any("lowered by 0.5" in n for n in notes)
    assert prepared(organ_only=False, floor_margin=0.5)[0] == (lo, hi)
    given, notes = prepared(window=(-100.0, 200.0), window_from="organ", organ_only=True, floor_margin=0.5)
    assert given == (-100.0, 200.0) and not any("lowered" in n for n in notes)
    # the outside (-inf before the window) is -1, a pixel at the organ's old floor now well above it
    assert normalise(np.array([-np.inf, lo], np.float32), (lo2, hi2)).tolist() == pytest.approx([-1.0, -1 / 3])
