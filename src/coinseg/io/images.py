"""Read 2-D slices and 3-D volumes; write masks. Every reader returns the array with its geometry.

Intensity conventions: ``.npy``, NIfTI and DICOM are Hounsfield units (DICOM rescale slope/intercept
applied); PNG/TIFF are already-windowed grey values, returned scaled to [0, 1] (``intensity == "unit"``).

Channel rules for PNG/TIFF (always one 2-D grey slice): grey, grey+alpha (alpha ignored) and 16-bit grey are
read as is; a palette image is looked up through its palette; RGB/RGBA (alpha ignored) is accepted only when
R = G = B (a grey image stored as colour) and refused otherwise, as is a multi-page TIFF. A ``.npy`` is a 2-D
slice; a 3-D ``.npy`` is a stack of slices that only a manifest ``slice`` index can address
(:func:`read_standalone` refuses it).

Volumes are reoriented with their affine (nibabel) and axial slices are returned in radiological display
orientation (anterior up, patient right on the image left), shape Z x H x W. The slice index Z counts in the
file's own stored order along whichever stored axis is closest to superior-inferior (the third axis of most
NIfTI files, the first of KiTS files; for a DICOM series, slices sorted by position along the slice normal), so
a manifest's ``slice`` column means the same index a viewer shows for the file. :func:`slices_to_volume`
inverts that exactly, so masks are written with the input's own affine and shape.

A 3-D ``.npy`` (e.g. a ``coinseg prepare`` slice store, N x H x W) is memory-mapped, not read: its array keeps
the stored dtype and is converted to float32 one slice at a time by the consumer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from coinseg.errors import CoinsegError
from coinseg.io.files import atomic_file

Intensity = Literal["hu", "unit"]

SLICE_SUFFIXES = (".npy", ".png", ".tif", ".tiff", ".dcm", ".nii", ".nii.gz")
GREY_SUFFIXES = (".png", ".tif", ".tiff")  # already-windowed grey values; every other input is HU
# How to name an intensity kind to a user.
KIND_NAMES = {"hu": "HU images (.npy, NIfTI, DICOM)", "unit": "grey-value images (PNG, TIFF)"}


class ImageReadError(CoinsegError):
    """An image cannot be read or has an unexpected shape; the message names the file."""


@dataclass(frozen=True)
class Image:
    """A 2-D slice (H x W) or a 3-D volume as axial slices (Z x H x W), float32.

    ``intensity``: "hu" (Hounsfield units) or "unit" (grey values in [0, 1]). ``affine``: the 4x4 voxel-to-world
    matrix of the source file (NIfTI or DICOM series), None for plain 2-D files. ``shape``: the source array's
    shape, needed to write a mask back in the same geometry.
    """

    array: np.ndarray
    intensity: Intensity
    affine: np.ndarray | None = None
    shape: tuple[int, ...] | None = None

    @property
    def is_volume(self) -> bool:
        return self.array.ndim == 3


def suffix_of(path: Path) -> str:
    """Lower-case suffix, with ``.nii.gz`` as one suffix."""
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def intensity_for(path: Path) -> Intensity:
    """The intensity kind a file (or DICOM series folder) is read with, from its suffix alone."""
    return "unit" if path.is_file() and suffix_of(path) in GREY_SUFFIXES else "hu"


def read_image(path: Path) -> Image:
    """Read one image file or a DICOM series folder. Raises :class:`ImageReadError` naming the file."""
    if path.is_dir():
        return read_dicom_series(path)
    suffix = suffix_of(path)
    try:
        if suffix == ".npy":
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            lazy = array.ndim == 3 and np.issubdtype(array.dtype, np.number) and not np.iscomplexobj(array)
            image = Image(array if lazy else _float(array, path), "hu", shape=array.shape)
        elif suffix in GREY_SUFFIXES:
            image = Image(_read_grey(path), "unit")
        elif suffix == ".dcm":
            image = Image(_read_dicom(path), "hu")
        elif suffix in (".nii", ".nii.gz"):
            image = _read_nifti(path)
        else:
            raise ImageReadError(f"{path}: unsupported file type (use one of {', '.join(SLICE_SUFFIXES)})")
    except ImageReadError:
        raise
    except MemoryError:
        raise ImageReadError(f"{path}: too large to fit in memory") from None
    except Exception as exc:  # noqa: BLE001 - any reader failure is reported as unreadable
        raise ImageReadError(f"{path}: unreadable image ({type(exc).__name__}: {exc})") from None
    if image.array.ndim == 3 and image.array.shape[0] == 1 and not isinstance(image.array, np.memmap):
        image = Image(image.array[0], image.intensity, image.affine, image.shape)
    if image.array.ndim not in (2, 3) or min(image.array.shape) < 2:
        raise ImageReadError(f"{path}: expected a 2-D slice or a 3-D volume, got shape {image.array.shape}")
    return image


def read_standalone(path: Path) -> Image:
    """Read an image used on its own, without a slice index: a 2-D slice, or a volume with its geometry (NIfTI,
    DICOM series). A 3-D array without geometry (a ``.npy`` stack) is refused: it has no affine to write a mask
    back with, and an H x W x 3 colour array would look the same."""
    image = read_image(path)
    if image.is_volume and image.affine is None:
        raise ImageReadError(
            f"{path}: a .npy is one 2-D slice, got shape {image.array.shape} (address a 3-D .npy slice stack "
            "through a manifest 'slice' column; give volumes as NIfTI or DICOM)"
        )
    return image


def read_slice(path: Path, index: int | None = None) -> Image:
    """Read a 2-D slice, or axial slice ``index`` of a volume. Raises if the result is not 2-D."""
    image = read_image(path)
    if index is not None:
        if not image.is_volume:
            raise ImageReadError(f"{path}: a slice index was given but the image is 2-D")
        if not 0 <= index < image.array.shape[0]:
            raise ImageReadError(f"{path}: slice {index} outside 0..{image.array.shape[0] - 1}")
        return Image(image.array[index], image.intensity, image.affine, image.shape)
    if image.is_volume:
        raise ImageReadError(f"{path}: expected a 2-D slice, got a volume of shape {image.array.shape}")
    return image


def _float(array: np.ndarray, path: Path) -> np.ndarray:
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise ImageReadError(f"{path}: not a real-valued numeric array (dtype {array.dtype})")
    out = np.asarray(array, dtype=np.float32)
    if not np.isfinite(out).all():
        raise ImageReadError(f"{path}: contains NaN or infinite values")
    return out


def _read_grey(path: Path) -> np.ndarray:
    from PIL import Image as PILImage

    if suffix_of(path) in (".tif", ".tiff"):
        import tifffile

        array = np.asarray(tifffile.imread(path))
    else:
        with PILImage.open(path) as pil:
            # a palette image: look the indices up in the palette
            array = np.asarray(pil.convert("RGBA") if pil.mode in ("P", "PA") else pil)
    if array.ndim == 3 and array.shape[-1] in (2, 3, 4):
        channels = array[..., :1] if array.shape[-1] == 2 else array[..., :3]  # drop alpha
        if channels.shape[-1] == 3 and not (channels == channels[..., :1]).all():
            raise ImageReadError(f"{path}: a colour image (R, G, B differ); save the slice as a greyscale image")
        array = channels[..., 0]
    if array.ndim != 2:
        raise ImageReadError(f"{path}: expected one 2-D grey image, got an array of shape {array.shape}")
    if np.issubdtype(array.dtype, np.integer):
        scale = float(np.iinfo(array.dtype).max)
    else:
        scale = 1.0
    return np.clip(array.astype(np.float32) / scale, 0.0, 1.0)


def _read_dicom(path: Path) -> np.ndarray:
    import pydicom

    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array.astype(np.float32)
    slope = float(getattr(ds, "RescaleSlope", 1.0))
    intercept = float(getattr(ds, "RescaleIntercept", 0.0))
    return pixels * slope + intercept


def _read_nifti(path: Path) -> Image:
    import nibabel as nib

    img: Any = nib.load(path)
    data = np.asanyarray(img.dataobj).astype(np.float32)
    shape = tuple(int(s) for s in data.shape)
    affine = np.asarray(img.affine, dtype=np.float64)
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim != 3:
        raise ImageReadError(f"{path}: expected a 2-D or 3-D NIfTI image, got shape {shape}")
    return Image(volume_to_slices(data, affine), "hu", affine, shape)


def read_dicom_series(folder: Path) -> Image:
    """Read a folder of single-slice DICOM files as one volume (see :mod:`coinseg.io.dicom`)."""
    from coinseg.io.dicom import read_series

    series = read_series(folder)
    return Image(volume_to_slices(series.data, series.affine), "hu", series.affine, series.data.shape)


def _orientation_to_ras(affine: np.ndarray) -> np.ndarray:
    import nibabel as nib

    return nib.orientations.ornt_transform(
        nib.orientations.io_orientation(affine), nib.orientations.axcodes2ornt("RAS")
    )


def volume_to_slices(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """X x Y x Z voxel array (any orientation) -> Z x H x W axial slices, radiological display orientation."""
    import nibabel as nib

    ras = nib.orientations.apply_orientation(data, _orientation_to_ras(affine))
    # RAS: axis 0 left->right, axis 1 posterior->anterior. Display rows anterior first, columns patient right first.
    slices = np.transpose(ras, (2, 1, 0))[:, ::-1, ::-1]
    return np.ascontiguousarray(slices[::-1] if _stored_inferior(affine) else slices)


def _stored_inferior(affine: np.ndarray) -> bool:
    """True when the stored axis closest to superior-inferior runs towards inferior (RAS puts it in reverse)."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    return bool(ornt[ornt[:, 0] == 2, 1][0] < 0)


def slices_to_volume(slices: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Inverse of :func:`volume_to_slices`: Z x H x W display slices -> voxel array in the source orientation."""
    import nibabel as nib

    ordered = slices[::-1] if _stored_inferior(affine) else slices
    ras = np.transpose(ordered[:, ::-1, ::-1], (2, 1, 0))
    back = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt("RAS"), nib.orientations.io_orientation(affine)
    )
    return np.ascontiguousarray(nib.orientations.apply_orientation(ras, back))


def write_png_mask(mask: np.ndarray, path: Path) -> None:
    """Write a bool H x W mask as an 8-bit PNG with values 0/255 (atomically)."""
    from PIL import Image as PILImage

    with atomic_file(path) as tmp:
        PILImage.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(tmp, format="PNG")


def to_source_volume(slices: np.ndarray, image: Image) -> np.ndarray:
    """Z x H x W display slices of ``image`` (a volume) -> its source voxel array (shape ``image.shape``)."""
    if image.affine is None or image.shape is None:
        raise ValueError("mapping slices back to a volume needs the source image's affine and shape")
    return slices_to_volume(slices, image.affine).reshape(image.shape)


def write_nifti(volume: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write a voxel array (in its source file's stored order) with ``affine`` as NIfTI, atomically; bool arrays
    are written as uint8 0/1."""
    import nibabel as nib

    data = volume.astype(np.uint8) if volume.dtype == bool else volume
    with atomic_file(path, ".nii.gz") as tmp:
        nib.save(nib.Nifti1Image(data, affine), tmp)
