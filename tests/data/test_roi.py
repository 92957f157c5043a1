"""Stored slices map back to the source voxels exactly, in any orientation."""

import nibabel as nib
import numpy as np
import pytest

from coinseg.data.roi import (
    CaseGeometry,
    display_axes,
    paste_back,
    pixel_affine,
    plan_geometry,
    stored_images,
    stored_masks,
)

SHAPE = (30, 36, 14)


def _affine(codes: tuple[str, str, str], zooms: tuple[float, float, float] = (1.5, 1.5, 3.0)) -> np.ndarray:
    ornt = nib.orientations.axcodes2ornt(codes)
    return nib.orientations.inv_ornt_aff(ornt, SHAPE) @ np.diag([*zooms, 1.0])


def _oblique() -> np.ndarray:
    a, b = np.deg2rad(20.0), np.deg2rad(12.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag([1.5, 1.5, 3.0])
    affine[:3, 3] = (-20.0, 10.0, 5.0)
    return affine


AFFINES = {
    "RAS": _affine(("R", "A", "S")),
    "LPS": _affine(("L", "P", "S")),
    "slice-first (KiTS-like)": _affine(("I", "P", "L"), (3.0, 1.5, 1.5)),
    "oblique": _oblique(),
}


def _lesion(slice_axis: int) -> np.ndarray:
    mask = np.zeros(SHAPE, dtype=bool)
    mask[8:13, 10:19, 3:8] = True  # a box
    mask[20, 25, 11] = True  # and a single voxel
    return mask


@pytest.mark.parametrize("name", list(AFFINES))
@pytest.mark.parametrize("spacing", [0.7, 1.5, None])
def test_mask_round_trips_to_the_voxel(name: str, spacing: float | None) -> None:
    affine = AFFINES[name]
    slice_axis = display_axes(affine)[0]
    lesion = _lesion(slice_axis)
    geometry = plan_geometry("c", "x", SHAPE, affine, lesion if spacing else None, 4.0, spacing)
    other = tuple(a for a in range(3) if a != slice_axis)
    geometry.slice_index = np.flatnonzero(lesion.any(axis=other)).tolist()
    stored = stored_masks(lesion, geometry)
    back = paste_back(CaseGeometry.from_json(geometry.to_json()), stored)
    assert back.shape == SHAPE and back.dtype == bool
    assert np.array_equal(np.argwhere(back), np.argwhere(lesion))


def test_slice_axis_is_the_stored_axis_closest_to_superior_inferior() -> None:
    assert display_axes(AFFINES["RAS"])[0] == 2
    assert display_axes(AFFINES["slice-first (KiTS-like)"])[0] == 0
    assert display_axes(AFFINES["oblique"])[0] == 2


def test_display_orientation_and_world_position_of_a_stored_pixel() -> None:
    affine = AFFINES["LPS"]  # stored axis 0 runs to patient left, axis 1 to posterior
    data = np.zeros(SHAPE, dtype=np.float32)
    data[2, 3, 5] = 100.0  # near patient right (low L index) and anterior (low P index)
    geometry = plan_geometry("c", "x", SHAPE, affine, None, 0.0, None)
    geometry.slice_index = [5]
    image = stored_images(data, geometry)[0]
    row, col = np.argwhere(image == 100.0)[0]
    assert (row, col) == (3, 2)  # anterior up, patient right on the left: no flip needed for LPS
    world = pixel_affine(geometry, 0) @ np.array([row, col, 0, 1.0])
    assert np.allclose(world, affine @ np.array([2, 3, 5, 1.0]))


def test_downsampled_store_pastes_back_to_the_nearest_pixel() -> None:
    affine = AFFINES["RAS"]
    lesion = _lesion(2)
    geometry = plan_geometry("c", "x", SHAPE, affine, lesion, 4.0, 3.0)  # coarser than the 1.5 mm source
    geometry.slice_index = [4]
    back = paste_back(geometry, stored_masks(lesion, geometry))
    assert back.shape == SHAPE and not back[..., 3].any()
    overlap = (back[..., 4] & lesion[..., 4]).sum() / lesion[..., 4].sum()
    assert overlap > 0.6  # same place, lower resolution


def test_paste_back_rejects_masks_of_another_shape() -> None:
    geometry = plan_geometry("c", "x", SHAPE, AFFINES["RAS"], None, 0.0, None)
    geometry.slice_index = [1, 2]
    with pytest.raises(ValueError, match="the store holds"):
        paste_back(geometry, np.zeros((1, 5, 5), dtype=bool))
