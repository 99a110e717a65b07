"""The original training image transform, split as the original split it: the crop in the DataLoader workers (uint8),
the normalisation on the training device."""

import math
import random
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

# The original training crop (open_clip's `RandomResizedCrop(scale=(0.9, 1.0))`, torchvision's default ratios).
CROP_SCALE = (0.9, 1.0)
CROP_LOG_RATIO = (math.log(3 / 4), math.log(4 / 3))


def random_resized_crop_box(width: int, height: int, rng: random.Random) -> tuple[int, int, int, int]:
    """torchvision's `RandomResizedCrop.get_params` with scale (0.9, 1.0), drawn from `rng`: (left, top, w, h)."""
    area = width * height
    for _ in range(10):
        target_area = area * rng.uniform(*CROP_SCALE)
        aspect_ratio = math.exp(rng.uniform(*CROP_LOG_RATIO))
        crop_width = round(math.sqrt(target_area * aspect_ratio))
        crop_height = round(math.sqrt(target_area / aspect_ratio))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            return rng.randint(0, width - crop_width), rng.randint(0, height - crop_height), crop_width, crop_height
    # Fallback: a centre crop at the closest allowed aspect ratio.
    min_ratio, max_ratio = (math.exp(bound) for bound in CROP_LOG_RATIO)
    crop_width, crop_height = width, height
    if width / height < min_ratio:
        crop_height = round(width / min_ratio)
    elif width / height > max_ratio:
        crop_width = round(height * max_ratio)
    return (width - crop_width) // 2, (height - crop_height) // 2, crop_width, crop_height


def train_transform(image: Image.Image, image_size: int, rng: random.Random) -> torch.Tensor:
    """The original training transform: RandomResizedCrop(scale 0.9-1, bicubic), RGB, as a uint8 (3, S, S) tensor."""
    if image.mode not in ("L", "RGB"):
        # The original decoded to RGB before cropping. For L and RGB converting after the resize gives the same
        # pixels (and resizes one channel instead of three for grayscale scans); for palette, 16-bit or alpha
        # images it does not.
        image = image.convert("RGB")
    left, top, width, height = random_resized_crop_box(image.width, image.height, rng)
    # Crop, then resize: `resize(box=...)` would also read pixels outside the box near its edges.
    image = image.crop((left, top, left + width, top + height))
    image = image.resize((image_size, image_size), Image.Resampling.BICUBIC).convert("RGB")
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)


def normalize_pixels(
    pixel_values: torch.Tensor,
    mean: Sequence[float] | torch.Tensor = OPENAI_CLIP_MEAN,
    std: Sequence[float] | torch.Tensor = OPENAI_CLIP_STD,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """uint8 images (..., 3, H, W) to normalised `dtype` pixels, on their device (the training GPU).

    Pass `mean` and `std` as tensors on that device in a training loop: from Python numbers they are copied to the
    device on every call, and such a copy waits for the device."""
    if pixel_values.dtype != torch.uint8 or pixel_values.ndim < 3 or pixel_values.shape[-3] != 3:
        raise ValueError(
            f"Expected uint8 pixel values shaped (..., 3, H, W); got {pixel_values.dtype} {tuple(pixel_values.shape)}."
        )
    mean = torch.as_tensor(mean, dtype=dtype, device=pixel_values.device).view(3, 1, 1)
    std = torch.as_tensor(std, dtype=dtype, device=pixel_values.device).view(3, 1, 1)
    return (pixel_values.to(dtype) / 255 - mean) / std
