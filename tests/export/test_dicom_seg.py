import importlib.util
import random
from pathlib import Path

import numpy as np
import pydicom
import pytest

from coinseg.config import ConfigError
from coinseg.export import dicom_seg
from coinseg.export.dicom_seg import (
    DicomSegError,
    DicomSegUnavailable,
    frames_from_series_volume,
    parse_code,
    sort_by_position,
    write_dicom_seg,
)

SERIES = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "dicom-ct-series"
SERIES = SERIES if SERIES.is_dir() else Path("/work/shared/data/dicom-ct-series")
needs_series = pytest.mark.skipif(not SERIES.is_dir(), reason="shared DICOM fixture not present")


def _files():
    return sorted(SERIES.glob("*.dcm"))


def _with_uids(tmp_path):
    """The shared series (anonymised: study and series UIDs blanked) with the UIDs a PACS export carries,
    written to tmp_path in a shuffled order of file names; the real geometry is kept."""
    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    folder = tmp_path / "series"
    folder.mkdir()
    files = _files()
    names = [f"x{i:02d}.dcm" for i in range(len(files))]
    random.Random(0).shuffle(names)
    out = []
    for file, name in zip(files, names, strict=True):
        ds = pydicom.dcmread(file)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.save_as(folder / name)
        out.append(folder / name)
    return sorted(out)


@needs_series
def test_seg_frames_sit_at_their_source_slices(tmp_path):
    pytest.importorskip("highdicom")
    files = _with_uids(tmp_path)
    shuffled = files[:]
    random.Random(1).shuffle(shuffled)  # order of the files given must not matter
    ordered = sort_by_position([pydicom.dcmread(f, stop_before_pixels=True) for f in files])
    n, rows, cols = len(ordered), int(ordered[0].Rows), int(ordered[0].Columns)
    mask = np.zeros((n, rows, cols), bool)
    lesion_frames = [4, 5, 13]
    mask[4, 200:220, 300:310] = True
    mask[5, 201:219, 302:309] = True
    mask[13, 10:12, 500:512] = True
    out = write_dicom_seg(shuffled, mask, tmp_path / "seg" / "lesion.dcm")

    seg = pydicom.dcmread(out)
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert "RESEARCH USE ONLY" in seg.SeriesDescription and "RESEARCH USE ONLY" in seg.ContentDescription
    segment = seg.SegmentSequence[0]
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "108369006"
    assert segment.AnatomicRegionSequence[0].CodeValue == "64033007"
    assert segment.SegmentAlgorithmType == "AUTOMATIC" and segment.SegmentAlgorithmName == "coinseg"
    assert seg.FrameOfReferenceUID == ordered[0].FrameOfReferenceUID

    frames = seg.pixel_array.reshape(-1, rows, cols).astype(bool)
    index_of = {ds.file_meta.MediaStorageSOPInstanceUID: k for k, ds in enumerate(ordered)}  # blank in the dataset
    found = []
    for frame, pixels in zip(seg.PerFrameFunctionalGroupsSequence, frames, strict=True):
        k = index_of[frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        found.append(k)
        position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(position, [float(v) for v in ordered[k].ImagePositionPatient], atol=1e-3)
        np.testing.assert_array_equal(pixels, mask[k])
    assert sorted(found) == lesion_frames


@needs_series
def test_a_mask_of_the_read_volume_lands_at_the_same_world_position(tmp_path):
    """Volume voxel -> world (reader's RAS affine) equals SEG frame pixel -> world (its own LPS geometry)."""
    pytest.importorskip("highdicom")
    from coinseg.io.dicom import read_series

    files = _with_uids(tmp_path)
    series = read_series(files[0].parent)
    volume_mask = np.zeros(series.data.shape, bool)
    voxel = (400, 120, 6)  # column 400, row 120, 7th slice from the lowest position
    volume_mask[voxel] = True
    seg = pydicom.dcmread(write_dicom_seg(files, frames_from_series_volume(volume_mask), tmp_path / "p.dcm"))
    frame = seg.PerFrameFunctionalGroupsSequence[0]
    r, c = np.argwhere(seg.pixel_array.reshape(-1, 512, 512)[0])[0]
    origin = np.array([float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient])
    orientation = np.array(
        [float(v) for v in seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient]
    )
    spacing = [float(v) for v in seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing]
    lps = origin + c * spacing[1] * orientation[:3] + r * spacing[0] * orientation[3:]
    ras = series.affine @ np.array([*voxel, 1.0])
    np.testing.assert_allclose(lps * [-1, -1, 1], ras[:3], atol=1e-3)


@needs_series
def test_an_empty_mask_gives_a_seg_with_empty_frames(tmp_path):
    pytest.importorskip("highdicom")
    seg = pydicom.dcmread(write_dicom_seg(_with_uids(tmp_path), np.zeros((20, 512, 512), bool), tmp_path / "e.dcm"))
    assert int(seg.NumberOfFrames) == 20 and not seg.pixel_array.any()


@needs_series
def test_bad_inputs_are_named(tmp_path):
    pytest.importorskip("highdicom")
    with pytest.raises(DicomSegError, match=r"slice\d+.dcm: StudyInstanceUID is empty"):
        write_dicom_seg(_files(), np.zeros((20, 512, 512), bool), tmp_path / "a.dcm")
    files = _with_uids(tmp_path)
    with pytest.raises(DicomSegError, match=r"mask shape \(3, 512, 512\)"):
        write_dicom_seg(files, np.zeros((3, 512, 512), bool), tmp_path / "a.dcm")
    junk = tmp_path / "junk.dcm"
    junk.write_text("not dicom")
    with pytest.raises(DicomSegError, match="junk.dcm"):
        write_dicom_seg([*files, junk], np.zeros((21, 512, 512), bool), tmp_path / "a.dcm")
    existing = tmp_path / "b.dcm"
    existing.write_text("user file")
    with pytest.raises(FileExistsError):
        write_dicom_seg(files, np.zeros((20, 512, 512), bool), existing)
    assert existing.read_text() == "user file"


def test_missing_highdicom_is_one_line(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(dicom_seg.importlib.util, "find_spec", lambda n: None if n == "highdicom" else real(n))
    with pytest.raises(DicomSegUnavailable, match=r"pip install 'coinseg\[dicom-seg\]'"):
        write_dicom_seg([], np.zeros((0, 1, 1), bool), tmp_path / "x.dcm")


def test_parse_code():
    assert parse_code("SCT:126885006:Neoplasm of liver") == ("SCT", "126885006", "Neoplasm of liver")
    with pytest.raises(ConfigError, match="SCHEME:VALUE:MEANING"):
        parse_code("108369006")
