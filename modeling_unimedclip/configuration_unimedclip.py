"""UniMed-CLIP model configuration."""

import transformers
from packaging import version

# Checked before anything else is imported from transformers. 4.x nests `CLIPVisionModel` weights under
# `vision_model.` and would load this model's weights with a randomly initialised vision tower, emitting only
# warnings; 5.0-5.19 lack `SubConfigSpec`, which the configuration is built on.
MIN_TRANSFORMERS = "5.20"
if version.parse(transformers.__version__) < version.parse(MIN_TRANSFORMERS):
    raise ImportError(
        f"UniMed-CLIP needs transformers>={MIN_TRANSFORMERS}, found {transformers.__version__}: older versions either "
        f"silently mis-load the vision tower (4.x) or lack the configuration classes it uses (5.0-5.19). Upgrade with "
        f"`pip install -U 'transformers>={MIN_TRANSFORMERS}'`."
    )

from huggingface_hub.dataclasses import strict  # noqa: E402
from transformers import BertConfig, CLIPVisionConfig, PreTrainedConfig  # noqa: E402
from transformers.configuration_utils import SubConfigSpec  # noqa: E402
from transformers.models.auto import image_processing_auto  # noqa: E402

# Tower shapes of the released checkpoints; which variant combines which is recorded in `unimedclip.variants`.
VIT_B16_224 = dict(
    image_size=224,
    patch_size=16,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
)
VIT_L14_336 = dict(
    image_size=336,
    patch_size=14,
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    intermediate_size=4096,
)
# microsoft/BiomedNLP-BiomedBERT-{base,large}-uncased-abstract
BIOMEDBERT_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
BIOMEDBERT_LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)

# `AutoImageProcessor`: the exact (PIL) processor, then the fast one, which transformers takes for
# `backend="torchvision"` or `use_fast=True`.
AUTO_IMAGE_PROCESSORS = [
    "image_processing_unimedclip.UniMedCLIPImageProcessor",
    "image_processing_unimedclip_fast.UniMedCLIPImageProcessorFast",
]
AUTO_MAP = {
    "AutoConfig": "configuration_unimedclip.UniMedCLIPConfig",
    "AutoModel": "modeling_unimedclip.UniMedCLIPModel",
    "AutoModelForZeroShotImageClassification": "modeling_unimedclip.UniMedCLIPModel",
    "AutoModelForImageClassification": "modeling_unimedclip.UniMedCLIPForImageClassification",
    "AutoProcessor": "processing_unimedclip.UniMedCLIPProcessor",
    "AutoImageProcessor": AUTO_IMAGE_PROCESSORS,
}
# transformers defaults to the torchvision backend, which is not bit-exact with the original preprocessing: keep the
# PIL processor the default. Every module of this bundle imports this one first, so this runs before transformers
# chooses a backend for AutoModel, AutoProcessor and the pipelines, with or without the package installed; only a
# bare `AutoImageProcessor.from_pretrained(..., trust_remote_code=True)` in a fresh process chooses before any of
# our code runs.
if "UniMedCLIPImageProcessor" not in image_processing_auto.DEFAULT_TO_PIL_BACKEND_IMAGE_PROCESSORS:
    image_processing_auto.DEFAULT_TO_PIL_BACKEND_IMAGE_PROCESSORS.append("UniMedCLIPImageProcessor")


@strict
class UniMedCLIPConfig(PreTrainedConfig):
    r"""
    Configuration of a [`UniMedCLIPModel`]: a CLIP ViT image tower (QuickGELU) and a BERT text tower whose last-layer
    [CLS] state goes through a bias-free Linear-GELU-Linear head. The defaults give the released ViT-B/16 model;
    `unimedclip.variants.VARIANTS[name].config()` gives any of the three released shapes.

    vision_config (`dict` or `CLIPVisionConfig`, *optional*):
        The image tower. The original towers use `hidden_act="quick_gelu"` and LayerNorm eps 1e-5.
    text_config (`dict` or `BertConfig`, *optional*):
        The text tower, a BiomedBERT (uncased, pad id 0).
    projection_dim (`int`, *optional*, defaults to 512):
        Size of the shared image-text embedding space.
    text_head_hidden_size (`int`, *optional*):
        Hidden size of the text head; defaults to `(text hidden size + projection_dim) // 2` as in the original.
    logit_scale_init_value (`float`, *optional*, defaults to 2.6592):
        Initial log temperature, ln(1 / 0.07).

    Example:

    ```python
    >>> from modeling_unimedclip import UniMedCLIPConfig, UniMedCLIPModel
    >>> from modeling_unimedclip.configuration_unimedclip import BIOMEDBERT_BASE, VIT_L14_336

    >>> config = UniMedCLIPConfig(
    ...     vision_config={**VIT_L14_336, "hidden_act": "quick_gelu"}, text_config=BIOMEDBERT_BASE, projection_dim=768
    ... )
    >>> model = UniMedCLIPModel(config)
    ```"""

    model_type = "unimed_clip"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(CLIPVisionConfig, init_kwargs={**VIT_B16_224, "hidden_act": "quick_gelu"}),
        "text_config": SubConfigSpec(BertConfig, init_kwargs=BIOMEDBERT_BASE),
    }

    vision_config: dict | CLIPVisionConfig | None = None
    text_config: dict | BertConfig | None = None
    projection_dim: int = 512
    text_head_hidden_size: int | None = None
    logit_scale_init_value: float | int = 2.6592

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        # `register_for_auto_class` records one auto class per class, but the zero-shot pipeline resolves
        # `AutoModelForZeroShotImageClassification`: declare every entry the remote-code bundle serves.
        self.auto_map = {**AUTO_MAP, **(getattr(self, "auto_map", None) or {})}
        if self.text_head_hidden_size is None:
            self.text_head_hidden_size = (self.text_config.hidden_size + self.projection_dim) // 2

    def validate_architecture(self):
        """Part of `@strict` validation."""
        if self.projection_dim <= 0:
            raise ValueError(f"projection_dim must be positive, got {self.projection_dim}.")
        if self.text_head_hidden_size is not None and self.text_head_hidden_size <= 0:
            raise ValueError(f"text_head_hidden_size must be positive, got {self.text_head_hidden_size}.")


__all__ = ["UniMedCLIPConfig"]
