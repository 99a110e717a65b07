"""Shared fixtures: a tiny WordPiece vocabulary and BERT text encoder, and a tiny UniMed-CLIP that tells the test
labels apart, built offline in the test session."""

import os
import random

# Before anything imports huggingface_hub: an accidental network call must fail fast.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
# One intra-op thread, here and in every subprocess a test starts: the models are tiny, and on a machine shared with
# other jobs two spinning OpenMP threads per process made a demo training step 5-20x slower (measured: 60 steps in
# 22 s with one thread, 119 s with two, at load average 3-5 on 2 cores).
os.environ["OMP_NUM_THREADS"] = "1"

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import BertConfig, BertModel, BertTokenizer

from modeling_unimedclip import UniMedCLIPConfig, UniMedCLIPImageProcessor, UniMedCLIPModel, UniMedCLIPProcessor
from unimedclip.inference.zero_shot import TEMPLATES, class_embeddings, expand_labels, image_embeddings

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
# One colour per label: the shared model learns them, so zero-shot scores mean something (see `model_dir`).
LABEL_COLOURS = {"pneumonia": (220, 40, 40), "normal chest": (40, 220, 40), "liver mass": (40, 40, 220)}


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


def labelled_images(label: str, count: int, seed: int) -> list[Image.Image]:
    """`count` noisy images in the colour of `label`, the same for the same seed."""
    rng = np.random.default_rng(seed)
    colour = np.array(LABEL_COLOURS[label])
    return [
        Image.fromarray(np.clip(colour + rng.normal(0, 30, (40, 47, 3)), 0, 255).astype(np.uint8))
        for _ in range(count)
    ]


def train_separable(model: UniMedCLIPModel, processor: UniMedCLIPProcessor, steps: int = 120) -> None:
    """Teach `model` LABELS: each label's prompts (any shipped template) against images of its colour, with a
    contrastive loss over classes. `logit_scale` stays as configured."""
    generator = random.Random(0)
    templates = [template for modality in TEMPLATES.values() for template in modality]
    model.logit_scale.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    classes = torch.arange(len(LABELS)).repeat_interleave(4)
    same_class = (classes[:, None] == classes[None, :]).float()
    targets = same_class / same_class.sum(dim=1, keepdim=True)
    model.train()
    for step in range(steps):
        pictures = [image for i, label in enumerate(LABELS) for image in labelled_images(label, 4, 1000 * step + i)]
        captions = [generator.choice(templates).format(LABELS[c]) for c in classes]
        logits = model(**processor(text=captions, images=pictures)).logits_per_image
        loss = -(targets * logits.log_softmax(-1)).sum(-1).mean() - (targets * logits.T.log_softmax(-1)).sum(-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.logit_scale.requires_grad_(True)
    model.eval()


def assert_separable(model: UniMedCLIPModel, processor: UniMedCLIPProcessor) -> None:
    """The guard: every label's prompt ensemble points its own way, and images of each colour are classified right.
    A collapsed fixture (every prompt to one direction) fails here instead of weakening every test that uses it."""
    for modality in (None, "xray", "ct"):
        classes = class_embeddings(model, processor, expand_labels(LABELS, modality))
        closest = (classes @ classes.T - 2 * torch.eye(len(LABELS))).max().item()
        assert closest < 0.8, f"the test model's classes collapsed ({modality} prompts): cosine {closest:.4f}"
        for index, label in enumerate(LABELS):
            predicted = (image_embeddings(model, processor, labelled_images(label, 8, 99)) @ classes.T).argmax(-1)
            assert (predicted == index).all(), f"the test model misclassifies {label} images ({modality} prompts)"


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A saved tiny UniMed-CLIP with its processor, as `save_pretrained` lays out a Hub repository, that tells
    LABELS apart (its classes are separable, checked before any test uses it)."""
    torch.manual_seed(0)
    config = tiny_config(logit_scale_init_value=3.0)
    config.text_config.initializer_range = 0.2  # distinct [CLS] states from the start: training takes seconds
    model = UniMedCLIPModel(config)
    processor = UniMedCLIPProcessor(image_processor=UniMedCLIPImageProcessor(size=32), tokenizer=tiny_tokenizer)
    train_separable(model, processor)
    assert_separable(model, processor)
    path = tmp_path_factory.mktemp("unimed-clip-tiny")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
