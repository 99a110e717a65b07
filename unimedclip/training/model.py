"""The model and processor a run starts from: a UniMed-CLIP checkpoint, MetaCLIP + BiomedBERT, or from scratch."""

from transformers import AutoTokenizer, BertConfig, CLIPVisionConfig

from modeling_unimedclip import UniMedCLIPConfig, UniMedCLIPImageProcessor, UniMedCLIPModel, UniMedCLIPProcessor

from ..variants import VARIANTS
from .config import TrainingConfig

# The demo's shape: trains on CPU in minutes.
TINY = dict(
    vision_config=dict(
        image_size=64, patch_size=8, hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512
    ),
    text_config=dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512),
    projection_dim=64,
)


def scratch_config(architecture: str, vocab_size: int, image_size: int | None) -> UniMedCLIPConfig:
    if architecture == "tiny":
        vision = CLIPVisionConfig(**TINY["vision_config"], hidden_act="quick_gelu")
        text = BertConfig(**TINY["text_config"], vocab_size=vocab_size)
        config = UniMedCLIPConfig(vision_config=vision, text_config=text, projection_dim=TINY["projection_dim"])
    else:
        config = VARIANTS[architecture].config()
        config.text_config.vocab_size = vocab_size
    if image_size is not None:
        config.vision_config.image_size = image_size
    return config


def build_model_and_processor(config: TrainingConfig) -> tuple[UniMedCLIPModel, UniMedCLIPProcessor]:
    """The model to train (towers locked as configured) and the processor saved with it."""
    if config.init == "pretrained":
        model = UniMedCLIPModel.from_pretrained(config.pretrained)
        processor = UniMedCLIPProcessor.from_pretrained(config.pretrained)
        if config.tokenizer:
            processor.tokenizer = AutoTokenizer.from_pretrained(config.tokenizer)
        if config.image_size not in (None, model.config.vision_config.image_size):
            raise ValueError(
                f"image_size {config.image_size} differs from the checkpoint's {model.config.vision_config.image_size}"
                "; continuing a UniMed-CLIP checkpoint keeps its resolution."
            )
    else:
        tokenizer = AutoTokenizer.from_pretrained(config.tokenizer or config.text)
        if config.init == "vision-text":
            model = UniMedCLIPModel.from_vision_text_pretrained(
                config.vision, config.text, image_size=config.image_size
            )
        else:
            # Not len(tokenizer): a vocabulary may skip ids, and every id it produces needs an embedding row.
            vocab_size = max(tokenizer.get_vocab().values()) + 1
            model = UniMedCLIPModel(scratch_config(config.architecture, vocab_size, config.image_size))
        processor = UniMedCLIPProcessor(
            image_processor=UniMedCLIPImageProcessor(size=model.config.vision_config.image_size), tokenizer=tokenizer
        )
    if config.lock_image:
        model.vision_model.requires_grad_(False)
        model.visual_projection.requires_grad_(False)
    if config.lock_text:
        model.text_model.requires_grad_(False)
    if config.activation_checkpointing:
        model.activation_checkpointing_enable()
    return model, processor
