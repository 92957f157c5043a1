"""Predictor maps stay inside a slice's organ when it has one: in ``Predictor.run`` and in ``segment`` on a manifest."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from coinseg import inference
from coinseg.errors import RunError
from coinseg.inference import segment
from coinseg.predictor import Predictor, confine_maps

SHAPE = (40, 50)


def lesion_across_the_organ_edge() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(HU slice, organ, lesion) of SHAPE: a 100 HU square (rows 10-19, cols 20-29) whose left half lies in the
    organ (rows 5-29, cols 5-24) and whose right half does not."""
    organ = np.zeros(SHAPE, bool)
    organ[5:30, 5:25] = True
    lesion = np.zeros(SHAPE, bool)
    lesion[10:20, 20:30] = True
    return np.where(lesion, 100.0, 0.0).astype(np.float32), organ, lesion


def test_confine_maps_zeroes_outside_the_organ_only_where_one_is_given() -> None:
    maps = [np.ones(SHAPE, np.float32), np.ones(SHAPE, np.float32)]
    _, organ, _ = lesion_across_the_organ_edge()
    confined = confine_maps(maps, [organ, None])
    assert np.array_equal(confined[0] > 0, organ) and confined[0].dtype == np.float32
    assert confined[1].all()
    assert confine_maps(maps, None) is maps


def test_run_keeps_each_map_inside_its_own_organ(remove_all_predictor: Callable[..., Predictor]) -> None:
    """The same slice twice through a 32 px network (guided back to 40 x 50): the map is the lesion, cut at the
    organ's edge for the slice given an organ mask and whole for the one given None."""
    hu, organ, lesion = lesion_across_the_organ_edge()
    _, _, maps = remove_all_predictor((0.0, 100.0), 32).run([hu, hu], organs=[organ, None])
    np.testing.assert_array_equal(maps[0] > 0.5, lesion & organ)
    np.testing.assert_array_equal(maps[1] > 0.5, lesion)


def test_segment_on_a_manifest_confines_masks_to_the_row_organ(
    tmp_path: Path, remove_all_predictor: Callable[..., Predictor], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two rows with the same slice, one with an organ mask and one without: the written masks are the lesion
    inside the organ, and the whole lesion."""
    hu, organ, lesion = lesion_across_the_organ_edge()
    data = tmp_path / "data"
    data.mkdir()
    np.save(data / "a.npy", hu)
    np.save(data / "b.npy", hu)
    np.save(data / "organ.npy", organ.astype(np.uint8))
    with (data / "manifest.csv").open("w", newline="") as handle:
        handle.write("image,label,split,organ\na.npy,1,test,organ.npy\nb.npy,1,test,\n")
    model = remove_all_predictor((0.0, 100.0), 32)
    monkeypatch.setattr(inference, "load_predictor", lambda *_: model)
    segment(tmp_path / "run", data / "manifest.csv", tmp_path / "seg", threshold=0.5, device="cpu")
    rows = {r["image"]: r for r in csv.DictReader((tmp_path / "seg" / "predictions.csv").open())}
    inside = np.asarray(Image.open(tmp_path / "seg" / rows["a.npy"]["mask"])) > 0
    anywhere = np.asarray(Image.open(tmp_path / "seg" / rows["b.npy"]["mask"])) > 0
    np.testing.assert_array_equal(inside, lesion & organ)
    np.testing.assert_array_equal(anywhere, lesion)


def test_an_organ_only_predictor_blanks_what_the_networks_see(remove_all_predictor: Callable[..., Predictor]) -> None:
    """The network input of an organ-only run is the window's floor (-1) away from the organ; the raw slice is
    not changed; without organ masks the run is refused."""
    hu, organ, _ = lesion_across_the_organ_edge()
    hu[35:, 40:] = 100.0  # bright, far from the organ
    model = remove_all_predictor((0.0, 100.0), 40, organ_only=True)
    (shown,) = model.seen([hu], [organ])
    assert shown[35:, 40:].max() == -np.inf and hu[35:, 40:].min() == 100.0
    assert np.array_equal(shown[organ], hu[organ])
    with pytest.raises(RunError, match="saw only each slice's organ"):
        model.run([hu])


def test_at_chance_warns_only_for_a_classifier_checked_at_chance(
    remove_all_predictor: Callable[..., Predictor],
) -> None:
    """The check kept at training time: p >= 0.01 warns with the AUROC and counts; p < 0.01, or a run trained
    before the check was kept (None), does not."""
    chance = {"auroc": 0.48, "auroc_p": 0.67, "n_abnormal": 120, "n_normal": 124}
    warning = remove_all_predictor((0.0, 100.0), 32, classifier_check=chance).at_chance()
    assert warning is not None and "AUROC 0.480" in warning and "120 abnormal / 124 normal" in warning
    found = {**chance, "auroc": 0.97, "auroc_p": 1e-30}
    assert remove_all_predictor((0.0, 100.0), 32, classifier_check=found).at_chance() is None
    assert remove_all_predictor((0.0, 100.0), 32).at_chance() is None
