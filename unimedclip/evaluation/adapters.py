"""The models an evaluation compares, behind the one interface `unimedclip.inference.zero_shot` uses.

A model has `device`, `get_image_features(pixel_values=...)` and `get_text_features(**text_inputs)`, each returning an
output whose `pooler_output` is the unnormalised embedding; its processor tokenizes `text=` into those text inputs,
and its `image_processor` turns a PIL image into `pixel_values`. UniMed-CLIP and transformers' CLIP-family models
(CLIP, MetaCLIP, PLIP, PubMedCLIP...) have this interface natively. open_clip models (`hf-hub:` ids, `local-dir:`
and local folders holding `open_clip_config.json`: BiomedCLIP, PMC-CLIP and QuiltNet style releases) are wrapped
here; open_clip is an optional dependency (`pip install "unimedclip[openclip]"`).
"""

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel, AutoProcessor, BatchFeature
from transformers.modeling_outputs import BaseModelOutputWithPooling

from modeling_unimedclip import UniMedCLIPConfig, UniMedCLIPVisionModelWithProjection

from ..release.export_open_clip import OPEN_CLIP_CONFIG
from .readers import decode_image

HF_HUB, LOCAL_DIR = "hf-hub:", "local-dir:"


def load_model(name: str, revision: str | None = None, image_only: bool = False) -> tuple:
    """(model, processor) for a transformers model (directory or Hub id) or an open_clip one; for image-only tasks,
    only the image tower of a UniMed-CLIP (no BERT in memory)."""
    if is_open_clip(name):
        if revision is not None:
            raise ValueError(f"{name}: a revision applies to transformers models only; open_clip reads `main`.")
        return load_open_clip(name)
    try:
        processor = AutoProcessor.from_pretrained(name, revision=revision)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"{name} does not load as a transformers model ({error}). An open_clip model is named `hf-hub:ORG/NAME`, "
            f"`local-dir:DIR` or is a folder holding {OPEN_CLIP_CONFIG}."
        ) from error
    if image_only and AutoConfig.from_pretrained(name, revision=revision).model_type == UniMedCLIPConfig.model_type:
        return UniMedCLIPVisionModelWithProjection.from_pretrained(name, revision=revision), processor
    return AutoModel.from_pretrained(name, revision=revision), processor


def is_open_clip(name: str) -> bool:
    return name.startswith((HF_HUB, LOCAL_DIR)) or (Path(name) / OPEN_CLIP_CONFIG).is_file()


def open_clip_identifier(name: str) -> str:
    """open_clip's identifier of `name`. As transformers and datasets do for Hub ids, a local folder named like the
    `hf-hub:` repository is read instead of the Hub."""
    identifier = name.removeprefix(HF_HUB).removeprefix(LOCAL_DIR)
    if Path(identifier).is_dir():
        return LOCAL_DIR + identifier
    if name.startswith(HF_HUB):
        return name
    raise FileNotFoundError(f"{name}: no such open_clip folder.")


def load_open_clip(name: str) -> tuple["OpenCLIPModel", "OpenCLIPProcessor"]:
    try:
        import open_clip
    except ImportError:
        raise ImportError(f'{name} is an open_clip model; pip install "unimedclip[openclip]" to load it.') from None
    identifier = open_clip_identifier(name)
    model, transform = open_clip.create_model_from_pretrained(identifier)
    return OpenCLIPModel(model), OpenCLIPProcessor(open_clip.get_tokenizer(identifier), transform)


class OpenCLIPModel(torch.nn.Module):
    """An open_clip model with transformers' dual-encoder methods."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def get_image_features(self, pixel_values: torch.Tensor) -> BaseModelOutputWithPooling:
        return BaseModelOutputWithPooling(pooler_output=self.model.encode_image(pixel_values))

    def get_text_features(self, input_ids: torch.Tensor) -> BaseModelOutputWithPooling:
        return BaseModelOutputWithPooling(pooler_output=self.model.encode_text(input_ids))


class OpenCLIPImageProcessor:
    """open_clip's evaluation transform, applied to images decoded as for every other model."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, images, return_tensors: str = "pt") -> BatchFeature:
        if return_tensors != "pt":
            raise ValueError(f"open_clip preprocessing returns PyTorch tensors only, not {return_tensors!r}.")
        images = images if isinstance(images, (list, tuple)) else [images]
        return BatchFeature({"pixel_values": torch.stack([self.transform(decode_image(image)) for image in images])})


class OpenCLIPProcessor:
    """open_clip's tokenizer and image transform behind a transformers processor's call. Its tokenizers always pad
    and truncate to the model's context length, so `padding` and `truncation` are accepted as they are passed."""

    def __init__(self, tokenizer, transform):
        self.tokenizer = tokenizer
        self.image_processor = OpenCLIPImageProcessor(transform)

    def __call__(self, text=None, images=None, padding=True, truncation=True, return_tensors: str = "pt"):
        if text is None and images is None:
            raise ValueError("Give `text`, `images` or both.")
        inputs = BatchFeature()
        if text is not None:
            inputs["input_ids"] = self.tokenizer([text] if isinstance(text, str) else list(text))
        if images is not None:
            inputs.update(self.image_processor(images, return_tensors=return_tensors))
        return inputs
