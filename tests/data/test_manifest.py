"""Each manifest error gets its own one-line message naming the row and the path."""

from pathlib import Path

import numpy as np
import pytest

from coinseg.data.manifest import ManifestError, duplicate_problems, read_manifest, select_split, training_splits


def _write(root: Path, rows: list[str], header: str = "image,label,split") -> Path:
    for i in range(4):
        np.save(root / f"s{i}.npy", np.full((8, 8), 10.0 * i, np.float32))
    path = root / "manifest.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _error(root: Path, rows: list[str], header: str = "image,label,split") -> str:
    with pytest.raises(ManifestError) as info:
        entries = read_manifest(_write(root, rows, header))
        training_splits(entries, root / "manifest.csv")
    message = str(info.value)
    assert "\n" not in message
    return message


def test_valid_manifest(tmp_path: Path) -> None:
    entries = read_manifest(_write(tmp_path, ["s0.npy,0,train", "s1.npy,1,train", "s2.npy,1,val", "s3.npy,0,test"]))
    assert [e.label for e in entries] == [0, 1, 1, 0]
    assert entries[0].image == (tmp_path / "s0.npy").resolve()
    assert entries[2].split == "val" and entries[2].row == 3


def test_missing_file(tmp_path: Path) -> None:
    assert _error(tmp_path, ["s0.npy,0,train", "nope.npy,1,train"]).endswith("row 2: image file not found: nope.npy")


def test_unreadable_image(tmp_path: Path) -> None:
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    message = _error(tmp_path, ["bad.npy,0,train"])
    assert "row 1" in message and "bad.npy: unreadable image" in message


def test_label_outside_zero_one(tmp_path: Path) -> None:
    assert "row 1 (s0.npy): label '2' is not 0 or 1" in _error(tmp_path, ["s0.npy,2,train"])


def test_unknown_split(tmp_path: Path) -> None:
    assert "row 1 (s0.npy): unknown split 'dev'" in _error(tmp_path, ["s0.npy,0,dev"])


def test_empty_split(tmp_path: Path) -> None:
    assert "the 'train' split is empty" in _error(tmp_path, ["s0.npy,0,test", "s1.npy,1,test"])


def test_training_split_with_one_class(tmp_path: Path) -> None:
    message = _error(tmp_path, ["s0.npy,0,train", "s1.npy,0,train", "s2.npy,1,val"])
    assert "the 'train' split has only label 0 (2 rows)" in message


def test_non_2d_image_where_a_slice_is_expected(tmp_path: Path) -> None:
    np.save(tmp_path / "v.npy", np.zeros((2, 3, 4, 5), np.float32))
    assert "expected a 2-D slice or a 3-D volume, got shape (2, 3, 4, 5)" in _error(tmp_path, ["v.npy,0,train"])


def test_slice_index_on_a_2d_image(tmp_path: Path) -> None:
    message = _error(tmp_path, ["s0.npy,0,train,3"], header="image,label,split,slice")
    assert "row 1 (s0.npy): a slice index was given but the image is 2-D" in message


def test_missing_required_column(tmp_path: Path) -> None:
    assert "missing required column 'label'" in _error(tmp_path, ["s0.npy,train"], header="image,split")


def test_missing_val_split_is_held_out_from_train(tmp_path: Path) -> None:
    rows = []
    for i in range(40):
        np.save(tmp_path / f"c{i}.npy", np.zeros((4, 4), np.float32))
        rows.append(f"c{i}.npy,{i % 2},train")
    entries = read_manifest(_write(tmp_path, rows))
    train, val, note = training_splits(entries, tmp_path / "manifest.csv")
    assert val and len(train) + len(val) == 40 and note is not None and "held out" in note
    assert not {e.source for e in train} & {e.source for e in val}


def test_default_split_is_deterministic(tmp_path: Path) -> None:
    path = _write(tmp_path, ["s0.npy,0", "s1.npy,1"], header="image,label")
    assert [e.split for e in read_manifest(path)] == [e.split for e in read_manifest(path)]


def test_mixing_grey_and_hu_images_is_named(tmp_path: Path) -> None:
    from PIL import Image as PILImage

    from coinseg.data.slices import intensity_of

    PILImage.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "g.png")
    entries = read_manifest(_write(tmp_path, ["s0.npy,0,train", "g.png,1,train"]))
    with pytest.raises(ManifestError, match=r"row 2 \(g.png\) mixes grey-value images with HU images"):
        intensity_of(entries, tmp_path / "manifest.csv")
    assert intensity_of(entries[:1], tmp_path / "manifest.csv") == "hu"
    assert intensity_of(entries[1:], tmp_path / "manifest.csv") == "unit"


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = _write(tmp_path, ["s0.npy,0,train", "s1.npy,1,train"])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert [e.label for e in read_manifest(path)] == [0, 1]


def test_a_folder_as_the_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"is a folder, expected a CSV file"):
        read_manifest(tmp_path)


def test_a_folder_as_the_mask(tmp_path: Path) -> None:
    (tmp_path / "masks").mkdir()
    message = _error(tmp_path, ["s0.npy,0,train,masks"], header="image,label,split,mask")
    assert "row 1 (s0.npy): mask masks is a folder, expected a file" in message


def test_3d_npy_needs_a_slice_column(tmp_path: Path) -> None:
    np.save(tmp_path / "v.npy", np.zeros((3, 8, 8), np.float32))
    message = _error(tmp_path, ["v.npy,0,train"])
    assert "row 1 (v.npy): a .npy is one 2-D slice, got shape (3, 8, 8)" in message
    path = _write(tmp_path, ["v.npy,0,train,2"], header="image,label,split,slice")
    assert [e.slice for e in read_manifest(path)] == [2]  # a slice stack addressed by index stays valid


def test_duplicates_and_split_overlap_are_counted_with_rows(tmp_path: Path) -> None:
    rows = ["s0.npy,0,train", "s1.npy,1,train", "s0.npy,0,train", "s1.npy,1,test", "s2.npy,1,val"]
    path = _write(tmp_path, rows)
    problems = duplicate_problems(read_manifest(path), path)
    assert problems == [
        f"{path}: 2 image(s) listed in more than one row (2 repeated rows; first: rows 1, 3)",
        f"{path}: 1 image(s) in more than one split (test, train; first: rows 2, 4); test results are then not "
        "independent of training",
    ]
    clean = _write(tmp_path, ["s0.npy,0,train", "s1.npy,1,train", "s2.npy,1,val"])
    assert duplicate_problems(read_manifest(clean), clean) == []


def test_select_split_names_an_unknown_split(tmp_path: Path) -> None:
    path = _write(tmp_path, ["s0.npy,0,train"])
    with pytest.raises(ManifestError, match=r"unknown split 'bogus' \(use train, val, test\)"):
        select_split(read_manifest(path), "bogus", path)
