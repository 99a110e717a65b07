"""What the Space's Classify tab computes: an upload as the model sees it (after windowing; sampled slices for a
volume) and the zero-shot probabilities of the labels, with the project's own readers and zero-shot helpers."""

import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from modeling_unimedclip.dicom_unimedclip import Window, is_dicom, read_dicom, resolve_window
from modeling_unimedclip.image_processing_unimedclip import to_pil_image
from unimedclip.inference.volumes import is_volume_path, load_dicom_series, load_volume, sample_slices
from unimedclip.inference.zero_shot import (
    class_embeddings,
    expand_labels,
    image_embeddings,
    image_probabilities,
    volume_probabilities,
)


@dataclass(frozen=True)
class ModelView:
    """The 8-bit images the model is given: one image, or the sampled slices of a volume, with their captions."""

    images: list[Image.Image]
    captions: list[str]
    description: str
    is_volume: bool


def parse_labels(text: str) -> list[str]:
    """Labels separated by commas or new lines; at least two, since probabilities compare labels."""
    labels = [label.strip() for line in (text or "").splitlines() for label in line.split(",")]
    labels = [label for label in labels if label]
    if len(labels) < 2:
        raise ValueError("Enter at least two labels, separated by commas, e.g. 'pneumonia, normal chest'.")
    return labels


def window_text(window: Window | None) -> str:
    if window is None:
        return "the file's own window"
    center, width = resolve_window(window)
    return f"window {center:g}/{width:g} (center/width)"


def model_view(
    paths: list[str | os.PathLike],
    *,
    window: Window | None = None,
    axis: str | None = None,
    first_slice: int = 0,
    last_slice: int | None = None,
    slices: int = 16,
) -> ModelView:
    """Read an upload: one image file (PNG, JPEG, TIFF, DICOM), a volume (NIfTI, multi-frame DICOM) or several DICOM
    files forming one series. `window` applies to DICOM and NIfTI; the slice options to volumes."""
    if not paths:
        raise ValueError("Upload an image, a DICOM file or a NIfTI volume first.")
    if len(paths) > 1:
        volume = load_dicom_series([os.fspath(path) for path in paths], window=window)
        return _volume_view(volume, f"a DICOM series of {len(paths)} files", window, first_slice, last_slice, slices)
    path = os.fspath(paths[0])
    name = os.path.basename(path)
    if is_volume_path(path):
        volume = load_volume(path, window=window, axis=axis)
        return _volume_view(volume, f"{name}, {axis or 'axial'} slices", window, first_slice, last_slice, slices)
    if is_dicom(path):
        _, frames = read_dicom(path, window=window)
        if len(frames) > 1:
            return _volume_view(frames, f"{name}, {len(frames)} frames", window, first_slice, last_slice, slices)
        image = Image.fromarray(np.round(frames[0]).astype(np.uint8))
        return ModelView([image], [name], f"{name}: DICOM, {window_text(window)}", is_volume=False)
    image = to_pil_image(path)
    note = "" if window is None else " (windows apply to DICOM and NIfTI only)"
    return ModelView([image], [name], f"{name}: {image.width}x{image.height} {image.mode}{note}", is_volume=False)


def _volume_view(
    volume: np.ndarray, what: str, window: Window | None, first: int, last: int | None, count: int
) -> ModelView:
    last = len(volume) - 1 if last is None else last
    if not 0 <= first <= last < len(volume):
        raise ValueError(
            f"The volume has {len(volume)} slices (0 to {len(volume) - 1}); slices {first} to {last} are not a range "
            "inside it."
        )
    indices = [first + index for index in sample_slices(last - first + 1, count=count)]
    images = [Image.fromarray(np.round(volume[index]).astype(np.uint8)) for index in indices]
    description = f"{what}: {len(indices)} of slices {first} to {last} ({len(volume)} in all), {window_text(window)}"
    return ModelView(images, [f"slice {index}" for index in indices], description, is_volume=True)


class Classifier:
    """A UniMed-CLIP with its processor; class embeddings are cached per label set and modality."""

    def __init__(self, model, processor):
        self.model, self.processor = model.eval(), processor
        self.class_embeddings = lru_cache(maxsize=32)(self._class_embeddings)

    def _class_embeddings(self, labels: tuple[str, ...], modality: str | None):
        return class_embeddings(self.model, self.processor, expand_labels(list(labels), modality))

    def probabilities(
        self, view: ModelView, labels: list[str], modality: str | None, pooling: str = "mean"
    ) -> dict[str, float]:
        """Label -> probability (summing to one): softmax of the scaled cosine similarities to the labels' prompt
        ensembles; a volume's slices pooled with `pooling`."""
        class_embeds = self.class_embeddings(tuple(labels), modality)
        embeds = image_embeddings(self.model, self.processor, view.images)
        scale = self.model.logit_scale.exp().item()
        if view.is_volume:
            probabilities = volume_probabilities(embeds, class_embeds, scale, pooling)
        else:
            probabilities = image_probabilities(embeds, class_embeds, scale)[0]
        return dict(zip(labels, probabilities.tolist()))
