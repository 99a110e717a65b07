"""The classifier a fine-tuning run starts from, and what each method trains of it.

From a UniMed-CLIP checkpoint the run builds the zero-shot classifier (a head of the class prompts' text embeddings,
`UniMedCLIPForImageClassification.from_zero_shot`), the "before" point of the results and WiSE-FT's zero-shot end,
and trains either a copy of it or, with `head_init random`, the image tower under a new head. A classifier fine-tuned
earlier continues as it is, if its classes are the data's.
"""

import copy
import json
from pathlib import Path

from torch import nn
from transformers import AutoConfig, AutoProcessor

from modeling_unimedclip import UniMedCLIPConfig, UniMedCLIPForImageClassification, UniMedCLIPModel

from ..inference.predict import parse_window
from ..inference.zero_shot import class_embeddings, expand_labels
from .config import FinetuneConfig


class ModelError(ValueError):
    """A checkpoint or prompt set that does not fit the run; the message names the problem."""


def load_processor(config: FinetuneConfig):
    """The checkpoint's processor, with the run's DICOM options as image processor defaults: training and evaluation
    read images with them, and the saved classifier's processor keeps them for inference."""
    processor = AutoProcessor.from_pretrained(config.model)
    if config.window is not None:
        processor.image_processor.window = parse_window(config.window)
    if config.frame is not None:
        processor.image_processor.frame = config.frame
    return processor


def class_prompts(config: FinetuneConfig, classes: list[str]) -> dict[str, list[str]]:
    """Prompts per class: from `--prompts`, else the class names in the modality's shipped templates."""
    if config.prompts is None:
        return expand_labels(classes, config.modality)
    prompts = json.loads(Path(config.prompts).read_text())
    missing = [name for name in classes if not isinstance(prompts.get(name), list) or not prompts[name]]
    if missing:
        raise ModelError(
            f"{config.prompts} has no prompts for class(es) {missing}; it must map every class to a list of prompts, "
            f'e.g. {{"{classes[0]}": ["Chest X-ray showing {classes[0]}."]}}.'
        )
    return {name: prompts[name] for name in classes}


def starting_classifier(
    config: FinetuneConfig, classes: list[str], processor
) -> tuple[UniMedCLIPForImageClassification, UniMedCLIPForImageClassification | None]:
    """(the classifier to train, the zero-shot classifier or None when the checkpoint has no text tower)."""
    base = AutoConfig.from_pretrained(config.model)
    if base.model_type != UniMedCLIPConfig.model_type:
        raise ModelError(f"{config.model} is a {base.model_type!r} checkpoint, not UniMed-CLIP.")
    if UniMedCLIPForImageClassification.__name__ in (base.architectures or []):
        labels = [base.id2label[index] for index in range(base.num_labels)]
        if labels != classes:
            raise ModelError(
                f"{config.model} is a classifier of {len(labels)} classes {labels}, but the data has {len(classes)} "
                f"classes {classes}. Fine-tune the UniMed-CLIP checkpoint it came from for these classes, or give "
                "data of its classes (--classes in its order)."
            )
        if config.wise_ft:
            raise ModelError(
                f"WiSE-FT mixes in the zero-shot classifier, which {config.model} (a classifier, without the text "
                "tower) cannot give: start from the UniMed-CLIP checkpoint it was fine-tuned from."
            )
        return UniMedCLIPForImageClassification.from_pretrained(config.model), None
    clip = UniMedCLIPModel.from_pretrained(config.model).eval()
    embeds = class_embeddings(clip, processor, class_prompts(config, classes))
    zero_shot = UniMedCLIPForImageClassification.from_zero_shot(clip, embeds, classes)
    if config.head_init == "zero-shot":
        return copy.deepcopy(zero_shot), zero_shot
    label2id = {name: index for index, name in enumerate(classes)}
    classifier = UniMedCLIPForImageClassification.from_pretrained(
        config.model, id2label=dict(enumerate(classes)), label2id=label2id
    )
    return classifier, zero_shot


def prepare_for_method(classifier: UniMedCLIPForImageClassification, config: FinetuneConfig) -> nn.Module:
    """What the method trains: the head alone (linear probe), everything (full), or LoRA adapters on the image
    tower's attention plus the head (PEFT). The temperature stays the checkpoint's: the head's norm can take its
    place."""
    classifier.logit_scale.requires_grad_(False)
    if config.method == "linear-probe":
        classifier.vision_model.requires_grad_(False)
        classifier.visual_projection.requires_grad_(False)
    if config.activation_checkpointing:
        classifier.activation_checkpointing_enable()
    if config.method != "lora":
        return classifier
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ModelError("--method lora needs PEFT: pip install 'unimedclip[peft]' (or pip install peft).") from None
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.lora_target_modules,
        modules_to_save=["classifier"],
    )
    try:
        return get_peft_model(classifier, lora)
    except ValueError as error:  # e.g. target modules the image tower does not have
        raise ModelError(f"LoRA cannot adapt {config.lora_target_modules}: {error}") from None


def plain_classifier(model: nn.Module) -> UniMedCLIPForImageClassification:
    """The trained classifier as a `UniMedCLIPForImageClassification`: LoRA adapters merged into a copy (the
    training model is left as it is, so that training continues bit for bit)."""
    if isinstance(model, UniMedCLIPForImageClassification):
        return model
    return copy.deepcopy(model).merge_and_unload()
