"""Readers return arrays with geometry; volumes round-trip through display slices exactly."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image as PILImage

from coinseg.io.images import (
    ImageReadError,
    read_image,
    read_slice,
    slices_to_volume,
    to_source_volume,
    volume_to_slices,
    write_nifti,
)

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
needs_fixtures = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data fixtures not present")


def test_png_is_grey_unit(tmp_path: Path) -> None:
    PILImage.fromarray(np.array([[0, 65535]], np.uint16).repeat(2, 0)).save(tmp_path / "a.png")
    image = read_image(tmp_path / "a.png")
    assert image.intensity == "unit" and image.array.tolist() == [[0.0, 1.0], [0.0, 1.0]]


def test_npy_is_hu_and_rejects_nan(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.array([[1.0, np.nan], [0.0, 0.0]]))
    with pytest.raises(ImageReadError, match="NaN"):
        read_image(tmp_path / "a.npy")


def test_volume_where_a_slice_is_expected(tmp_path: Path) -> None:
    np.save(tmp_path / "v.npy", np.zeros((3, 4, 4), np.float32))
    with pytest.raises(ImageReadError, match="expected a 2-D slice, got a volume"):
        read_slice(tmp_path / "v.npy")


@pytest.mark.parametrize("codes", [("R", "A", "S"), ("L", "P", "S"), ("P", "L", "I")])
def test_slices_round_trip_any_orientation(codes: tuple[str, str, str]) -> None:
    ornt = nib.orientations.axcodes2ornt(codes)
    affine = nib.orientations.inv_ornt_aff(ornt, (5, 6, 7))
    data = np.random.default_rng(0).normal(size=(5, 6, 7))
    assert np.array_equal(slices_to_volume(volume_to_slices(data, affine), affine), data)


def test_display_orientation_puts_anterior_up_and_patient_right_left() -> None:
    data = np.zeros((4, 5, 3))  # RAS voxel axes
    data[3, 0, 1] = 1  # most patient-right (RAS: +x = right), most posterior (y min)
    slices = volume_to_slices(data, np.eye(4))
    z, row, col = np.argwhere(slices == 1)[0]
    assert (z, row, col) == (1, 4, 0)  # bottom row (posterior), left column (patient right)


@needs_fixtures
def test_nifti_mask_written_with_input_geometry(tmp_path: Path) -> None:
    ct = read_image(SHARED / "totalsegmentator-mini/s0001/ct.nii.gz")
    assert ct.is_volume and ct.array.shape == (30, 101, 122) and ct.intensity == "hu"
    kidney = read_image(SHARED / "totalsegmentator-mini/s0001/segmentations/kidney_left.nii.gz").array > 0
    assert ct.affine is not None
    write_nifti(to_source_volume(kidney, ct), ct.affine, tmp_path / "m.nii.gz")
    written = nib.load(tmp_path / "m.nii.gz")
    source = nib.load(SHARED / "totalsegmentator-mini/s0001/segmentations/kidney_left.nii.gz")
    assert written.shape == source.shape and np.allclose(written.affine, source.affine)
    assert np.array_equal(np.asarray(written.dataobj) > 0, np.asarray(source.dataobj) > 0)


@needs_fixtures
def test_dicom_series_sorted_by_position_with_rescale() -> None:
    series = read_image(SHARED / "dicom-ct-series")
    assert series.array.shape == (20, 512, 512)
    assert nib.aff2axcodes(series.affine) == ("L", "P", "S")
    files = sorted((SHARED / "dicom-ct-series").glob("*.dcm"))
    datasets = sorted((pydicom.dcmread(f) for f in files), key=lambda d: float(d.ImagePositionPatient[2]))
    first = datasets[0]
    expected = first.pixel_array * float(first.RescaleSlope) + float(first.RescaleIntercept)
    assert np.array_equal(series.array[0], expected.astype(np.float32))  # display slice == radiological view
