"""Fixtures of the reliability catalogue (``../shared/docs/reliability-cases.md``), built in a probe folder.

``python benchmarks/reliability_fixtures.py PROBE`` expects ``PROBE/data`` (``coinseg synth data --n-slices 200
--size 64``) and writes beside it: ``data2/`` (a copy), ``m/*.csv`` (copies of the manifest, one defect each),
``fx/img/*`` (bad and odd images), ``fx/dcmseries/`` (a 4-file DICOM series), ``fx/bigdir/`` (20 links to a
4000 x 4000 slice), ``sec/`` (hostile file names) and the settings YAMLs ``tiny``, ``fast``, ``resume``,
``resume2``, ``clfres``, ``clflong`` and ``cfg/*.yaml``.
"""

from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image as PILImage

CONFIGS = {
    "tiny.yaml": "classifier:\n  max_steps: 2\n  eval_every: 1\n  batch_size: 8\ngan:\n  max_steps: 2\n  batch_size: 4\n",
    "fast.yaml": "classifier:\n  max_steps: 40\n  eval_every: 20\ngan:\n  max_steps: 20\n  val_every: 10\n"
    "  sample_every: 10\n  log_every: 5\n",
    "resume.yaml": "gan:\n  enc_widths: [8, 16, 32, 64]\n  stem_width: 8\n  disc_widths: [8, 16, 32, 64]\n"
    "  max_steps: 12\n  log_every: 3\n  val_every: 3\n  sample_every: 3\n  batch_size: 4\n",
    "resume2.yaml": "gan:\n  enc_widths: [8, 16, 32, 64]\n  stem_width: 8\n  disc_widths: [8, 16, 32, 64]\n"
    "  max_steps: 12\n  log_every: 1\n  val_every: 4\n  sample_every: 4\n  batch_size: 4\n",
    "clfres.yaml": "classifier:\n  max_steps: 20\n  eval_every: 5\n  batch_size: 16\n",
    "clflong.yaml": "classifier:\n  max_steps: 400\n  eval_every: 20\n  batch_size: 16\n",
    "cfg/unknown.yaml": "gan:\n  lr_typo: 1\n",
    "cfg/lr_str.yaml": 'classifier:\n  lr: "abc"\n  max_steps: 2\n',
    "cfg/bs_str.yaml": 'classifier:\n  batch_size: "8"\n  max_steps: 2\n',
    "cfg/bs0.yaml": "classifier:\n  batch_size: 0\n  max_steps: 2\n",
    "cfg/size10.yaml": "data:\n  size: 10\nclassifier:\n  max_steps: 2\n",
    "cfg/betas1.yaml": "gan:\n  betas: [0.5]\n  max_steps: 2\n",
    "cfg/pyobj.yaml": "classifier: !!python/object/apply:os.system ['touch PWNED']\n",
    "cfg/list.yaml": "- 1\n- 2\n",
    "cfg/sect_list.yaml": "classifier: [1, 2]\n",
    "cfg/negsteps.yaml": "classifier:\n  max_steps: -5\n",
    "cfg/window_rev.yaml": "data:\n  window: [300, 100]\nclassifier:\n  max_steps: 2\n",
    "cfg/broken.yaml": "classifier: {max_steps: 2\n",
    "cfg/pct_rev.yaml": "data:\n  percentiles: [99, 1]\nclassifier:\n  max_steps: 2\n",
}


def dicom(path: Path, pixels: np.ndarray, z: float = 0.0, keep_pixels: bool = True) -> None:
    """A CT DICOM slice (int16 stored, rescale -1024) at height ``z`` mm."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, meta.MediaStorageSOPInstanceUID, "CT"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.ImagePositionPatient = [0.0, 0.0, z]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.8, 0.8]
    ds.SliceThickness = 2.5
    if keep_pixels:
        ds.PixelData = (pixels + 1024).astype(np.int16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def rows_of(manifest: Path) -> tuple[list[str], list[dict[str, str]]]:
    with manifest.open(newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def write_rows(path: Path, columns: list[str], rows: list[dict[str, str]], encoding: str = "utf-8") -> None:
    with path.open("w", newline="", encoding=encoding) as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def build(probe: Path) -> None:
    data = probe / "data"
    shutil.copytree(data, probe / "data2")
    for name, text in CONFIGS.items():
        (probe / name).parent.mkdir(parents=True, exist_ok=True)
        (probe / name).write_text(text)
    img = probe / "fx" / "img"
    img.mkdir(parents=True)
    slice0 = np.load(data / "images" / "slice_00000.npy")
    grey = np.clip((slice0 + 160) / 400 * 255, 0, 255).astype(np.uint8)
    # .npy
    np.save(img / "good.npy", slice0)
    (img / "trunc.npy").write_bytes((img / "good.npy").read_bytes()[:2000])
    np.save(img / "nan.npy", np.where(np.arange(slice0.size).reshape(slice0.shape) == 5, np.nan, slice0))
    np.save(img / "inf.npy", np.where(np.arange(slice0.size).reshape(slice0.shape) == 5, np.inf, slice0))
    np.save(img / "boolimg.npy", slice0 > 0)
    np.save(img / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (img / "empty.npy").write_bytes(b"")
    np.save(img / "vol3d.npy", np.stack([slice0] * 5))
    np.save(img / "rgb_hw3.npy", np.stack([slice0] * 3, axis=-1))
    np.save(img / "one.npy", np.zeros((1, 1), np.float32))
    np.save(img / "big.npy", np.resize(slice0, (4000, 4000)).astype(np.float32))
    # PNG
    PILImage.fromarray(grey).save(img / "grey8.png")
    PILImage.fromarray(grey.astype(np.uint16) * 257).save(img / "grey16.png")
    PILImage.fromarray(np.stack([grey] * 3, -1), "RGB").save(img / "rgb.png")
    PILImage.fromarray(np.stack([grey] * 3 + [np.full_like(grey, 255)], -1), "RGBA").save(img / "rgba.png")
    PILImage.fromarray(np.stack([grey, np.full_like(grey, 255)], -1), "LA").save(img / "la.png")
    pal = PILImage.fromarray(grey, "P")
    pal.putpalette([v for i in range(256) for v in (i, i, i)])
    pal.save(img / "palette.png")
    inv = PILImage.fromarray((255 - grey).astype(np.uint8), "P")
    inv.putpalette([v for i in range(256) for v in (255 - i,) * 3])
    inv.save(img / "palette_inv.png")
    (img / "text.png").write_text("not an image\n")
    # DICOM
    dicom(img / "good.dcm", slice0.astype(np.int16))
    (img / "corrupt.dcm").write_bytes((img / "good.dcm").read_bytes()[:400])
    dicom(img / "nopixel.dcm", slice0.astype(np.int16), keep_pixels=False)
    (img / "garbage.dcm").write_bytes(np.random.default_rng(0).bytes(4096))
    series = probe / "fx" / "dcmseries"
    series.mkdir()
    for k in range(4):
        dicom(series / f"s{k}.dcm", np.load(data / "images" / f"slice_{k:05d}.npy").astype(np.int16), z=2.5 * k)
    # NIfTI
    vol = np.stack([np.load(data / "images" / f"slice_{k:05d}.npy") for k in range(6)], axis=-1)
    nib.save(nib.Nifti1Image(vol, np.diag([0.8, 0.8, 2.5, 1.0])), img / "vol3d.nii.gz")
    nib.save(nib.Nifti1Image(np.stack([vol, vol], -1), np.eye(4)), img / "vol4d.nii.gz")
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    oblique = np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 2.5, 0], [0, 0, 0, 1.0]])
    nib.save(nib.Nifti1Image(vol, oblique), img / "oblique.nii.gz")
    swapped = np.array([[0, 0.8, 0, 0], [-0.8, 0, 0, 0], [0, 0, -2.5, 0], [0, 0, 0, 1.0]])
    nib.save(nib.Nifti1Image(vol, swapped), img / "swapped.nii.gz")
    big = probe / "fx" / "bigdir"
    big.mkdir()
    for k in range(20):
        (big / f"big{k:02d}.npy").symlink_to((img / "big.npy").resolve())
    unicode_dir = probe / "fx" / "sp ace" / "ünï cødé"
    unicode_dir.mkdir(parents=True)
    shutil.copy(data / "images" / "slice_00000.npy", unicode_dir / "slice 0 ü.npy")
    manifests(probe)
    hostile(probe)


def manifests(probe: Path) -> None:
    m = probe / "m"
    m.mkdir()
    columns, rows = rows_of(probe / "data" / "manifest.csv")
    for row in rows:
        for key in ("image", "mask", "organ"):
            row[key] = f"../data/{row[key]}"

    def variant(name: str, changed: list[dict[str, str]], cols: list[str] | None = None) -> None:
        write_rows(m / name, cols or columns, changed)

    def edit(index: int, **values: str) -> list[dict[str, str]]:
        out = [dict(r) for r in rows]
        out[index].update(values)
        return out

    variant("good.csv", rows)
    (m / "empty.csv").write_text("")
    (m / "header_only.csv").write_text(",".join(columns) + "\n")
    variant(
        "nolabel.csv",
        [{k: v for k, v in r.items() if k != "label"} for r in rows],
        [c for c in columns if c != "label"],
    )
    variant("label2.csv", edit(5, label="2"))
    variant("labelyes.csv", edit(5, label="yes"))
    variant("labelnan.csv", edit(5, label="NaN"))
    variant("split_bogus.csv", edit(5, split="training"))
    variant("split_upper.csv", edit(5, split="Train"))
    variant("dups.csv", [*rows, dict(rows[0], split="train"), dict(rows[0], split="test")])
    variant("oneclass.csv", [r for r in rows if not (r["split"] == "train" and r["label"] == "1")])
    variant("unicode.csv", edit(0, image="../fx/sp ace/ünï cødé/slice 0 ü.npy"))
    variant("abspath.csv", edit(0, image=str((probe / "data" / "images" / "slice_00000.npy").resolve())))
    variant("dir_as_image.csv", edit(0, image="../data/images"))
    variant("dir_as_mask.csv", edit(0, mask="../data/masks"))
    shutil.copy(probe / "fx" / "img" / "grey8.png", m / "png_as.csv")
    text = (m / "good.csv").read_text()
    (m / "bom.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    (m / "crlf.csv").write_bytes(text.replace("\n", "\r\n").encode())
    (m / "semicolon.csv").write_text(text.replace(",", ";"))
    latin = edit(0, organ="../data/organs/slice_00000.npy", extra="é")
    write_rows(m / "latin1.csv", [*columns, "extra"], latin, encoding="latin-1")
    with (m / "big100k.csv").open("w") as handle:
        handle.write("image,label,split\n")
        for k in range(100_000):
            handle.write(f"../data/images/slice_00001.npy,{k % 2},{('train', 'val', 'test')[k % 3]}\n")
    # images in place of row 1
    for name in ("trunc", "nan", "inf", "vol3d", "one", "boolimg", "obj", "empty"):
        variant(f"img_{name}_npy.csv", edit(0, image=f"../fx/img/{name}.npy"))
    variant("img_text_png.csv", edit(0, image="../fx/img/text.png"))
    variant("img_corrupt_dcm.csv", edit(0, image="../fx/img/corrupt.dcm"))
    variant("img_nopixel_dcm.csv", edit(0, image="../fx/img/nopixel.dcm"))
    variant("img_garbage_dcm.csv", edit(0, image="../fx/img/garbage.dcm"))
    variant("img_vol4d_nii_gz.csv", edit(0, image="../fx/img/vol4d.nii.gz"))
    variant("mixed.csv", edit(0, image="../fx/img/grey8.png"))
    variant("png_la.csv", edit(0, image="../fx/img/la.png"))
    np.save(m / "mask_small.npy", np.zeros((32, 32), np.uint8))
    variant("mask_shape.csv", edit(3, mask="mask_small.npy"))
    # a PNG manifest: every slice windowed to 8-bit grey
    pngs = m / "png"
    pngs.mkdir()
    png_rows = []
    for row in rows:
        name = Path(row["image"]).stem
        hu = np.load(m / row["image"])
        PILImage.fromarray(np.clip((hu + 160) / 400 * 255, 0, 255).astype(np.uint8)).save(pngs / f"{name}.png")
        png_rows.append(dict(row, image=f"png/{name}.png"))
    variant("png_good.csv", png_rows)


def hostile(probe: Path) -> None:
    sec = probe / "sec"
    imgs = sec / "imgs"
    imgs.mkdir(parents=True)
    good = probe / "fx" / "img" / "good.npy"
    for name in ("<script>alert(1)<\\script>.npy", "$(touch PWNED2).npy", "=HYPERLINK(1).npy"):
        shutil.copy(good, imgs / name.replace("/", "_"))
    trav = sec / "a" / "b"
    trav.mkdir(parents=True)
    shutil.copy(good, sec / "x.npy")
    (trav / "trav.csv").write_text(
        "image,label,split\n../../x.npy,0,test\n../../../data/images/slice_00000.npy,0,test\n"
    )
    xss = sec / "<img src=x onerror=alert(1)>"
    xss.mkdir()
    _, rows = rows_of(probe / "m" / "good.csv")
    with (xss / "man.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"../../m/{v}" if k in ("image", "mask", "organ") else v) for k, v in row.items()})
    inj = sec / "csvinj"
    inj.mkdir()
    name = '=HYPERLINK("http:||evil.example";"open").npy'
    shutil.copy(good, inj / name)
    quoted = name.replace('"', '""')
    (inj / "man.csv").write_text(f'image,label,split\n"{quoted}",0,test\n')


if __name__ == "__main__":
    build(Path(sys.argv[1]))
