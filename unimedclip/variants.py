"""The released UniMed-CLIP variants, one record each: everything the project knows about a variant is here.

Training presets (`unimedclip.training.config`), the converter's `--variant` check, the model cards and the card
metadata all derive from these records. The tower shapes are the remote-code bundle's own dimensions.
"""

from dataclasses import dataclass, field

from transformers import BertConfig, CLIPVisionConfig

from modeling_unimedclip.configuration_unimedclip import (
    BIOMEDBERT_BASE,
    BIOMEDBERT_LARGE,
    VIT_B16_224,
    VIT_L14_336,
    UniMedCLIPConfig,
)

# Hub namespace of the transformers-native release; the released cards in model_cards/ are rendered for it.
RELEASE_NAMESPACE = "unimed-clip"
METACLIP_B16 = "facebook/metaclip-b16-400m"
METACLIP_L14 = "facebook/metaclip-l14-400m"  # trained at 224 px; its positions are resized to 336
BIOMEDBERT_BASE_REPO = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
BIOMEDBERT_LARGE_REPO = "microsoft/BiomedNLP-BiomedBERT-large-uncased-abstract"


@dataclass(frozen=True)
class Variant:
    name: str  # the key everywhere: `--variant`, `--config`, card file names
    title: str
    vision_shape: dict  # CLIPVisionConfig dimensions, image size included
    text_shape: dict  # BertConfig dimensions
    projection_dim: int
    vision_init: str  # the CLIP checkpoint the recipe starts the image tower from
    text_init: str  # the BERT checkpoint the recipe starts the text tower from
    peak_lr: float  # the recipe's values that differ between variants; the others are TrainingConfig's defaults
    original_checkpoint: str  # the original authors' open_clip training file, converted into `repo_id`
    paper_results: dict[str, float] = field(default_factory=dict)  # zero-shot means the paper reports (21 datasets)

    @property
    def image_size(self) -> int:
        return self.vision_shape["image_size"]

    @property
    def repo_id(self) -> str:
        return f"{RELEASE_NAMESPACE}/unimed-clip-vit-{self.name}"

    def config(self, **kwargs) -> UniMedCLIPConfig:
        """The model configuration; keyword arguments override top-level fields (e.g. `logit_scale_init_value`)."""
        return UniMedCLIPConfig(
            vision_config=CLIPVisionConfig(**self.vision_shape, hidden_act="quick_gelu"),
            text_config=BertConfig(**self.text_shape),
            projection_dim=self.projection_dim,
            **kwargs,
        )

    def matches(self, config: UniMedCLIPConfig) -> bool:
        """Whether `config` has this variant's dimensions."""
        expected = self.config()
        return (
            all(getattr(config.vision_config, key) == value for key, value in self.vision_shape.items())
            and all(getattr(config.text_config, key) == value for key, value in self.text_shape.items())
            and config.projection_dim == expected.projection_dim
            and config.text_head_hidden_size == expected.text_head_hidden_size
        )


VARIANTS: dict[str, Variant] = {
    variant.name: variant
    for variant in (
        Variant(
            name="b16",
            title="ViT-B/16, BiomedBERT-base",
            vision_shape=VIT_B16_224,
            text_shape=BIOMEDBERT_BASE,
            projection_dim=512,
            vision_init=METACLIP_B16,
            text_init=BIOMEDBERT_BASE_REPO,
            peak_lr=5e-4,
            original_checkpoint="UzairK/unimed-clip-vit-b16",
            paper_results={
                "xray": 68.78,
                "ct": 85.54,
                "mri": 68.83,
                "ultrasound": 68.64,
                "pathology": 59.96,
                "fundus": 31.23,
                "average": 61.63,
            },
        ),
        Variant(
            name="l14-336-base",
            title="ViT-L/14-336, BiomedBERT-base",
            vision_shape=VIT_L14_336,
            text_shape=BIOMEDBERT_BASE,
            projection_dim=768,
            vision_init=METACLIP_L14,
            text_init=BIOMEDBERT_BASE_REPO,
            peak_lr=4e-4,
            original_checkpoint="UzairK/unimed_clip_vit_l14_base_text_encoder",
            paper_results={"average": 64.84},
        ),
        Variant(
            name="l14-336-large",
            title="ViT-L/14-336, BiomedBERT-large",
            vision_shape=VIT_L14_336,
            text_shape=BIOMEDBERT_LARGE,
            projection_dim=768,
            vision_init=METACLIP_L14,
            text_init=BIOMEDBERT_LARGE_REPO,
            peak_lr=4e-4,
            original_checkpoint="UzairK/unimed_clip_vit_l14_large_text_encoder",
            paper_results={"average": 62.09},
        ),
    )
}


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"Unknown UniMed-CLIP variant {name!r}; choose one of {sorted(VARIANTS)}.") from None


def variant_of(config: UniMedCLIPConfig) -> Variant | None:
    """The released variant with the dimensions of `config`, if any."""
    return next((variant for variant in VARIANTS.values() if variant.matches(config)), None)
