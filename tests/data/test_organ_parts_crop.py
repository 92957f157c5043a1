"""A crop by parts (``data.organ_parts``): one network input per connected component of a slice's organ, each
pasted back at its own pixels, gated by its own f(x), and the inputs of a slice merged into one map."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from coinseg.config import ConfigError, settings_from_dict
from coinseg.data import slices as slices_module
from coinseg.data.crop import OrganCrop, fit_crop, slice_max
from coinseg.data.manifest import Entry, read_manifest
from coinseg.data.prepare import prepare_data
from coinseg.data.slices import LazySlices, SliceSet, load_slices
from coinseg.predictor import Predictor, merge_maps


def two_kidneys() -> np.ndarray:
    """A 40 x 60 organ of two 8 x 6 components: rows 10-17, columns 5-10 and 45-50."""
    organ = np.zeros((40, 60), bool)
    organ[10:18, 5:11] = organ[10:18, 45:51] = True
    return organ


def test_regions_are_the_organs_components_only_by_parts() -> None:
    organ = two_kidneys()
    left, right = OrganCrop(16, 16, parts=True).regions(organ)
    assert left.sum() == right.sum() == 48 and left[10:18, 5:11].all() and right[10:18, 45:51].all()
    (whole,) = OrganCrop(16, 16).regions(organ)
    np.testing.assert_array_equal(whole, organ)
    (empty,) = OrganCrop(16, 16, parts=True).regions(np.zeros((40, 60), bool))
    assert empty.shape == (40, 60) and not empty.any()
    # boxes: each centred on its own component (centre row 14, columns 8 and 48)
    assert [OrganCrop(16, 16, True).box(r) for r in (left, right)] == [(6, 0, 16, 16), (6, 40, 16, 16)]


def test_a_crop_by_parts_is_sized_on_the_components_and_recorded() -> None:
    organ = two_kidneys()
    assert fit_crop([organ], 0.0) == OrganCrop(46, 46)  # columns 5..50 of the whole organ
    assert fit_crop([organ], 0.0, parts=True) == OrganCrop(8, 8, True)  # one component's 8 rows
    assert fit_crop([organ], 0.5, parts=True) == OrganCrop(16, 16, True)
    crop = OrganCrop(16, 16, True)
    assert OrganCrop.from_json(crop.to_json()) == crop
    assert OrganCrop.from_json([30, 30]) == OrganCrop(30, 30)  # the record of runs before parts
    assert OrganCrop.from_json(None) is None


def test_slice_max_and_merge_maps_take_the_largest_over_a_slices_inputs() -> None:
    owner = np.array([0, 0, 1, 2, 2])
    np.testing.assert_array_equal(slice_max(np.array([0.2, 0.7, 0.1, 0.9, 0.3]), owner, 3), [0.7, 0.1, 0.9])
    with pytest.raises(ValueError, match="no network input"):
        slice_max(np.array([0.5]), np.array([1]), 2)
    a, b, c = np.array([[1.0, 0.0]]), np.array([[0.0, 2.0]]), np.array([[3.0, 3.0]])
    merged = merge_maps([a, b, c], np.array([0, 0, 1]), 2)
    np.testing.assert_array_equal(merged[0], [[1.0, 2.0]])
    assert merged[1] is c


def test_per_slice_groups_a_slices_inputs() -> None:
    """Two slices, the first split into two inputs: labels and the largest value per slice, in order."""
    one = Entry(Path("a.npy"), "a.npy", 1, "val", row=1)
    two = Entry(Path("b.npy"), "b.npy", 0, "val", row=2)
    data = SliceSet(torch.zeros(3, 1, 4, 4), torch.tensor([1.0, 1.0, 0.0]), [(4, 4)] * 3, [one, one, two])
    labels, values = data.per_slice(np.array([0.2, 0.8, 0.4]))
    np.testing.assert_array_equal(labels, [1.0, 0.0])
    np.testing.assert_array_equal(values, [0.8, 0.4])
    single = SliceSet(torch.zeros(2, 1, 4, 4), torch.tensor([1.0, 0.0]), [(4, 4)] * 2, [one, two])
    np.testing.assert_array_equal(single.per_slice(np.array([0.3, 0.6]))[1], [0.3, 0.6])


class _SeesTheTop(torch.nn.Module):
    """Logit +10 when an input has a pixel at the window's top (x > 0.9), else -10."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x.flatten(1).amax(1) > 0.9, 10.0, -10.0)


def parts_predictor(remove_all_predictor: Callable[..., Predictor]) -> Predictor:
    """conftest's stand-in (every pixel removed: the map is (x + 1) / 2) by parts, with :class:`_SeesTheTop`."""
    model = remove_all_predictor((0.0, 100.0), 16, crop=OrganCrop(16, 16, parts=True))  # 16 px: no resizing
    model.classifier = _SeesTheTop()
    return model


def test_each_component_comes_back_at_its_own_pixels_and_is_gated_alone(
    remove_all_predictor: Callable[..., Predictor],
) -> None:
    """Kidney tissue at 50 HU (map 0.5 under the stand-in), a lesion at 100 HU (map 1) in the left kidney only:
    the left input is called abnormal and its map comes back at the left kidney's pixels; the right input is
    called normal, so gated its map is zero, ungated it is 0.5 on the right kidney; nothing outside the organ."""
    organ = two_kidneys()
    image = np.where(organ, 50.0, 0.0).astype(np.float32)
    image[12:14, 7:9] = 100.0
    model = parts_predictor(remove_all_predictor)
    p, _, (gated,) = model.run([image], organs=[organ], gate=True)
    assert p[0] > 0.99  # the slice: the largest of its inputs'
    np.testing.assert_array_equal(gated > 0.9, image == 100.0)
    np.testing.assert_allclose(gated[10:18, 5:11][image[10:18, 5:11] == 50.0], 0.5)
    assert not gated[:, 30:].any() and not gated[~organ].any()
    _, _, (ungated,) = model.run([image], organs=[organ])
    np.testing.assert_allclose(ungated[10:18, 45:51], 0.5)
    np.testing.assert_array_equal(ungated[:, :30], gated[:, :30])
    inputs, regions, owner = model.expand([image, image], [organ, organ])
    assert len(inputs) == 4 and regions is not None and owner.tolist() == [0, 0, 1, 1]


def test_an_inputs_map_stays_inside_its_own_component(remove_all_predictor: Callable[..., Predictor]) -> None:
    """Two kidneys 2 px apart, so the left one's box holds three columns of the right one: the left input (a
    lesion, called abnormal) changes those columns too, but its map is confined to its own component, and the
    right input is called normal and gated, so the slice's map is zero on the whole right kidney."""
    organ = np.zeros((40, 60), bool)
    organ[10:18, 5:11] = organ[10:18, 13:19] = True
    image = np.where(organ, 50.0, 0.0).astype(np.float32)
    image[12:14, 5:7] = 100.0  # outside the right kidney's box (columns 8-23)
    model = parts_predictor(remove_all_predictor)
    _, regions, _ = model.expand([image], [organ])
    assert regions is not None
    left, right = regions
    assert model.crop is not None and model.crop.box(left) == (6, 0, 16, 16)  # columns 0-15: right's 13-15 too
    _, _, (gated,) = model.run([image], organs=[organ], gate=True)
    assert not gated[right].any()
    np.testing.assert_array_equal(gated > 0.9, image == 100.0)


def test_organ_parts_without_the_crop_is_refused_or_said(tiny_data: Path, tmp_path: Path) -> None:
    """Settings that ask for parts without the crop are refused by name; a manifest without organ masks trains on
    whole inputs and the run's notes say that the setting had no effect."""
    with pytest.raises(ConfigError, match="data.organ_parts: true needs the organ-centred crop"):
        settings_from_dict({"data": {"organ_margin": None, "organ_parts": True}})
    no_organs = tmp_path / "no-organs.csv"
    with tiny_data.open() as source, no_organs.open("w", newline="") as target:
        reader = csv.DictReader(source)
        writer = csv.DictWriter(target, fieldnames=["image", "label", "mask", "split"])
        writer.writeheader()
        for r in reader:
            writer.writerow(
                {k: str(tiny_data.parent / r[k]) if k in ("image", "mask") else r[k] for k in writer.fieldnames}
            )
    prepared = prepare_data(no_organs, 16, [0.5, 99.5], organ_margin=0.1, organ_parts=True)
    assert prepared.crop is None and any("organ_parts: no organ-centred crop" in n for n in prepared.notes)


def test_inputs_by_parts_are_the_same_read_lazily(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two .npy slices, one with two organ components and one with one: three inputs, each its component's box
    (a 16 x 16 box at 16 px: the pixels themselves), the same whether held in memory or read on indexing."""
    rng = np.random.default_rng(0)
    organs = [two_kidneys(), np.zeros((40, 60), bool)]
    organs[1][20:30, 20:26] = True
    rows = ["image,label,split,organ"]
    for k, organ in enumerate(organs):
        np.save(tmp_path / f"i{k}.npy", rng.uniform(0, 100, (40, 60)).astype(np.float32))
        np.save(tmp_path / f"o{k}.npy", organ.astype(np.uint8))
        rows.append(f"i{k}.npy,{k},train,o{k}.npy")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    entries = read_manifest(tmp_path / "m.csv")
    crop = OrganCrop(16, 16, parts=True)
    eager = load_slices(entries, 16, (0.0, 100.0), crop=crop)
    assert isinstance(eager.images, torch.Tensor) and eager.labels.tolist() == [0.0, 0.0, 1.0]
    first = np.load(tmp_path / "i0.npy")[6:22, 40:56]  # the right kidney's box, (6, 40, 16, 16)
    np.testing.assert_allclose(eager.images[1, 0].numpy(), first / 50.0 - 1.0, atol=1e-5)
    monkeypatch.setattr(slices_module, "LAZY_BYTES", 0)
    lazy = load_slices(entries, 16, (0.0, 100.0), crop=crop)
    assert isinstance(lazy.images, LazySlices) and len(lazy.images) == 3
    assert torch.equal(lazy.images[torch.tensor([2, 0, 1])], eager.images[torch.tensor([2, 0, 1])])
