"""DICOM pixel data to display values: modality LUT, VOI LUT or windowing, then the presentation LUT (inversion).

Windowing follows the DICOM standard (PS3.3 C.11.2.1.2): LINEAR, LINEAR_EXACT and SIGMOID VOI LUT functions, with
output in [0, 255]. Named presets give the usual CT windows in Hounsfield units. Without any window, grayscale images
are scaled by their real range, never clipped.
"""

import os

import numpy as np

try:  # optional: only needed for DICOM input, so the remote code does not require it
    import pydicom
    from pydicom.multival import MultiValue
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut
except ImportError:
    pydicom = None

# (center, width) in Hounsfield units.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "abdomen": (40.0, 400.0),
    "liver": (60.0, 160.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}
GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
COLOR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR")
DECODER_HINT = (
    "install a pydicom decoder for it: `pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg` (JPEG, JPEG-LS, "
    "JPEG 2000), `pip install pylibjpeg-rle` (RLE) or `pip install python-gdcm`"
)

Window = str | tuple[float, float]

# The most pixels (per frame, times frames) an input may decode to: 1e8 RGBA pixels with a converted copy stay under
# 1 GB, so a 2 GB DataLoader worker survives a decompression bomb (a 20 KB PNG can declare 13000 x 13000 pixels).
MAX_IMAGE_PIXELS = 100_000_000


def check_pixel_budget(pixels: int, name: str) -> None:
    """Refuse an input that would decode to more than `MAX_IMAGE_PIXELS` pixels, before decoding it."""
    if pixels > MAX_IMAGE_PIXELS:
        raise ValueError(
            f"{name} decodes to {pixels:,} pixels, more than the {MAX_IMAGE_PIXELS:,} allowed (a decompression bomb, "
            "or an image to tile first); raise modeling_unimedclip.dicom_unimedclip.MAX_IMAGE_PIXELS if you trust it."
        )


def is_dicom(source) -> bool:
    """Whether `source` is a pydicom dataset or a path to a file with the DICOM preamble (`DICM` at byte 128)."""
    if pydicom is not None and isinstance(source, pydicom.Dataset):
        return True
    if not isinstance(source, (str, os.PathLike)) or not os.path.isfile(source):
        return False
    with open(source, "rb") as file:
        header = file.read(132)
    return header[128:132] == b"DICM" or str(source).lower().endswith((".dcm", ".dicom"))


def read_dicom(source, *, window: Window | None = None) -> tuple["pydicom.Dataset", np.ndarray]:
    """Read a DICOM file (or take a dataset) and return it with its pixels in display values.

    Grayscale frames come back as float64 in [0, 255] with shape (frames, rows, columns); colour frames as uint8 with
    shape (frames, rows, columns, 3). `window` is a preset name from `WINDOW_PRESETS` or `(center, width)` and
    replaces the file's own VOI LUT or window.
    """
    dataset, name, pixels = read_pixels(source)
    if is_color(dataset):
        if window is not None:
            raise ValueError(
                f"{name}: windowing applies to grayscale images, not to {dataset.PhotometricInterpretation}."
            )
        return dataset, pixels
    return dataset, to_display(pixels, dataset, window)


def read_pixels(source) -> tuple["pydicom.Dataset", str, np.ndarray]:
    """Open, check and decode a DICOM file or dataset: (dataset, a name for messages, pixels with a frame axis).

    Grayscale pixels are modality values (after RescaleSlope/Intercept or the Modality LUT), float64, with shape
    (frames, rows, columns); colour pixels are uint8 RGB with shape (frames, rows, columns, 3).
    """
    if pydicom is None:
        raise ImportError("Reading DICOM needs pydicom: `pip install pydicom`.")
    dataset, name = _open(source)
    if not any(key in dataset for key in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ValueError(f"{name} has no pixel data (it may be a report, a structured document or a DICOMDIR).")
    photometric = str(dataset.get("PhotometricInterpretation", "")).strip()
    if photometric not in GRAYSCALE + COLOR:
        raise ValueError(
            f"{name}: unsupported photometric interpretation {photometric!r}; "
            f"supported: {', '.join(GRAYSCALE + COLOR)}."
        )
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    check_pixel_budget(int(dataset.get("Rows", 0)) * int(dataset.get("Columns", 0)) * frames, name)
    pixels = _decode(dataset, name)
    if photometric in COLOR:
        if photometric == "PALETTE COLOR":
            pixels = apply_color_lut(pixels, dataset)
        return dataset, name, _color_to_uint8(pixels.reshape(frames, *pixels.shape[-3:]))
    pixels = pixels.reshape(frames, *pixels.shape[-2:])
    return dataset, name, np.stack([apply_modality_lut(frame, dataset) for frame in pixels]).astype(np.float64)


def is_color(dataset) -> bool:
    return str(dataset.get("PhotometricInterpretation", "")).strip() in COLOR


def to_display(values: np.ndarray, dataset, window: Window | None = None) -> np.ndarray:
    """Grayscale modality values to display values in [0, 255]: `window` if given, else the VOI LUT or window the
    file carries, else the values' real range; then inverted where the file says so (`is_inverted`)."""
    if window is not None:
        display = window_values(values, *resolve_window(window))
    elif "VOILUTSequence" in dataset:
        # A lookup table indexed by integer values; its output range is set by the LUT's bit depth, so the result
        # is scaled by its real range.
        indices = np.rint(values).astype(np.int64)
        display = scale_range(np.stack([apply_voi_lut(frame, dataset, prefer_lut=True) for frame in indices]))
    elif "WindowCenter" in dataset and "WindowWidth" in dataset:
        center, width = _first(dataset.WindowCenter), _first(dataset.WindowWidth)
        display = window_values(values, center, width, str(dataset.get("VOILUTFunction", "LINEAR") or "LINEAR"))
    else:
        display = scale_range(values)
    return 255.0 - display if is_inverted(dataset) else display


def is_inverted(dataset) -> bool:
    """Whether display values are inverted (low values white). The Presentation LUT Shape decides when present
    (PS3.3 C.11.6: INVERSE or IDENTITY; a MONOCHROME1 image carries INVERSE, and is inverted once); without it, a
    MONOCHROME1 image is inverted."""
    shape = str(dataset.get("PresentationLUTShape", "") or "").strip().upper()
    if shape in ("INVERSE", "IDENTITY"):
        return shape == "INVERSE"
    if shape:
        raise ValueError(f"Unknown Presentation LUT Shape {shape!r}: expected IDENTITY or INVERSE.")
    return str(dataset.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1"


def window_values(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """The DICOM VOI LUT functions (PS3.3 C.11.2.1.2/3), mapping modality values to [0, 255]."""
    values = np.asarray(values, dtype=np.float64)
    function = function.upper()
    if function == "LINEAR":
        if width < 1:
            raise ValueError(f"A LINEAR window needs width >= 1, got {width}.")
        scaled = ((values - (center - 0.5)) / (width - 1) + 0.5) * 255.0
    elif function == "LINEAR_EXACT":
        if width <= 0:
            raise ValueError(f"A LINEAR_EXACT window needs width > 0, got {width}.")
        scaled = ((values - center) / width + 0.5) * 255.0
    elif function == "SIGMOID":
        if width <= 0:
            raise ValueError(f"A SIGMOID window needs width > 0, got {width}.")
        return 255.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    else:
        raise ValueError(f"Unknown VOI LUT function {function!r}: expected LINEAR, LINEAR_EXACT or SIGMOID.")
    return np.clip(scaled, 0.0, 255.0)


def resolve_window(window: Window) -> tuple[float, float]:
    """(center, width) of a preset name or of a (center, width) pair, checked."""
    if isinstance(window, str):
        if window.lower() not in WINDOW_PRESETS:
            raise ValueError(f"Unknown window preset {window!r}; choose one of {sorted(WINDOW_PRESETS)}.")
        return WINDOW_PRESETS[window.lower()]
    if (
        not isinstance(window, (list, tuple))
        or len(window) != 2
        or not all(isinstance(value, (int, float)) for value in window)
        or window[1] <= 0
    ):
        raise ValueError(f"A window is a preset name or (center, width) with width > 0; got {window!r}.")
    return float(window[0]), float(window[1])


def scale_range(values: np.ndarray) -> np.ndarray:
    """Map values linearly from their own [min, max] onto [0, 255] (float64); a constant image maps to 0."""
    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError("The image contains NaN or infinite values, so it cannot be scaled to 8 bits.")
    low, high = values.min(), values.max()
    if high == low:
        return np.zeros_like(values)
    return (values - low) * 255.0 / (high - low)


def _first(value) -> float:
    """Window center/width may be multi-valued (several suggested windows); the first one is the default."""
    return float(value[0]) if isinstance(value, (list, tuple, MultiValue)) else float(value)


def _open(source) -> tuple["pydicom.Dataset", str]:
    if isinstance(source, pydicom.Dataset):
        return source, f"DICOM dataset {getattr(source, 'filename', None) or '(in memory)'}"
    name = f"'{source}'"
    try:
        return pydicom.dcmread(source), name
    except pydicom.errors.InvalidDicomError as error:
        raise ValueError(f"{name} is not a DICOM file: {error}") from error
    except Exception as error:  # truncated or damaged headers fail with EOFError, OSError, struct errors, ...
        raise ValueError(f"{name} is not a readable DICOM file (truncated or damaged?): {error}") from error


def _decode(dataset, name: str) -> np.ndarray:
    syntax = getattr(dataset, "file_meta", {}).get("TransferSyntaxUID")
    try:
        return dataset.pixel_array
    except Exception as error:
        message = str(error)
        if syntax is not None and syntax.is_compressed and ("plugin" in message or "decod" in message.lower()):
            raise ValueError(
                f"{name}: no installed decoder handles its transfer syntax {syntax.name}; {DECODER_HINT}. "
                f"pydicom said: {message.strip()}"
            ) from error
        raise ValueError(f"{name}: cannot read the pixel data (truncated or damaged?): {message.strip()}") from error


def _color_to_uint8(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype == np.uint8:
        return pixels
    return np.round(scale_range(pixels)).astype(np.uint8)


__all__ = [
    "MAX_IMAGE_PIXELS",
    "WINDOW_PRESETS",
    "check_pixel_budget",
    "is_color",
    "is_dicom",
    "is_inverted",
    "read_dicom",
    "read_pixels",
    "resolve_window",
    "scale_range",
    "to_display",
    "window_values",
]
