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
    read_standalone,
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


def test_grey_alpha_png_is_read_as_its_grey_channel(tmp_path: Path) -> None:
    grey = np.arange(16, dtype=np.uint8).reshape(4, 4) * 16
    la = np.stack([grey, np.full_like(grey, 7)], axis=-1)
    PILImage.fromarray(la, "LA").save(tmp_path / "la.png")
    image = read_image(tmp_path / "la.png")
    assert not image.is_volume and np.array_equal(image.array, grey / np.float32(255))


def test_palette_png_is_looked_up_through_its_palette(tmp_path: Path) -> None:
    indices = np.array([[0, 1], [2, 255]], np.uint8)
    pil = PILImage.fromarray(indices, "P")
    pil.putpalette([v for i in range(256) for v in (255 - i,) * 3])  # displayed grey = 255 - index
    pil.save(tmp_path / "p.png")
    assert np.array_equal(read_image(tmp_path / "p.png").array, (255 - indices) / np.float32(255))


def test_rgb_png_is_accepted_only_when_grey(tmp_path: Path) -> None:
    grey = np.arange(16, dtype=np.uint8).reshape(4, 4) * 16
    PILImage.fromarray(np.stack([grey] * 3, axis=-1), "RGB").save(tmp_path / "g.png")
    assert np.array_equal(read_image(tmp_path / "g.png").array, grey / np.float32(255))
    colour = np.stack([grey, grey, 255 - grey], axis=-1)
    PILImage.fromarray(colour, "RGB").save(tmp_path / "c.png")
    with pytest.raises(ImageReadError, match=r"c.png: a colour image \(R, G, B differ\)"):
        read_image(tmp_path / "c.png")


def test_multi_page_tiff_is_refused(tmp_path: Path) -> None:
    import tifffile

    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((5, 8, 8), np.uint8))
    with pytest.raises(ImageReadError, match=r"stack.tif: expected one 2-D grey image, got an array of shape"):
        read_image(tmp_path / "stack.tif")


@pytest.mark.parametrize("shape", [(8, 8, 3), (5, 8, 8)])
def test_3d_npy_on_its_own_is_refused(tmp_path: Path, shape: tuple[int, ...]) -> None:
    np.save(tmp_path / "a.npy", np.zeros(shape, np.float32))
    assert read_image(tmp_path / "a.npy").is_volume  # a slice stack, addressable by index
    with pytest.raises(ImageReadError, match=r"a.npy: a .npy is one 2-D slice, got shape"):
        read_standalone(tmp_path / "a.npy")


def test_folder_that_is_not_a_dicom_series_names_the_folder(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.zeros((4, 4), np.float32))
    with pytest.raises(ImageReadError, match=rf"{tmp_path}: no DICOM image slices found \(skipped: a.npy \(not DICOM"):
        read_image(tmp_path)
