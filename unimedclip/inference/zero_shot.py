"""Zero-shot classification of images and volumes with prompt ensembles, as in the UniMed-CLIP evaluation.

A class is embedded as the mean of its L2-normalised prompt embeddings, normalised again. An image scores each class
by cosine similarity; a volume either pools its slice embeddings (`mean`) or takes, per class, its best slice (`max`,
for findings visible on a few slices). Probabilities are the softmax of the similarities scaled by the model's
temperature, as the zero-shot pipeline reports them.
"""

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from ..modalities import MODALITIES

# Prompt templates per imaging modality, plus `generic` for labels of no stated modality.
TEMPLATES: dict[str, list[str]] = json.loads((Path(__file__).parent / "prompt_templates.json").read_text())
POOLINGS = ("mean", "max")


def expand_labels(labels: list[str], modality: str | None = None) -> dict[str, list[str]]:
    """Each bare label with the shipped prompt ensemble of `modality` (a generic one when None)."""
    if modality is not None and modality not in MODALITIES:
        raise ValueError(f"Unknown modality {modality!r}; choose one of {tuple(MODALITIES)}.")
    labels = [label.strip() for label in labels]
    if not labels or not all(labels):
        raise ValueError(f"Labels must be non-empty; got {labels}.")
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ValueError(f"Labels must be distinct; {duplicates} appear more than once in {labels}.")
    templates = TEMPLATES[modality or "generic"]
    return {label: [template.format(label) for template in templates] for label in labels}


@torch.no_grad()
def text_embeddings(model, processor, texts: list[str], batch_size: int = 64) -> torch.Tensor:
    """(texts, dim) normalised text embeddings, float32, computed in batches."""
    embeddings = []
    for start in range(0, len(texts), batch_size):
        batch = texts[start : start + batch_size]
        inputs = processor(text=batch, padding=True, truncation=True, return_tensors="pt").to(model.device)
        embeddings.append(F.normalize(project_texts(model, inputs).float(), dim=-1))
    return torch.cat(embeddings)


@torch.no_grad()
def class_embeddings(model, processor, prompts: dict[str, list[str]]) -> torch.Tensor:
    """(classes, dim): per class, the renormalised mean of its normalised prompt embeddings."""
    texts = [text for class_prompts in prompts.values() for text in class_prompts]
    embeddings = text_embeddings(model, processor, texts)
    per_class = torch.split(embeddings, [len(class_prompts) for class_prompts in prompts.values()])
    return F.normalize(torch.stack([class_embeds.mean(dim=0) for class_embeds in per_class]), dim=-1)


def project_texts(model, inputs) -> torch.Tensor:
    """Unnormalised text embeddings of a dual encoder (`get_text_features`) or of a text tower with its projection
    (`text_embeds`, as `UniMedCLIPTextModelWithProjection` returns)."""
    if hasattr(model, "get_text_features"):
        return model.get_text_features(**inputs).pooler_output
    return model(**inputs).text_embeds


def project_images(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """Unnormalised image embeddings of a dual encoder (`get_image_features`, as CLIP and UniMed-CLIP have) or of an
    image tower with its projection (`image_embeds`, as `UniMedCLIPVisionModelWithProjection` returns)."""
    if hasattr(model, "get_image_features"):
        return model.get_image_features(pixel_values=pixel_values).pooler_output
    return model(pixel_values=pixel_values).image_embeds


@torch.no_grad()
def image_embeddings(model, processor, images: list, batch_size: int = 32, **image_kwargs) -> torch.Tensor:
    """(images, dim) normalised image embeddings; `image_kwargs` go to the image processor (e.g. `window`)."""
    embeddings = []
    for start in range(0, len(images), batch_size):
        pixel_values = processor(images=images[start : start + batch_size], **image_kwargs).pixel_values
        features = project_images(model, pixel_values.to(model.device, model.dtype))
        embeddings.append(F.normalize(features.float(), dim=-1))
    return torch.cat(embeddings)


def image_probabilities(image_embeds: torch.Tensor, class_embeds: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """(images, classes) softmax over classes of the scaled cosine similarities."""
    return (logit_scale * image_embeds @ class_embeds.T).softmax(dim=-1)


def volume_probabilities(
    slice_embeds: torch.Tensor, class_embeds: torch.Tensor, logit_scale: float, pooling: str = "mean"
) -> torch.Tensor:
    """(classes,) for one volume from its normalised slice embeddings."""
    if pooling == "mean":
        volume = F.normalize(slice_embeds.mean(dim=0, keepdim=True), dim=-1)
        return image_probabilities(volume, class_embeds, logit_scale)[0]
    if pooling == "max":
        best_slice = (slice_embeds @ class_embeds.T).max(dim=0).values
        return (logit_scale * best_slice).softmax(dim=-1)
    raise ValueError(f"Unknown pooling {pooling!r}; choose one of {POOLINGS}.")


__all__ = [
    "POOLINGS",
    "TEMPLATES",
    "class_embeddings",
    "expand_labels",
    "text_embeddings",
    "image_embeddings",
    "image_probabilities",
    "project_images",
    "volume_probabilities",
]
