"""3D volumes as stacks of display-value slices: NIfTI (nibabel), DICOM series and multi-frame DICOM files.

One window or one intensity range applies to the whole volume, so slices stay comparable. Slices are returned in
radiological display orientation: patient right on the image's left, anterior (axial) or superior (coronal and
sagittal) at the top. DICOM slices keep the acquisition plane; reslicing them needs a NIfTI conversion first.
"""

import os
from pathlib import Path

import numpy as np

from modeling_unimedclip.dicom_unimedclip import (
    Window,
    is_color,
    is_dicom,
    read_pixels,
    resolve_window,
    scale_range,
    to_display,
    window_values,
)

AXES = ("axial", "coronal", "sagittal")
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_volume_path(path: str | os.PathLike) -> bool:
    """A NIfTI file or a directory (of DICOM slices)."""
    return os.path.isdir(path) or str(path).lower().endswith(NIFTI_SUFFIXES)


def load_volume(path: str | os.PathLike, *, window: Window | None = None, axis: str | None = None) -> np.ndarray:
    """Slices of a volume as float64 display values in [0, 255], shape (slices, rows, columns).

    `path` is a NIfTI file, a directory holding one DICOM series, or a multi-frame DICOM file. `window` is a CT
    preset or (center, width) in the volume's units; without one, DICOM files use their own window and NIfTI volumes
    their real intensity range. `axis` (`axial`, `coronal`, `sagittal`; default axial) applies to NIfTI only.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"Volume '{path}' does not exist.")
    if str(path).lower().endswith(NIFTI_SUFFIXES):
        return load_nifti(path, window=window, axis=axis or "axial")
    if axis is not None:
        raise ValueError(
            f"'{path}': DICOM slices are read in their acquisition plane; to view another axis, convert the series "
            "to NIfTI first (e.g. with dcm2niix)."
        )
    if path.is_dir():
        return load_dicom_series(sorted(p for p in path.iterdir() if p.is_file()), window=window)
    if is_dicom(path):
        dataset, name, values = read_pixels(path)
        if is_color(dataset):
            raise ValueError(f"{name} is a colour image, not a grayscale volume.")
        return to_display(values, dataset, window)
    raise ValueError(f"'{path}' is not a volume: expected a NIfTI file, a DICOM file or a directory of DICOM slices.")


def load_nifti(path: str | os.PathLike, *, window: Window | None = None, axis: str = "axial") -> np.ndarray:
    try:
        import nibabel
    except ImportError as error:
        raise ImportError("Reading NIfTI needs nibabel: `pip install nibabel`.") from error
    if axis not in AXES:
        raise ValueError(f"Unknown axis {axis!r}; choose one of {AXES}.")
    try:
        image = nibabel.as_closest_canonical(nibabel.load(path))  # voxel axes become R, A, S (increasing)
        data = np.asarray(image.get_fdata(dtype=np.float64))
    except Exception as error:
        raise ValueError(f"'{path}' is not a readable NIfTI volume: {error}") from error
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"'{path}' has shape {data.shape}: expected a 3D volume.")
    # Index order (slice, row, column); rows run from anterior/superior down, columns from patient right to left.
    if axis == "axial":
        slices = data[::-1, ::-1, :].transpose(2, 1, 0)
    elif axis == "coronal":
        slices = data[::-1, :, ::-1].transpose(1, 2, 0)
    else:
        slices = data[:, ::-1, ::-1].transpose(0, 2, 1)
    return window_values(slices, *resolve_window(window)) if window is not None else scale_range(slices)


def load_dicom_series(files: list[Path], *, window: Window | None = None) -> np.ndarray:
    """Read the DICOM slices among `files`, check they form one consistent series, and stack them by position.

    Files that are not DICOM, and DICOM files without pixel data (such as DICOMDIR), are ignored. Slices are ordered
    by their ImagePositionPatient along the slice normal, not by file name or InstanceNumber.
    """
    slices = []
    for file in files:
        if not is_dicom(file):
            continue
        try:
            dataset, name, values = read_pixels(file)
        except ValueError as error:
            if "has no pixel data" in str(error):
                continue
            raise
        if is_color(dataset) or len(values) != 1:
            raise ValueError(f"{name}: a series slice must be a single-frame grayscale image.")
        slices.append((dataset, name, values[0]))
    if not slices:
        raise ValueError(f"No DICOM images with pixel data among the {len(files)} file(s) given.")
    ordered = _sort_by_position(slices)
    volume = np.stack([values for _, _, values in ordered])
    return to_display(volume, ordered[0][0], window)


def _sort_by_position(slices: list[tuple]) -> list[tuple]:
    first, first_name, _ = slices[0]
    series = {str(dataset.get("SeriesInstanceUID", "")) for dataset, _, _ in slices}
    if len(series) > 1:
        raise ValueError(f"The files hold {len(series)} different series ({', '.join(sorted(series))}); give one.")
    for dataset, name, values in slices:
        for key in ("ImagePositionPatient", "ImageOrientationPatient"):
            if key not in dataset:
                raise ValueError(f"{name} has no {key}, so it cannot be placed in the volume.")
        if values.shape != slices[0][2].shape:
            raise ValueError(
                f"{name} is {values.shape[1]}x{values.shape[0]} pixels, {first_name} "
                f"{slices[0][2].shape[1]}x{slices[0][2].shape[0]}: inconsistent series geometry."
            )
        if not np.allclose(dataset.ImageOrientationPatient, first.ImageOrientationPatient, atol=1e-4):
            raise ValueError(f"{name} has another ImageOrientationPatient than {first_name}: inconsistent geometry.")
    orientation = np.asarray(first.ImageOrientationPatient, dtype=np.float64)
    normal = np.cross(orientation[:3], orientation[3:])
    positions = [
        float(np.dot(normal, np.asarray(dataset.ImagePositionPatient, dtype=np.float64))) for dataset, _, _ in slices
    ]
    order = np.argsort(positions)
    ordered = [slices[i] for i in order]
    gaps = np.diff(np.asarray(positions)[order])
    if len(gaps):
        for i, gap in enumerate(gaps):
            if gap < 1e-3:
                raise ValueError(
                    f"{ordered[i][1]} and {ordered[i + 1][1]} are at the same position: duplicate slices."
                )
        if not np.allclose(gaps, np.median(gaps), rtol=0.1):
            i = int(np.argmax(np.abs(gaps - np.median(gaps))))
            raise ValueError(
                f"Slice spacing jumps to {gaps[i]:.3g} mm between {ordered[i][1]} and {ordered[i + 1][1]} (elsewhere "
                f"{np.median(gaps):.3g} mm): inconsistent series geometry, missing slices?"
            )
    return ordered


def sample_slices(count_in_volume: int, *, count: int | None = None, stride: int | None = None) -> list[int]:
    """Indices of the slices to embed: `count` evenly spaced (ends included), or every `stride`-th; default all."""
    if count is not None and stride is not None:
        raise ValueError("Give a slice count or a stride, not both.")
    if count is not None:
        if count < 1:
            raise ValueError(f"The slice count must be positive, got {count}.")
        return sorted({int(round(i)) for i in np.linspace(0, count_in_volume - 1, min(count, count_in_volume))})
    if stride is not None:
        if stride < 1:
            raise ValueError(f"The slice stride must be positive, got {stride}.")
        return list(range(0, count_in_volume, stride))
    return list(range(count_in_volume))


__all__ = ["AXES", "is_volume_path", "load_dicom_series", "load_nifti", "load_volume", "sample_slices"]
