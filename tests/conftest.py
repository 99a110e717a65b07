"""Shared fixtures: a tiny WordPiece vocabulary and BERT text encoder, built offline in the test session."""

import os

# Before anything imports huggingface_hub: an accidental network call must fail fast.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import BertConfig, BertModel, BertTokenizer

from modeling_unimedclip import UniMedCLIPConfig, UniMedCLIPImageProcessor, UniMedCLIPModel, UniMedCLIPProcessor

TINY_WORDS = (
    "a an the of and with in on is no not photo image scan picture view x ray chest ct mri ultrasound "
    "fundus pathology histopathology slide tissue showing shows normal pneumonia effusion edema cardiomegaly "
    "atelectasis consolidation liver lung kidney heart brain tumor tumour benign malignant glaucoma retina "
    "cancer cell cells lesion mass left right there signs evidence finding findings patient radiograph "
    "this that for be"
).split()
# Words that are also letters ("a") appear once, so token ids run from 0 to len(TINY_VOCAB) - 1.
TINY_VOCAB = list(
    dict.fromkeys(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        + list(".,-/()'\":;!?&%0123456789")
        + list("abcdefghijklmnopqrstuvwxyz")
        + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
        + TINY_WORDS
    )
)


def make_tiny_tokenizer() -> BertTokenizer:
    return BertTokenizer(vocab={w: i for i, w in enumerate(TINY_VOCAB)}, do_lower_case=True, model_max_length=256)


def make_tiny_bert_config(hidden_size: int = 32, num_layers: int = 2) -> BertConfig:
    return BertConfig(
        vocab_size=len(TINY_VOCAB),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=512,
    )


@pytest.fixture(scope="session")
def tiny_tokenizer() -> BertTokenizer:
    return make_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A directory laid out like a BiomedBERT Hub repository: config, tokenizer and weights."""
    path = tmp_path_factory.mktemp("tiny-biomedbert")
    torch.manual_seed(0)
    BertModel(make_tiny_bert_config(), add_pooling_layer=False).save_pretrained(path)
    make_tiny_tokenizer().save_pretrained(path)
    return path


LABELS = ["pneumonia", "normal chest", "liver mass"]


# A ViT small enough for CPU tests: 32 px images in 8 px patches, 2 layers.
TINY_VISION = dict(
    image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128
)


def tiny_config(**overrides) -> UniMedCLIPConfig:
    """A UniMed-CLIP small enough for CPU tests: the tiny ViT and a 2-layer BERT."""
    return UniMedCLIPConfig(
        vision_config={**TINY_VISION, "hidden_act": "quick_gelu"},
        text_config=make_tiny_bert_config().to_dict(),
        projection_dim=24,
        **overrides,
    )


def images(count: int, size: int = 40) -> list[Image.Image]:
    """`count` random RGB images of an odd size, the same for the same count."""
    rng = np.random.default_rng(count)
    return [Image.fromarray(rng.integers(0, 256, (size, size + 7, 3), dtype=np.uint8)) for _ in range(count)]


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A saved tiny UniMed-CLIP with its processor, as `save_pretrained` lays out a Hub repository."""
    torch.manual_seed(0)
    model = UniMedCLIPModel(tiny_config(logit_scale_init_value=3.0)).eval()
    processor = UniMedCLIPProcessor(image_processor=UniMedCLIPImageProcessor(size=32), tokenizer=tiny_tokenizer)
    path = tmp_path_factory.mktemp("unimed-clip-tiny")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
