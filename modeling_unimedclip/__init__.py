"""The UniMed-CLIP remote-code bundle: exactly the modules that `save_pretrained` copies next to the weights, for
users who load a model with `trust_remote_code=True` and without this project installed.

    configuration_unimedclip.py      the configuration (dimensions only)
    modeling_unimedclip.py           the model
    image_processing_unimedclip.py   the image processor (exact, PIL)
    image_processing_unimedclip_fast.py  the fast image processor (torchvision)
    processing_unimedclip.py         the processor (tokenizer and image processor)
    dicom_unimedclip.py              DICOM pixel data to display values, for the image processor

The modules import nothing of this project outside this folder (`tests/test_layout.py` checks it). This `__init__`
is not shipped: importing the package registers the classes with the transformers auto classes, so `AutoModel`,
`AutoProcessor` and `pipeline(...)` work on UniMed-CLIP directories without `trust_remote_code`.
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
)

from .configuration_unimedclip import UniMedCLIPConfig
from .image_processing_unimedclip import UniMedCLIPImageProcessor
from .image_processing_unimedclip_fast import UniMedCLIPImageProcessorFast
from .modeling_unimedclip import (
    UniMedCLIPForImageClassification,
    UniMedCLIPModel,
    UniMedCLIPPreTrainedModel,
    UniMedCLIPTextModelWithProjection,
    UniMedCLIPVisionModelWithProjection,
)
from .processing_unimedclip import UniMedCLIPProcessor

AutoConfig.register(UniMedCLIPConfig.model_type, UniMedCLIPConfig)
AutoModel.register(UniMedCLIPConfig, UniMedCLIPModel)
AutoModelForZeroShotImageClassification.register(UniMedCLIPConfig, UniMedCLIPModel)
AutoModelForImageClassification.register(UniMedCLIPConfig, UniMedCLIPForImageClassification)
# The PIL processor, bit-exact with the original preprocessing, stays the default (image_processing_unimedclip.py).
AutoImageProcessor.register(
    UniMedCLIPConfig,
    image_processor_classes={"pil": UniMedCLIPImageProcessor, "torchvision": UniMedCLIPImageProcessorFast},
)
AutoProcessor.register(UniMedCLIPConfig, UniMedCLIPProcessor)

# Makes `save_pretrained` copy the code files next to the weights.
UniMedCLIPConfig.register_for_auto_class()
UniMedCLIPModel.register_for_auto_class("AutoModel")
UniMedCLIPForImageClassification.register_for_auto_class("AutoModelForImageClassification")
UniMedCLIPImageProcessor.register_for_auto_class("AutoImageProcessor")
UniMedCLIPProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "UniMedCLIPConfig",
    "UniMedCLIPForImageClassification",
    "UniMedCLIPImageProcessor",
    "UniMedCLIPImageProcessorFast",
    "UniMedCLIPModel",
    "UniMedCLIPPreTrainedModel",
    "UniMedCLIPProcessor",
    "UniMedCLIPTextModelWithProjection",
    "UniMedCLIPVisionModelWithProjection",
]
