"""Training reads a prepared store lazily; manifests open each file once; slice indices follow the file."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from coinseg.data import manifest as manifest_module
from coinseg.data import slices as slices_module
from coinseg.data.manifest import read_manifest
from coinseg.data.slices import LazySlices, load_slices, read_entry


def _store(tmp_path: Path, n: int = 6) -> Path:
    folder = tmp_path / "store" / "c"
    folder.mkdir(parents=True)
    image = (np.arange(n * 20 * 24, dtype=np.int16).reshape(n, 20, 24) % 400) - 200
    np.save(folder / "image.npy", image)
    np.save(folder / "lesion.npy", (image > 150).astype(np.uint8))
    rows = ["image,label,split,slice,case,mask"] + [
        f"store/c/image.npy,{k % 2},train,{k},c,store/c/lesion.npy" for k in range(n)
    ]
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "manifest.csv"


def test_lazy_view_equals_the_in_memory_tensor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entries = read_manifest(_store(tmp_path))
    eager = load_slices(entries, 16, (-200.0, 200.0))
    assert isinstance(eager.images, torch.Tensor)
    monkeypatch.setattr(slices_module, "LAZY_BYTES", 0)
    lazy = load_slices(entries, 16, (-200.0, 200.0))
    assert isinstance(lazy.images, LazySlices) and len(lazy.images) == 6
    assert lazy.shapes == eager.shapes == [(20, 24)] * 6
    idx = torch.tensor([5, 0, 3])
    assert torch.equal(lazy.images[idx], eager.images[idx])
    assert torch.equal(lazy.images[1:4], eager.images[1:4]) and torch.equal(lazy.images[2], eager.images[2])
    assert lazy.images[idx].shape == (3, 1, 16, 16)


def test_store_is_memory_mapped_and_opened_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = _store(tmp_path)
    calls: list[Path] = []
    real = manifest_module.read_image
    monkeypatch.setattr(manifest_module, "read_image", lambda p: calls.append(p) or real(p))
    entries = read_manifest(manifest)
    assert len(entries) == 6 and calls == [(tmp_path / "store/c/image.npy").resolve()]
    assert isinstance(slices_module.cached_image(entries[0].image).array, np.memmap)
    assert read_entry(entries[4]).shape == (20, 24)


def test_nifti_slice_counts_along_the_files_own_axis(tmp_path: Path) -> None:
    data = np.zeros((4, 5, 6), np.float32)
    for k in range(6):
        data[..., k] = k
    affine = np.diag([1.0, 1.0, -2.0, 1.0])  # third axis stored superior -> inferior
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "v.nii.gz")
    (tmp_path / "m.csv").write_text("image,label,slice\nv.nii.gz,0,1\nv.nii.gz,1,4\n")
    entries = read_manifest(tmp_path / "m.csv")
    assert [float(read_entry(e).mean()) for e in entries] == [1.0, 4.0]
