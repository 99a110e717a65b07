"""UniMed-CLIP for Hugging Face transformers.

Importing this package registers the model with the transformers auto classes, so `AutoModel`, `AutoProcessor` and
`pipeline("zero-shot-image-classification", model=...)` work on UniMed-CLIP directories and Hub repositories. The
`configuration_`, `modeling_`, `image_processing_` and `processing_unimedclip.py` modules are also the remote-code
bundle that `save_pretrained` copies next to the weights for users loading with `trust_remote_code=True`.
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
)

from .configuration_unimedclip import VARIANTS, UniMedCLIPConfig
from .image_processing_unimedclip import UniMedCLIPImageProcessor
from .modeling_unimedclip import UniMedCLIPModel, UniMedCLIPPreTrainedModel
from .processing_unimedclip import UniMedCLIPProcessor

AutoConfig.register(UniMedCLIPConfig.model_type, UniMedCLIPConfig)
AutoModel.register(UniMedCLIPConfig, UniMedCLIPModel)
AutoModelForZeroShotImageClassification.register(UniMedCLIPConfig, UniMedCLIPModel)
# One implementation serves both backend names: only the PIL path is bit-exact with the original preprocessing.
AutoImageProcessor.register(
    UniMedCLIPConfig,
    image_processor_classes={"pil": UniMedCLIPImageProcessor, "torchvision": UniMedCLIPImageProcessor},
)
AutoProcessor.register(UniMedCLIPConfig, UniMedCLIPProcessor)

# Makes `save_pretrained` copy the code files next to the weights.
UniMedCLIPConfig.register_for_auto_class()
UniMedCLIPModel.register_for_auto_class("AutoModel")
UniMedCLIPImageProcessor.register_for_auto_class("AutoImageProcessor")
UniMedCLIPProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "VARIANTS",
    "UniMedCLIPConfig",
    "UniMedCLIPImageProcessor",
    "UniMedCLIPModel",
    "UniMedCLIPPreTrainedModel",
    "UniMedCLIPProcessor",
]
