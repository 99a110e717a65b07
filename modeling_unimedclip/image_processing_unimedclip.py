"""Image processor for UniMed-CLIP: the original evaluation transform, bit for bit, with PIL and NumPy only.

The torchvision-backed [`UniMedCLIPImageProcessorFast`] (`image_processing_unimedclip_fast.py`) shares the options,
the input decoding and the defaults defined here.
"""

# First: the configuration module checks the transformers version before anything else is imported from it.
from .configuration_unimedclip import AUTO_IMAGE_PROCESSORS

# isort: split
import os
from typing import TypedDict

import numpy as np
from PIL import Image
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_base import BatchFeature
from transformers.image_processing_utils import get_size_dict
from transformers.image_utils import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    ChannelDimension,
    PILImageResampling,
    SizeDict,
    infer_channel_dimension_format,
)
from transformers.processing_utils import Unpack
from transformers.utils import TensorType, is_torch_available, is_torch_tensor

from .dicom_unimedclip import Window, check_pixel_budget, is_dicom, read_dicom, resolve_window, scale_range

if is_torch_available():
    import torch

# PIL modes with more than 8 bits per sample; they are range-scaled to 8-bit `L` first.
HIGH_BIT_DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
# torchvision's ToTensor divides uint8 by 255 in float32 (not multiplying by 1/255, which rounds differently).
DEFAULT_RESCALE_FACTOR = 1 / 255


class UniMedCLIPImageProcessorKwargs(TypedDict, total=False):
    """The options of the UniMed-CLIP image processors; anything else is rejected rather than silently ignored."""

    do_resize: bool | None
    size: int | dict[str, int] | None
    resample: int | None
    do_center_crop: bool | None
    crop_size: int | dict[str, int] | None
    do_rescale: bool | None
    rescale_factor: float | None
    do_normalize: bool | None
    image_mean: float | list[float] | tuple[float, ...] | None
    image_std: float | list[float] | tuple[float, ...] | None
    input_data_format: str | ChannelDimension | None
    return_tensors: str | TensorType | None
    window: str | list[float] | tuple[float, float] | None
    frame: int | None


class UniMedCLIPImageOptions:
    """The options, defaults and input decoding shared by the exact (PIL) and the fast (torchvision) processor."""

    valid_kwargs = UniMedCLIPImageProcessorKwargs
    model_input_names = ["pixel_values"]
    do_resize = True
    size = {"shortest_edge": 224}
    resample = PILImageResampling.BICUBIC
    do_center_crop = True
    crop_size = {"height": 224, "width": 224}
    do_rescale = True
    rescale_factor = DEFAULT_RESCALE_FACTOR
    do_normalize = True
    image_mean = OPENAI_CLIP_MEAN
    image_std = OPENAI_CLIP_STD

    def __init__(
        self,
        size: int | dict[str, int] | None = None,
        crop_size: int | dict[str, int] | None = None,
        **kwargs: Unpack[UniMedCLIPImageProcessorKwargs],
    ) -> None:
        if crop_size is None and size is not None:
            crop_size = _default_crop_size(size)
        # An option passed as None would be stored as an attribute and shadow the class default.
        options = {"size": size, "crop_size": crop_size, **kwargs}
        super().__init__(**{key: value for key, value in options.items() if value is not None})

    def preprocess(self, images, **kwargs: Unpack[UniMedCLIPImageProcessorKwargs]) -> BatchFeature:
        """
        Preprocess an image or a list of images into `pixel_values` of shape (batch, 3, crop height, crop width).

        A `size` given without a `crop_size` also sets the crop, as in the constructor. `return_tensors` defaults to
        `"pt"`; use `"np"` for a NumPy array.
        """
        if kwargs.get("size") is not None and kwargs.get("crop_size") is None:
            kwargs["crop_size"] = _default_crop_size(kwargs["size"])
        kwargs.setdefault("return_tensors", TensorType.PYTORCH)
        return super().preprocess(images, **kwargs)

    def _standardize_kwargs(
        self,
        size: int | dict[str, int] | SizeDict | None = None,
        crop_size: int | dict[str, int] | SizeDict | None = None,
        resample: int | None = None,
        image_mean: float | list[float] | tuple[float, ...] | None = None,
        image_std: float | list[float] | tuple[float, ...] | None = None,
        input_data_format: str | ChannelDimension | None = None,
        **kwargs,
    ) -> dict:
        """Validate the options and bring them into canonical form (`SizeDict`s, a resampling enum, 3-tuples)."""
        if size is not None:
            kwargs["size"] = SizeDict(**_resize_size_dict(size))
        if crop_size is not None:
            kwargs["crop_size"] = SizeDict(**_crop_size_dict(crop_size))
        if resample is not None:
            kwargs["resample"] = PILImageResampling(resample)
        if image_mean is not None:
            kwargs["image_mean"] = _per_channel(image_mean, "image_mean")
        if image_std is not None:
            kwargs["image_std"] = _per_channel(image_std, "image_std")
        if input_data_format is not None:
            kwargs["input_data_format"] = ChannelDimension(input_data_format)
        if kwargs.get("rescale_factor") is not None and not kwargs["rescale_factor"] > 0:
            raise ValueError(f"`rescale_factor` must be positive; got {kwargs['rescale_factor']!r}.")
        if kwargs.get("window") is not None:
            resolve_window(kwargs["window"])  # fails early on an unknown preset or a malformed (center, width)
        if kwargs.get("frame") is not None and (not isinstance(kwargs["frame"], int) or kwargs["frame"] < 0):
            raise ValueError(f"`frame` must be a non-negative frame index; got {kwargs['frame']!r}.")
        return kwargs

    def _prepare_image_like_inputs(self, images, *args, window=None, frame=None, input_data_format=None, **kwargs):
        """Turn the input (one image or a list) into a list of decoded images, naming the culprit on failure."""
        batch = list(images) if isinstance(images, (list, tuple)) else [images]
        if not batch:
            raise ValueError("`images` is empty: expected an image or a non-empty list of images.")
        prepared = []
        for index, image in enumerate(batch):
            try:
                options = {"window": window, "frame": frame, "input_data_format": input_data_format}
                prepared.append(self.process_image(image, **options))
            except (TypeError, ValueError) as error:
                if len(batch) == 1:
                    raise
                error_type = TypeError if isinstance(error, TypeError) else ValueError
                raise error_type(f"images[{index}]: {error}") from error
        return prepared

    def to_dict(self) -> dict:
        output = super().to_dict()
        # Every backend is saved under the exact processor's name, so that a reloaded processor is exact by default.
        output["image_processor_type"] = "UniMedCLIPImageProcessor"
        if "AutoImageProcessor" in output.get("auto_map", {}):
            output["auto_map"] = {**output["auto_map"], "AutoImageProcessor": AUTO_IMAGE_PROCESSORS}
        return output


class UniMedCLIPImageProcessor(UniMedCLIPImageOptions, PilBackend):
    r"""
    UniMed-CLIP image processor. Reproduces exactly (`torch.equal`) open_clip's evaluation transform
    `image_transform(size, is_train=False)` that the original model was evaluated with:

    1. resize the shortest side to `size` with PIL bicubic (long side `int(size * long / short)`), in the image's
       own mode, so that PIL resizes palette and `1` images with nearest;
    2. center crop to `crop_size` with torchvision's arithmetic (zero padding when the crop is larger);
    3. convert to RGB, after the crop, as the original did;
    4. divide by 255 and normalise with `image_mean` and `image_std`, in float32.

    Accepted inputs are a single image or a list of them: PIL images of any mode, NumPy arrays and torch tensors of
    shape (H, W), (H, W, C) or (C, H, W) with C in 1, 3 or 4 (the layout is inferred, or given by
    `input_data_format`), and paths to image files. Images with more than 8 bits per sample
    (PIL modes `I;16*`, `I`, `F`, and arrays of any dtype but uint8, such as CT or 16-bit X-ray data) are mapped
    linearly from their own [min, max] range to [0, 255] and rounded, instead of being clipped; a constant image maps
    to 0. Anything else raises a `TypeError` or `ValueError` that names the problem.

    Every option is set at construction and can be overridden per call; an unknown option raises.

    Args:
        do_resize (`bool`, *optional*, defaults to `True`):
            Whether to resize (step 1).
        size (`int` or `dict[str, int]`, *optional*, defaults to 224):
            Length of the shortest side after resizing, or `{"height": h, "width": w}` to resize to a fixed size.
        resample (`PILImageResampling`, *optional*, defaults to `PILImageResampling.BICUBIC`):
            PIL resampling filter.
        do_center_crop (`bool`, *optional*, defaults to `True`):
            Whether to center crop (step 2); without it, the images of a batch must come out of step 1 equally sized.
        crop_size (`int` or `dict[str, int]`, *optional*):
            Size of the center crop; defaults to the shortest side given by `size`.
        do_rescale (`bool`, *optional*, defaults to `True`):
            Whether to scale the 8-bit values by `rescale_factor`.
        rescale_factor (`float`, *optional*, defaults to 1/255):
            The scale; the default divides by 255 as torchvision's `ToTensor` does.
        do_normalize (`bool`, *optional*, defaults to `True`):
            Whether to normalise with `image_mean` and `image_std`.
        image_mean (`float` or `list[float]`, *optional*, defaults to the OpenAI CLIP mean):
            Per-channel mean subtracted after rescaling.
        image_std (`float` or `list[float]`, *optional*, defaults to the OpenAI CLIP standard deviation):
            Per-channel standard deviation divided by after subtracting the mean.
        input_data_format (`str` or `ChannelDimension`, *optional*):
            `"channels_first"` or `"channels_last"` for 3-D arrays and tensors; inferred when not given.
        window (`str` or `(center, width)`, *optional*):
            DICOM only: a CT window preset or (center, width) replacing the file's own window.
        frame (`int`, *optional*):
            DICOM only: the frame of a multi-frame file (default 0).
    """

    def process_image(self, image, window=None, frame=None, input_data_format=None, **kwargs) -> Image.Image:
        """
        Convert one input to a PIL image with at most 8 bits per sample. Unlike the backend default, this returns a
        PIL image rather than an array: resizing must happen in the image's own mode, before RGB conversion.
        """
        return to_pil_image(image, window=window, frame=frame, input_data_format=input_data_format)

    def _preprocess(
        self,
        images: list[Image.Image],
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
        mean = np.asarray(image_mean, dtype=np.float32).reshape(3, 1, 1)
        std = np.asarray(image_std, dtype=np.float32).reshape(3, 1, 1)
        pixel_values = []
        for image in images:
            if do_resize:
                image = resize(image, size, resample)
            if do_center_crop:
                image = center_crop(image, crop_size)
            pixels = np.asarray(image.convert("RGB"), dtype=np.float32).transpose(2, 0, 1)
            if do_rescale:
                # Normalize then subtracts and divides in float32, as torchvision does: the same bits.
                factor = rescale_factor
                pixels = pixels / np.float32(255) if factor == DEFAULT_RESCALE_FACTOR else pixels * np.float32(factor)
            if do_normalize:
                pixels = (pixels - mean) / std
            pixel_values.append(pixels)
        return BatchFeature(data={"pixel_values": stack_images(pixel_values)}, tensor_type=return_tensors)


def stack_images(images: list) -> "np.ndarray | torch.Tensor":
    """Stack per-image arrays (or tensors) of a batch, naming the sizes when they differ."""
    shapes = sorted({tuple(image.shape) for image in images})
    if len(shapes) > 1:
        raise ValueError(
            f"The images of the batch have different sizes after resizing and cropping ({shapes}): keep "
            "`do_center_crop=True`, or resize to a fixed `size={'height': h, 'width': w}`."
        )
    return torch.stack(images) if is_torch_tensor(images[0]) else np.stack(images)


def to_pil_image(
    image,
    window: Window | None = None,
    frame: int | None = None,
    input_data_format: ChannelDimension | None = None,
) -> Image.Image:
    """
    Load or convert one image input to a PIL image with at most 8 bits per sample. High-bit-depth images are
    range-scaled to `L`; 8-bit PIL images keep their mode. DICOM files and datasets go through their modality and
    VOI LUTs, or `window` when given (see `dicom_unimedclip`); `frame` picks a frame of a multi-frame DICOM (default
    0). `window` and `frame` apply to DICOM input only. `input_data_format` is the channel layout of 3-D arrays and
    tensors, inferred when None.
    """
    if is_dicom(image):
        return dicom_to_pil(image, window=window, frame=frame)
    if isinstance(image, (str, os.PathLike)):
        image = open_image(image)
    elif is_torch_tensor(image):
        image = _tensor_to_numpy(image)
    if isinstance(image, np.ndarray):
        return _array_to_pil(image, input_data_format)
    if not isinstance(image, Image.Image):
        raise TypeError(
            f"Unsupported image type {type(image).__module__}.{type(image).__qualname__}: expected a PIL image, "
            "a numpy array, a torch tensor or the path to an image file."
        )
    _decode(image, "the PIL image" if not getattr(image, "filename", "") else f"image file '{image.filename}'")
    if image.width == 0 or image.height == 0:
        raise ValueError(f"The image is empty: its size is {image.width}x{image.height}.")
    if image.mode in HIGH_BIT_DEPTH_MODES:
        return Image.fromarray(scale_to_uint8(np.asarray(image)))
    return image


# File types taken as images when a folder is scanned (`open_image` reads anything PIL or pydicom can decode).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".dcm"})


def open_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image file, so that unreadable or truncated files fail here with their path."""
    if not os.path.exists(path):
        raise ValueError(f"Image file '{path}' does not exist.")
    if not os.path.isfile(path):
        raise ValueError(f"Image path '{path}' is not a file.")
    try:
        image = Image.open(path)
    except Image.UnidentifiedImageError as error:
        raise ValueError(f"'{path}' is not an image file that PIL can read: {error}") from error
    except Image.DecompressionBombError as error:
        raise ValueError(f"Image file '{path}' is a decompression bomb: {error}") from error
    with image:
        check_pixel_budget(image.width * image.height, f"Image file '{path}'")
        _decode(image, f"image file '{path}'")
        # A copy owns its pixels, so the file handle of a multi-frame image is not left open.
        return image.copy()


def dicom_to_pil(source, window: Window | None = None, frame: int | None = None) -> Image.Image:
    """One frame of a DICOM file or dataset as an 8-bit `L` or `RGB` image, in display values."""
    _, display = read_dicom(source, window=window)
    frame = frame or 0
    if frame >= len(display):
        raise ValueError(f"DICOM '{source}' has {len(display)} frame(s); frame {frame} does not exist.")
    return Image.fromarray(np.round(display[frame]).astype(np.uint8))


def scale_to_uint8(array: np.ndarray) -> np.ndarray:
    """
    Map an array linearly from its own [min, max] range to [0, 255], rounding to the nearest integer (halves to
    even), as uint8. A constant array maps to 0; NaN or infinite values are an error.
    """
    return np.round(scale_range(array)).astype(np.uint8)


def resize(image: Image.Image, size: SizeDict, resample: PILImageResampling) -> Image.Image:
    """torchvision's `Resize` on a PIL image: the same output size (PIL, like torchvision, returns an unchanged copy
    when the image already has it)."""
    width, height = image.size
    if size.shortest_edge is not None:
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = size.shortest_edge, int(size.shortest_edge * long / short)
        new_width, new_height = (new_short, new_long) if width <= height else (new_long, new_short)
    else:
        new_width, new_height = size.width, size.height
    return image.resize((new_width, new_height), resample)


def center_crop(image: Image.Image, crop_size: SizeDict) -> Image.Image:
    """torchvision's `CenterCrop` on a PIL image, including its zero padding when the crop is larger."""
    left = _crop_start(image.width, crop_size.width)
    top = _crop_start(image.height, crop_size.height)
    # PIL fills the part of the box outside the image with zeros, as torchvision's padding does.
    return image.crop((left, top, left + crop_size.width, top + crop_size.height))


def _crop_start(length: int, crop: int) -> int:
    if crop > length:
        return -((crop - length) // 2)
    return int(round((length - crop) / 2.0))


def _decode(image: Image.Image, description: str) -> None:
    try:
        image.load()
    except Exception as error:  # decoders raise OSError, SyntaxError, EOFError, zlib.error, ...
        raise ValueError(f"Cannot decode {description}: {error}") from error


def _tensor_to_numpy(tensor: "torch.Tensor") -> np.ndarray:
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:  # NumPy has no bfloat16
        tensor = tensor.float()
    return tensor.numpy()


def _array_to_pil(array: np.ndarray, input_data_format: ChannelDimension | None = None) -> Image.Image:
    if array.dtype.kind not in "uif":
        raise TypeError(
            f"Unsupported image array dtype {array.dtype}: expected uint8, another integer type or a float type."
        )
    shape_error = ValueError(
        f"Unsupported image array shape {array.shape}: expected (height, width), (height, width, channels) or "
        "(channels, height, width) with 1, 3 or 4 channels."
    )
    if array.ndim == 3:
        try:
            layout = input_data_format or infer_channel_dimension_format(array, num_channels=(1, 3, 4))
        except ValueError:
            raise shape_error from None
        if layout == ChannelDimension.FIRST:
            array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise shape_error
    if array.size == 0:
        raise ValueError(f"The image is empty: its array shape is {array.shape}.")
    if array.dtype != np.uint8:
        array = scale_to_uint8(array)
    return Image.fromarray(np.ascontiguousarray(array))


def _resize_size_dict(size: int | dict[str, int] | SizeDict) -> dict[str, int]:
    if isinstance(size, SizeDict):
        size = dict(size)
    size = get_size_dict(size, default_to_square=False)
    if set(size) not in ({"shortest_edge"}, {"height", "width"}):
        raise ValueError(f"`size` must be an int, {{'shortest_edge': n}} or {{'height': h, 'width': w}}; got {size}.")
    return _positive_ints(size, "size")


def _crop_size_dict(crop_size: int | dict[str, int] | SizeDict) -> dict[str, int]:
    if isinstance(crop_size, SizeDict):
        crop_size = dict(crop_size)
    crop_size = get_size_dict(crop_size, param_name="crop_size")
    if set(crop_size) != {"height", "width"}:
        raise ValueError(f"`crop_size` must be an int or {{'height': h, 'width': w}}; got {crop_size}.")
    return _positive_ints(crop_size, "crop_size")


def _default_crop_size(size: int | dict[str, int] | SizeDict) -> dict[str, int]:
    """The crop that goes with `size`: a square of its shortest edge, as open_clip crops to the resize size."""
    size = _resize_size_dict(size)
    if "shortest_edge" in size:
        return {"height": size["shortest_edge"], "width": size["shortest_edge"]}
    return size


def _positive_ints(sizes: dict[str, int], name: str) -> dict[str, int]:
    if not all(isinstance(value, int) and value > 0 for value in sizes.values()):
        raise ValueError(f"`{name}` must hold positive integers; got {sizes}.")
    return sizes


def _per_channel(values: float | list[float] | tuple[float, ...], name: str) -> tuple[float, float, float]:
    flat = np.asarray(values, dtype=np.float64).ravel()
    if flat.size == 1:
        flat = np.repeat(flat, 3)
    if flat.size != 3:
        raise ValueError(f"`{name}` must be one value or three (one per RGB channel); got {values}.")
    return tuple(float(value) for value in flat)


__all__ = ["UniMedCLIPImageProcessor"]
