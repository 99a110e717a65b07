"""JPEG decoding on the training GPU, for hosts with few CPU cores per GPU (`TrainingConfig.decode_on_device`).

Decoding is most of the workers' time. On this path the workers parse the JPEG's header, choose the caption and
draw the crop box exactly as the CPU path does (`stream.process_sample` with the image step `undecoded_jpeg`, from
the same per-sample generator), and
hand over the undecoded bytes; `pixels_on_device` then decodes the batch with nvJPEG
(`torchvision.io.decode_jpeg(..., device="cuda")`), crops and resizes it (bicubic, antialiased) on the GPU. The stream,
its position and its resume are the CPU path's; the pixels are the CPU path's crop, resized by torchvision instead of
PIL: on the CPU (libjpeg-turbo decodes bit for bit as PIL does) at most 1 apart in uint8; on the GPU nvJPEG's
decoding differs slightly more (tests/test_throughput.py checks both where they can run).

Images the GPU path does not take (other formats, progressive or CMYK JPEGs, truncated files) are decoded and cropped
by the workers as before, and the batch mixes both kinds in sample order.
"""

import io
import random
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from PIL import Image
from transformers.utils import requires_backends

from .collate import UniMedCollator
from .stream import UniMedStream, decode_and_crop
from .transforms import random_resized_crop_box

JPEG_START, JPEG_END = b"\xff\xd8", b"\xff\xd9"
_NO_PIXELS = torch.empty(0, dtype=torch.uint8)


def device_decodable_size(image_bytes: bytes) -> tuple[int, int] | None:
    """(width, height) of a complete baseline JPEG in grayscale or RGB, read from its header; None for anything
    else, which the workers decode. A truncated file (no end marker) goes to the workers, which skip it."""
    if not (image_bytes.startswith(JPEG_START) and image_bytes.endswith(JPEG_END)):
        return None
    try:
        with Image.open(io.BytesIO(image_bytes)) as image:  # reads the header only
            if image.format != "JPEG" or image.mode not in ("L", "RGB") or image.info.get("progressive"):
                return None
            return image.size
    except Exception:  # PIL raises many exception types on malformed headers; the workers' path reports them
        return None


def undecoded_jpeg(image_bytes: bytes, image_size: int, rng: random.Random) -> dict[str, Any] | None:
    """The image step of `process_sample` on this path: a device-decodable JPEG stays undecoded, as its bytes
    (`jpeg`) and the crop box (`crop_box`: left, top, width, height) drawn with the CPU path's draws; any other image
    is decoded and cropped as on the CPU path."""
    size = device_decodable_size(image_bytes)
    if size is None:
        return decode_and_crop(image_bytes, image_size, rng)
    return {
        "jpeg": torch.frombuffer(bytearray(image_bytes), dtype=torch.uint8),
        "crop_box": random_resized_crop_box(*size, rng),
    }


class DeviceDecodeStream(UniMedStream):
    """The samples of a `load_unimed` stream with device-decodable JPEGs left undecoded (`undecoded_jpeg`); same raw
    stream, same position and resume."""

    def __init__(self, stream: UniMedStream):
        super().__init__(stream.raw, stream.seed, stream.image_size, image_step=undecoded_jpeg)


class DeviceDecodeCollator:
    """`UniMedCollator` for `DeviceDecodeStream` samples. Besides the captions, a batch holds `pixel_values` (the
    workers' decoded images, stacked), `jpeg` (the undecoded ones), `crop_box` and `jpeg_keys` (their boxes and sample
    keys) and `on_device` (per sample, whether its image is in `jpeg`)."""

    def __init__(self, collator: UniMedCollator):
        self.collator = collator

    def __call__(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        text = self.collator.tokenize([sample["caption"] for sample in samples])
        decoded = [sample["pixel_values"] for sample in samples if "jpeg" not in sample]
        jpeg_samples = [sample for sample in samples if "jpeg" in sample]
        return {
            "pixel_values": torch.stack(decoded) if decoded else _NO_PIXELS,
            "jpeg": [sample["jpeg"] for sample in jpeg_samples],
            "crop_box": torch.tensor([sample["crop_box"] for sample in jpeg_samples], dtype=torch.long),
            "jpeg_keys": [sample["__key__"] for sample in jpeg_samples],
            "on_device": torch.tensor(["jpeg" in sample for sample in samples]),
            "input_ids": text["input_ids"],
            "attention_mask": text["attention_mask"],
        }


def decode_crop_resize(
    jpegs: list[torch.Tensor], boxes: Sequence[Sequence[int]], image_size: int, device: torch.device
) -> list[torch.Tensor]:
    """Decode JPEG bytes on `device` (nvJPEG on CUDA, libjpeg-turbo on CPU) as RGB, crop each to its (left, top,
    width, height) box and resize it to `image_size` squared (bicubic, antialiased): uint8 (3, S, S) each.

    If nvJPEG refuses the batch (a JPEG feature it lacks, such as arithmetic coding), it is decoded on the CPU."""
    requires_backends(decode_crop_resize, ["torchvision"])
    if not jpegs:
        return []
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2.functional import resize

    try:
        images = decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=device)
    except RuntimeError as error:
        if device.type == "cpu":
            raise
        warnings.warn(f"Decoding a batch on {device} failed ({error}); decoding it on the CPU.", stacklevel=2)
        images = [image.to(device) for image in decode_jpeg(jpegs, mode=ImageReadMode.RGB)]
    crops = [image[:, top : top + h, left : left + w] for image, (left, top, w, h) in zip(images, boxes, strict=True)]
    return [resize(crop, [image_size, image_size], InterpolationMode.BICUBIC, antialias=True) for crop in crops]


def pixels_on_device(batch: Mapping[str, Any], image_size: int, device: torch.device) -> torch.Tensor:
    """The batch's uint8 images (B, 3, S, S) on `device`, in sample order: copied without waiting for the device
    (from pinned memory), plus, for a `DeviceDecodeCollator` batch, its JPEGs decoded there."""
    pixel_values = batch["pixel_values"].to(device, non_blocking=True)
    if "jpeg" not in batch:
        return pixel_values
    try:
        decoded = iter(decode_crop_resize(batch["jpeg"], batch["crop_box"].tolist(), image_size, device))
    except RuntimeError as error:  # not even libjpeg-turbo decodes one of them; the workers' path would skip it
        raise RuntimeError(
            f"Cannot decode the JPEG of one of the samples {batch['jpeg_keys']} ({error}). Train without "
            "decode_on_device, which skips undecodable images, or rebuild the shards without them."
        ) from error
    from_workers = iter(pixel_values)
    return torch.stack(
        [next(decoded) if on_device else next(from_workers) for on_device in batch["on_device"].tolist()]
    )
