"""Fast image processor for UniMed-CLIP: the same steps as [`UniMedCLIPImageProcessor`] on torch tensors, batched by
size. Not bit-exact: torchvision's antialiased bicubic resize differs slightly from PIL's (the largest
difference per normalised pixel is documented in the README and measured by `bench/bench_processor.py`)."""

import numpy as np
from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_processing_base import BatchFeature
from transformers.image_utils import PILImageResampling, SizeDict
from transformers.utils import TensorType, is_torch_available, is_torchvision_available

from .image_processing_unimedclip import DEFAULT_RESCALE_FACTOR, UniMedCLIPImageOptions, stack_images, to_pil_image

if is_torch_available():
    import torch


class UniMedCLIPImageProcessorFast(UniMedCLIPImageOptions, TorchvisionBackend):
    r"""
    UniMed-CLIP image processor on the torchvision backend, chosen with `AutoImageProcessor.from_pretrained(...,
    backend="torchvision")` (or `use_fast=True`). Inputs are decoded as by [`UniMedCLIPImageProcessor`] (DICOM, 16-bit
    images, channels-first arrays), then resized, center-cropped, rescaled and normalised as tensors, images of the
    same size together. It takes the same options.
    """

    def __init__(self, **kwargs) -> None:
        if not is_torchvision_available():
            raise ImportError(
                "UniMedCLIPImageProcessorFast needs torchvision: `pip install torchvision`, or load the exact "
                "processor (the default, `backend='pil'`)."
            )
        super().__init__(**kwargs)

    def process_image(self, image, window=None, frame=None, input_data_format=None, **kwargs) -> "torch.Tensor":
        """One input as a uint8 (3, H, W) RGB tensor, decoded as the exact processor decodes it."""
        decoded = to_pil_image(image, window=window, frame=frame, input_data_format=input_data_format)
        return torch.from_numpy(np.array(decoded.convert("RGB"))).permute(2, 0, 1)

    def _preprocess(
        self,
        images: list["torch.Tensor"],
        do_resize: bool,
        size: SizeDict,
        resample: PILImageResampling,
        do_center_crop: bool,
        crop_size: SizeDict,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean: tuple[float, float, float],
        image_std: tuple[float, float, float],
        return_tensors: str | TensorType | None,
        **kwargs,
    ) -> BatchFeature:
        processed = super()._preprocess(
            images,
            do_resize=do_resize,
            size=size,
            resample=resample,
            do_center_crop=do_center_crop,
            crop_size=crop_size,
            do_rescale=do_rescale,
            rescale_factor=DEFAULT_RESCALE_FACTOR if rescale_factor is None else rescale_factor,
            do_normalize=do_normalize,
            image_mean=image_mean,
            image_std=image_std,
            do_pad=False,
            pad_size=None,
            disable_grouping=None,
            return_tensors=None,
        )
        pixel_values = [image.float() for image in processed["pixel_values"]]
        return BatchFeature(data={"pixel_values": stack_images(pixel_values)}, tensor_type=return_tensors)


__all__ = ["UniMedCLIPImageProcessorFast"]
