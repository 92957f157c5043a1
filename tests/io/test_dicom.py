"""DICOM series folders: extension-less files, stray files, several series."""

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from coinseg.io.dicom import read_series
from coinseg.io.images import ImageReadError, read_image

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data fixtures not present")


def _copy_series(folder: Path, n: int = 6, uid: str | None = None, prefix: str = "IM") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, file in enumerate(sorted((SHARED / "dicom-ct-series").glob("*.dcm"))[:n]):
        if uid is None:
            shutil.copy(file, folder / f"{prefix}{i:04d}")  # no extension
        else:
            ds = pydicom.dcmread(file)
            ds.SeriesInstanceUID = uid
            ds.SeriesDescription = "second"
            ds.save_as(folder / f"{prefix}{i:04d}")


def test_extension_less_files_and_stray_files(tmp_path: Path) -> None:
    _copy_series(tmp_path / "s")
    (tmp_path / "s" / "README.txt").write_text("not dicom")
    series = read_series(tmp_path / "s")
    assert series.data.shape == (512, 512, 6)
    assert series.skipped == ["README.txt (not DICOM: InvalidDicomError)"]
    assert read_image(tmp_path / "s").array.shape == (6, 512, 512)


def test_several_series_listed_or_chosen(tmp_path: Path) -> None:
    _copy_series(tmp_path / "s", 4)
    _copy_series(tmp_path / "s", 3, uid="1.2.3.4", prefix="B")
    with pytest.raises(
        ImageReadError,
        match=r"2 DICOM series in one folder, choose one with --series: .*1\.2\.3\.4 \(3 files, second\)",
    ):
        read_series(tmp_path / "s")
    chosen = read_series(tmp_path / "s", "1.2.3.4")
    assert chosen.data.shape[2] == 3 and chosen.uid == "1.2.3.4"
    with pytest.raises(ImageReadError, match="no series '9.9'"):
        read_series(tmp_path / "s", "9.9")


def test_folder_without_dicom(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "a.txt").write_text("x")
    with pytest.raises(ImageReadError, match=r"no DICOM image slices found \(skipped: a.txt"):
        read_series(tmp_path / "s")


def test_series_order_and_hu_unchanged_by_file_names(tmp_path: Path) -> None:
    _copy_series(tmp_path / "s", 20)
    renamed = read_series(tmp_path / "s")
    original = read_series(SHARED / "dicom-ct-series")
    assert np.array_equal(renamed.data, original.data) and np.allclose(renamed.affine, original.affine)
