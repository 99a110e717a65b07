"""UniMedCLIPImageProcessor and UniMedCLIPProcessor: bit-exact parity with open_clip's evaluation transform and
tokenizer, high-bit-depth images, input types, clear errors, and save/load."""

import functools
import io
import json

import numpy as np
import open_clip
import pytest
import torch
from open_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.tokenizer import HFTokenizer
from PIL import Image
from torchvision import transforms
from transformers import AutoImageProcessor, BertTokenizer
from transformers.image_utils import PILImageResampling

from modeling_unimedclip import UniMedCLIPImageProcessor, UniMedCLIPProcessor
from modeling_unimedclip.processing_unimedclip import clean_text

IMAGE_SIZES = [(401, 299), (299, 401), (224, 224), (1000, 223), (37, 50)]  # (width, height)
MODES = ["L", "RGB", "RGBA", "LA", "P", "CMYK", "1"]

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + (
    "a b & ; \" ' . , - < > amp chest x ray showing pneumonia normal liver lesion of the"
).split()
CLS, SEP = VOCAB.index("[CLS]"), VOCAB.index("[SEP]")


@functools.cache
def open_clip_transform(size: int):
    return open_clip.image_transform(size, is_train=False, mean=OPENAI_DATASET_MEAN, std=OPENAI_DATASET_STD)


def reference(images: list[Image.Image], size: int = 224) -> torch.Tensor:
    return torch.stack([open_clip_transform(size)(image) for image in images])


def pixels(images, size: int = 224) -> torch.Tensor:
    return UniMedCLIPImageProcessor(size=size)(images).pixel_values


def rgba_pattern(width: int, height: int, kind: str) -> np.ndarray:
    """A (height, width, 4) uint8 array: uniform noise, or smooth gradients that resampling preserves."""
    if kind == "noise":
        return np.random.default_rng(0).integers(0, 256, (height, width, 4), dtype=np.uint8)
    y, x = np.mgrid[0:height, 0:width]
    u, v = x / max(width - 1, 1), y / max(height - 1, 1)
    return (np.stack([u, v, (u + v) / 2, 1 - u * v], axis=-1) * 255).round().astype(np.uint8)


def make_image(mode: str, width: int, height: int, kind: str) -> Image.Image:
    rgba = Image.fromarray(rgba_pattern(width, height, kind))
    if mode == "P":
        return rgba.convert("RGB").quantize(64)  # an adaptive palette, as in real palette files
    return rgba if mode == "RGBA" else rgba.convert(mode)


def range_scaled(values: np.ndarray) -> Image.Image:
    """The expected 8-bit version of a high-bit-depth image: [min, max] mapped linearly onto [0, 255], rounded."""
    values = values.astype(np.float64)
    low, high = values.min(), values.max()
    return Image.fromarray(np.round((values - low) * 255 / (high - low)).astype(np.uint8))


def tiny_tokenizer() -> BertTokenizer:
    return BertTokenizer(vocab={token: i for i, token in enumerate(VOCAB)}, do_lower_case=True, model_max_length=256)


def ids(*tokens: str) -> list[int]:
    return [VOCAB.index(token) for token in tokens]


# Pixels: the original evaluation transform, bit for bit.


@pytest.mark.parametrize("size", [224, 336])
@pytest.mark.parametrize("mode", MODES)
def test_pixels_equal_open_clip_transform(mode, size):
    images = [make_image(mode, w, h, kind) for w, h in IMAGE_SIZES for kind in ("noise", "gradient")]
    assert all(image.mode == mode for image in images)
    ours = pixels(images, size)
    assert ours.shape == (len(images), 3, size, size) and ours.dtype == torch.float32
    for image, actual, expected in zip(images, ours, reference(images, size)):
        assert torch.equal(actual, expected), f"{mode} {image.size} -> {size}"


def test_palette_images_are_converted_to_rgb_after_resizing():
    image = make_image("P", 401, 299, "gradient")
    assert torch.equal(pixels(image), reference([image]))
    # Converting first would resample colours bicubically instead of palette indices with nearest.
    assert not torch.equal(pixels(image), reference([image.convert("RGB")]))


@pytest.mark.parametrize(("size", "crop_size"), [(224, 200), (224, 231), ({"height": 150, "width": 260}, 231)])
def test_other_resize_and_crop_sizes_equal_torchvision(size, crop_size):
    resize = size if isinstance(size, int) else (size["height"], size["width"])
    expected_transform = transforms.Compose(
        [
            transforms.Resize(resize, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(crop_size),
            lambda image: image.convert("RGB"),
            transforms.ToTensor(),
            transforms.Normalize(OPENAI_DATASET_MEAN, OPENAI_DATASET_STD),
        ]
    )
    processor = UniMedCLIPImageProcessor(size=size, crop_size=crop_size)
    for mode in ("RGB", "P", "LA"):
        images = [make_image(mode, w, h, "noise") for w, h in IMAGE_SIZES]
        expected = torch.stack([expected_transform(image) for image in images])
        assert torch.equal(processor(images).pixel_values, expected), mode


def test_crop_follows_size_unless_given():
    image = make_image("RGB", 401, 299, "noise")
    assert UniMedCLIPImageProcessor(size=336).crop_size["height"] == 336
    assert UniMedCLIPImageProcessor(size=336, crop_size=300)(image).pixel_values.shape == (1, 3, 300, 300)
    assert torch.equal(UniMedCLIPImageProcessor()(image, size=336).pixel_values, reference([image], 336))


# High-bit-depth images: range-scaled to 8 bits, never clipped.


@pytest.mark.parametrize(
    ("name", "values"),
    [
        ("I;16", np.random.default_rng(1).integers(1000, 60001, (299, 401)).astype(np.uint16)),
        ("I;16B", np.random.default_rng(2).integers(1000, 60001, (299, 401)).astype(">u2")),
        ("I", np.random.default_rng(3).integers(-1024, 3072, (401, 299)).astype(np.int32)),
        ("F", np.random.default_rng(4).uniform(-3.5, 12.25, (50, 37)).astype(np.float32)),
    ],
)
def test_high_bit_depth_images_are_range_scaled(name, values):
    image = Image.fromarray(values)
    assert image.mode == name
    expected = range_scaled(values)
    assert np.asarray(expected).min() == 0 and np.asarray(expected).max() == 255
    for size in (224, 336):
        assert torch.equal(pixels(image, size), reference([expected], size))


def test_16_bit_image_is_not_clipped():
    ramp = np.linspace(0, 4095, 299 * 401).reshape(299, 401).astype(np.uint16)  # a 12-bit X-ray range
    image = Image.fromarray(ramp)
    ours = pixels(image)[0, 0]
    black, white = ((value - OPENAI_DATASET_MEAN[0]) / OPENAI_DATASET_STD[0] for value in (0, 1))
    assert ours.min().item() == pytest.approx(black) and ours.max().item() == pytest.approx(white)
    assert (ours == ours.max()).float().mean() < 0.01 and ours.unique().numel() > 200

    clipped = reference([image.convert("L")])[0, 0]  # PIL saturates everything above 255
    assert (clipped == clipped.max()).float().mean() > 0.9
    assert not torch.equal(pixels(image), reference([image]))  # the original clipped too


def test_constant_high_bit_depth_image_maps_to_zero():
    image = Image.fromarray(np.full((40, 30), 5000, dtype=np.uint16))
    assert torch.equal(pixels(image), reference([Image.new("L", (30, 40), 0)]))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_float_image_is_an_error(bad):
    values = np.random.default_rng(0).uniform(0, 1, (20, 30)).astype(np.float32)
    values[3, 4] = bad
    for image in (Image.fromarray(values), values, torch.from_numpy(values)):
        with pytest.raises(ValueError, match="NaN or infinite"):
            pixels(image)


# Input types: arrays, tensors and files take the same path as PIL images.


def test_arrays_and_tensors_equal_the_pil_path():
    rgba = rgba_pattern(401, 299, "noise")
    cases = {
        "HW": (rgba[..., 0], Image.fromarray(rgba[..., 0])),
        "HW1": (rgba[..., :1], Image.fromarray(rgba[..., 0])),
        "HWC3": (rgba[..., :3], Image.fromarray(rgba[..., :3])),
        "HWC4": (rgba, Image.fromarray(rgba)),
    }
    for name, (array, image) in cases.items():
        expected = pixels(image)
        assert torch.equal(pixels(array), expected), name
        assert torch.equal(pixels(torch.from_numpy(array)), expected), name


def test_non_uint8_arrays_and_tensors_are_range_scaled():
    rng = np.random.default_rng(5)
    uint16 = rng.integers(1000, 60001, (299, 401)).astype(np.uint16)
    assert torch.equal(pixels(uint16), pixels(Image.fromarray(uint16)))
    for values in (
        rng.integers(-1024, 3072, (50, 37)).astype(np.int64),
        rng.uniform(0, 1, (299, 401, 3)),  # float RGB in [0, 1] is stretched to its own range, channels jointly
        rng.integers(0, 256, (37, 50)).astype(np.float32),
    ):
        expected = pixels(range_scaled(values))
        assert torch.equal(pixels(values), expected), values.dtype
        assert torch.equal(pixels(torch.from_numpy(values)), expected), values.dtype
    bfloat16 = torch.from_numpy(rng.integers(0, 256, (37, 50)).astype(np.float32)).bfloat16()
    assert torch.equal(pixels(bfloat16), pixels(range_scaled(bfloat16.float().numpy())))


def test_file_paths_equal_the_pil_path(tmp_path):
    rgb = make_image("RGB", 401, 299, "noise")
    x_ray = Image.fromarray(np.random.default_rng(6).integers(0, 4096, (299, 401)).astype(np.uint16))
    rgb.save(tmp_path / "rgb.png")
    x_ray.save(tmp_path / "x_ray.png")
    with Image.open(tmp_path / "x_ray.png") as reloaded:
        assert reloaded.mode == "I;16"
    expected = pixels([rgb, x_ray])
    assert torch.equal(pixels([str(tmp_path / "rgb.png"), tmp_path / "x_ray.png"]), expected)


def test_batches_and_return_types():
    images = [make_image("RGB", w, h, "noise") for w, h in IMAGE_SIZES]
    processor = UniMedCLIPImageProcessor()
    batched = processor(images=images, return_tensors="pt").pixel_values
    assert torch.equal(batched, torch.cat([processor(image).pixel_values for image in images]))
    as_numpy = processor(tuple(images), return_tensors="np").pixel_values
    assert isinstance(as_numpy, np.ndarray) and as_numpy.dtype == np.float32
    assert np.array_equal(as_numpy, batched.numpy())


# Errors: anything that is not an image fails loudly, naming the problem.


def write(path, content: bytes):
    path.write_bytes(content)
    return path


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    make_image("RGB", 80, 60, "noise").save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("make_input", "error", "match"),
    [
        (lambda tmp: None, TypeError, "Unsupported image type builtins.NoneType"),
        (lambda tmp: 3, TypeError, "Unsupported image type builtins.int"),
        (lambda tmp: {"image": 1}, TypeError, "Unsupported image type builtins.dict"),
        (lambda tmp: [[make_image("L", 5, 5, "noise")]], TypeError, "Unsupported image type builtins.list"),
        (lambda tmp: [], ValueError, "`images` is empty"),
        (lambda tmp: str(tmp / "missing.png"), ValueError, r"Image file '.*missing\.png' does not exist"),
        (lambda tmp: tmp, ValueError, "is not a file"),
        (lambda tmp: write(tmp / "notes.txt", b"not an image"), ValueError, r"notes\.txt' is not an image file"),
        (
            lambda tmp: write(tmp / "truncated.png", png_bytes()[:5000]),
            ValueError,
            r"Cannot decode image file '.*truncated\.png': image file is truncated",
        ),
        (
            lambda tmp: write(tmp / "corrupt.png", png_bytes()[:100] + bytes(40) + png_bytes()[140:]),
            ValueError,
            r"Cannot decode image file '.*corrupt\.png'",
        ),
        (lambda tmp: np.zeros((2, 8, 8, 3), np.uint8), ValueError, r"shape \(2, 8, 8, 3\)"),
        (lambda tmp: np.zeros((8, 8, 2), np.uint8), ValueError, r"shape \(8, 8, 2\)"),
        (lambda tmp: np.zeros((3, 8), np.uint8)[:0], ValueError, "The image is empty"),
        (lambda tmp: np.zeros((8, 8), bool), TypeError, "dtype bool"),
        (lambda tmp: np.zeros((8, 8), np.complex64), TypeError, "dtype complex64"),
        (lambda tmp: np.zeros((8, 8), object), TypeError, "dtype object"),
        (lambda tmp: torch.zeros(8, 8, dtype=torch.bool), TypeError, "dtype bool"),
    ],
)
def test_bad_inputs_raise_clear_errors(tmp_path, make_input, error, match):
    with pytest.raises(error, match=match):
        UniMedCLIPImageProcessor()(make_input(tmp_path))


def test_bad_image_in_a_batch_is_named_by_index():
    with pytest.raises(TypeError, match=r"images\[1\]: Unsupported image type builtins.NoneType"):
        UniMedCLIPImageProcessor()([make_image("RGB", 9, 9, "noise"), None])


def test_bad_options_raise_clear_errors():
    image = make_image("RGB", 9, 9, "noise")
    with pytest.raises(TypeError, match="do_pad"):
        UniMedCLIPImageProcessor()(image, do_pad=True)
    with pytest.raises(ValueError, match="`size` must be an int"):
        UniMedCLIPImageProcessor(size={"longest_edge": 300})
    with pytest.raises(ValueError, match="`crop_size` must hold positive integers"):
        UniMedCLIPImageProcessor(crop_size=0)
    with pytest.raises(ValueError, match="`image_mean` must be one value or three"):
        UniMedCLIPImageProcessor(image_mean=(0.5, 0.5))


def test_image_processor_save_and_load(tmp_path):
    processor = UniMedCLIPImageProcessor(size=336)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["size"] == {"shortest_edge": 336} and saved["crop_size"] == {"height": 336, "width": 336}
    assert saved["resample"] == PILImageResampling.BICUBIC
    assert saved["image_mean"] == list(OPENAI_DATASET_MEAN) and saved["image_std"] == list(OPENAI_DATASET_STD)
    for loaded in (UniMedCLIPImageProcessor.from_pretrained(tmp_path), AutoImageProcessor.from_pretrained(tmp_path)):
        assert isinstance(loaded, UniMedCLIPImageProcessor) and loaded.to_dict() == processor.to_dict()
    image = make_image("P", 401, 299, "noise")
    assert torch.equal(loaded(image).pixel_values, reference([image], 336))


# Processor: text cleaning, tokenization and save/load.


@pytest.fixture
def processor() -> UniMedCLIPProcessor:
    return UniMedCLIPProcessor(image_processor=UniMedCLIPImageProcessor(size=336), tokenizer=tiny_tokenizer())


def test_dynamic_padding(processor):
    batch = processor(text=["pneumonia", "a chest x-ray showing pneumonia"])
    assert batch.input_ids.tolist() == [
        [CLS, *ids("pneumonia"), SEP, 0, 0, 0, 0, 0, 0],
        [CLS, *ids("a", "chest", "x", "-", "ray", "showing", "pneumonia"), SEP],
    ]
    assert batch.attention_mask.tolist() == [[1] * 3 + [0] * 6, [1] * 9]
    assert processor(text="pneumonia", padding="max_length").input_ids.shape == (1, 256)


def test_truncation_to_the_context_length(processor):
    input_ids = processor(text="chest " * 1000).input_ids
    assert input_ids.tolist() == [[CLS] + ids("chest") * 254 + [SEP]]


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("  a  &amp;amp;\n\tb ", "a & b"),
        ("a < b &amp;amp; b", "a < b & b"),  # ftfy leaves HTML-like text alone: the double unescape matters
        ("\u201cpneumonia\u201d", '"pneumonia"'),  # ftfy straightens curly quotes
        ("normal\u00a0liver &lt;lesion&gt;", "normal liver <lesion>"),
    ],
)
def test_text_is_cleaned_like_the_original(processor, raw, clean):
    assert clean_text(raw) == clean
    tokenizer = processor.tokenizer
    assert torch.equal(processor(text=raw).input_ids, tokenizer(clean, return_tensors="pt").input_ids)
    assert tokenizer(raw).input_ids != tokenizer(clean).input_ids  # cleaning changes the tokens


def test_tokens_equal_open_clip_hf_tokenizer(processor, tmp_path):
    processor.tokenizer.save_pretrained(tmp_path)
    texts = ["A chest X-ray showing  pneumonia.", "liver &amp;amp; <lesion>", "\u2018normal\u2019 " * 300]
    expected = HFTokenizer(str(tmp_path), context_length=256)(texts)
    assert torch.equal(processor(text=texts, padding="max_length").input_ids, expected)


def test_text_and_images_together(processor):
    images = [make_image("RGB", 401, 299, "noise"), make_image("L", 37, 50, "gradient")]
    batch = processor(text=["pneumonia", "normal"], images=images)
    assert (
        set(batch)
        == set(processor.model_input_names)
        == {"input_ids", "token_type_ids", "attention_mask", "pixel_values"}
    )
    assert torch.equal(batch.pixel_values, reference(images, 336))
    assert processor(images=images, size=224).pixel_values.shape == (2, 3, 224, 224)
    assert "token_type_ids" not in processor(text="normal", return_token_type_ids=False)
    as_numpy = processor(text="normal", images=images[0], return_tensors="np")
    assert isinstance(as_numpy.input_ids, np.ndarray) and isinstance(as_numpy.pixel_values, np.ndarray)
    assert processor.batch_decode(batch.input_ids, skip_special_tokens=True) == ["pneumonia", "normal"]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({}, ValueError, "needs `text`, `images` or both"),
        ({"text": []}, ValueError, "`text` is an empty list"),
        ({"text": ""}, ValueError, "`text` is empty after cleaning"),
        ({"text": ["normal", " &nbsp; "]}, ValueError, r"`text\[1\]` is empty after cleaning"),
        ({"text": ["normal", 3]}, TypeError, r"`text\[1\]` must be a string; got int"),
        ({"text": 3}, TypeError, "`text` must be a string or a list of strings; got int"),
    ],
)
def test_processor_bad_inputs(processor, kwargs, error, match):
    with pytest.raises(error, match=match):
        processor(**kwargs)


def test_processor_save_and_load(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())["image_processor"]
    assert saved["image_processor_type"] == "UniMedCLIPImageProcessor"
    assert saved["size"] == {"shortest_edge": 336} and saved["crop_size"] == {"height": 336, "width": 336}
    assert saved["resample"] == PILImageResampling.BICUBIC
    assert saved["image_mean"] == list(OPENAI_DATASET_MEAN) and saved["image_std"] == list(OPENAI_DATASET_STD)

    loaded = UniMedCLIPProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded.image_processor, UniMedCLIPImageProcessor)
    assert loaded.image_processor.to_dict() == processor.image_processor.to_dict()
    assert loaded.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    inputs = dict(text=["a chest x-ray", "liver &amp; lesion"], images=[make_image("P", 299, 401, "noise")] * 2)
    first, second = processor(**inputs), loaded(**inputs)
    assert set(first) == set(second)
    for key in first:
        assert torch.equal(first[key], second[key]), key


# transformers' processing conventions: keyword routing, every option taking effect, unknown options refused.


def test_every_documented_option_takes_effect(processor):
    image = make_image("RGB", 401, 299, "noise")
    default = processor(images=image).pixel_values
    unnormalised = processor(images=image, do_normalize=False).pixel_values
    mean, std = torch.tensor(OPENAI_DATASET_MEAN).view(3, 1, 1), torch.tensor(OPENAI_DATASET_STD).view(3, 1, 1)
    torch.testing.assert_close((unnormalised - mean) / std, default, rtol=0, atol=1e-6)
    assert torch.equal(processor(images=image, images_kwargs={"do_normalize": False}).pixel_values, unnormalised)
    raw = processor(images=image, do_normalize=False, do_rescale=False).pixel_values
    assert torch.equal(raw, (unnormalised * 255).round()) and raw.max() > 1
    assert torch.equal(
        processor(images=image, do_rescale=True, rescale_factor=0.5, do_normalize=False).pixel_values, raw * 0.5
    )
    uncropped = processor(images=image, do_center_crop=False).pixel_values
    assert uncropped.shape == (1, 3, 336, 450)  # shortest side 336, the long side int(336 * 401 / 299)
    unresized = processor(images=image, do_resize=False).pixel_values
    assert unresized.shape == (1, 3, 336, 336)  # cropped from the 401x299 original, zero padded
    assert torch.equal(processor(images=image, size=224).pixel_values, reference([image], 224))
    assert torch.equal(processor(images=image, images_kwargs={"size": 224}).pixel_values, reference([image], 224))
    assert processor(text="normal", text_kwargs={"padding": "max_length"}).input_ids.shape == (1, 256)
    mixed = [make_image("RGB", 401, 299, "noise"), make_image("RGB", 37, 50, "noise")]
    with pytest.raises(ValueError, match="different sizes after resizing and cropping"):
        processor(images=mixed, do_center_crop=False)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"do_normalise": False}, "Unknown option `do_normalise`"),
        ({"do_convert_rgb": False}, "Unknown option `do_convert_rgb`"),
        ({"images_kwargs": {"sise": 224}}, r"Unknown option\(s\) \['sise'\] in `images_kwargs`"),
        ({"text_kwargs": {"pading": True}}, r"Unknown option\(s\) \['pading'\] in `text_kwargs`"),
    ],
)
def test_unknown_options_are_refused_by_name(processor, kwargs, match):
    with pytest.raises(ValueError, match=match):
        processor(text="normal", images=make_image("RGB", 40, 40, "noise"), **kwargs)


def test_channels_first_arrays_and_tensors(processor):
    image = make_image("RGB", 401, 299, "noise")
    expected = reference([image], 336)
    channels_first = torch.from_numpy(np.array(image)).permute(2, 0, 1)  # what torchvision.io.read_image returns
    assert torch.equal(processor(images=channels_first).pixel_values, expected)
    assert torch.equal(
        processor(images=channels_first.numpy(), input_data_format="channels_first").pixel_values, expected
    )
    assert torch.equal(processor(images=np.array(image), input_data_format="channels_last").pixel_values, expected)
    gray = np.array(image.convert("L"))[None]  # (1, H, W)
    assert torch.equal(processor(images=gray).pixel_values, reference([image.convert("L")], 336))


# The fast (torchvision) image processor.


def test_fast_processor_is_chosen_by_backend_and_stays_close_to_the_exact_one(tmp_path):
    from modeling_unimedclip import UniMedCLIPImageProcessorFast

    UniMedCLIPImageProcessor(size=224).save_pretrained(tmp_path)
    assert type(AutoImageProcessor.from_pretrained(tmp_path)) is UniMedCLIPImageProcessor
    fast = AutoImageProcessor.from_pretrained(tmp_path, backend="torchvision")
    assert type(fast) is UniMedCLIPImageProcessorFast
    assert type(AutoImageProcessor.from_pretrained(tmp_path, use_fast=True)) is UniMedCLIPImageProcessorFast
    exact = UniMedCLIPImageProcessor(size=224)
    for mode in MODES:
        images = [make_image(mode, width, height, "noise") for width, height in IMAGE_SIZES]
        fast_pixels = fast(images).pixel_values
        assert fast_pixels.shape == (len(images), 3, 224, 224) and fast_pixels.dtype == torch.float32
        # The fast processor converts to RGB before resizing, as torchvision pipelines do; the exact one resizes in
        # the image's own mode (palette and 1-bit images with nearest, alpha premultiplied), as the original did.
        as_rgb = exact([image.convert("RGB") for image in images]).pixel_values
        assert (fast_pixels - as_rgb).abs().max() <= FAST_MAX_DIFFERENCE, mode
        if mode in ("L", "RGB", "CMYK"):
            assert (fast_pixels - exact(images).pixel_values).abs().max() <= FAST_MAX_DIFFERENCE, mode
    fast.save_pretrained(tmp_path / "fast")
    assert type(AutoImageProcessor.from_pretrained(tmp_path / "fast")) is UniMedCLIPImageProcessor  # exact by default


# The fast and exact processors differ by at most two 8-bit levels per pixel after resizing (0.030 per normalised
# pixel; bench/bench_processor.py measures it over more images, the README states it).
FAST_MAX_DIFFERENCE = 2 / 255 / min(OPENAI_DATASET_STD) + 1e-6
