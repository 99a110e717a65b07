"""The zero-shot arithmetic by value, on hand-built embeddings: prompt-ensemble class embeddings, image scores and
volume pooling; the labels it accepts; and prompt truncation on the shared model. The shared model's tests check the
same functions end to end."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import LABELS

from modeling_unimedclip import UniMedCLIPModel, UniMedCLIPProcessor
from unimedclip.inference.zero_shot import (
    class_embeddings,
    expand_labels,
    image_probabilities,
    text_embeddings,
    volume_probabilities,
)


class Batch(dict):
    def to(self, device):
        return self


class Prompts:
    """A stand-in model and processor: each prompt's text embedding is a fixed, unnormalised vector."""

    device = torch.device("cpu")

    def __init__(self, vectors: dict[str, list[float]]):
        self.vectors = vectors

    def __call__(self, text, **kwargs):  # the processor
        return Batch(texts=text)

    def get_text_features(self, texts):  # the model
        return SimpleNamespace(pooler_output=torch.tensor([self.vectors[text] for text in texts]))


def test_class_embeddings_are_renormalised_means_of_normalised_prompts():
    prompts = Prompts({"a": [3.0, 0.0], "b": [0.0, 1.0], "c": [1.0, 1.0]})
    classes = class_embeddings(prompts, prompts, {"first": ["a", "b"], "second": ["c"]})
    # By hand: normalise each prompt, average per class, normalise again.
    first = torch.tensor([1.0, 0.0]) + torch.tensor([0.0, 1.0])
    expected = torch.stack([first / first.norm(), torch.tensor([1.0, 1.0]) / math.sqrt(2)])
    torch.testing.assert_close(classes, expected, rtol=0, atol=1e-7)
    assert classes.norm(dim=-1).tolist() == pytest.approx([1.0, 1.0])  # the mean of [1,0] and [0,1] has norm 0.71


def test_image_probabilities_by_value():
    images = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), dim=-1)
    classes = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    probabilities = image_probabilities(images, classes, logit_scale=10.0)
    expected_first = torch.tensor([10.0, 0.0]).softmax(-1)
    torch.testing.assert_close(probabilities[0], expected_first)
    torch.testing.assert_close(probabilities[1], torch.tensor([0.5, 0.5]))


def test_volume_pooling_by_value():
    """Four slices, two classes: only the last slice shows class 1. Mean pooling averages the slices (class 0 wins),
    max pooling takes each class's best slice (class 1 wins); min gives other probabilities again."""
    slices = F.normalize(torch.tensor([[1.0, 0.3], [1.0, 0.3], [1.0, 0.3], [0.0, 1.0]]), dim=-1)
    classes = torch.eye(2)
    mean = volume_probabilities(slices, classes, logit_scale=5.0, pooling="mean")
    pooled = F.normalize(slices.mean(0), dim=-1)
    torch.testing.assert_close(mean, (5.0 * pooled @ classes.T).softmax(-1))
    maximum = volume_probabilities(slices, classes, logit_scale=5.0, pooling="max")
    best = (slices @ classes.T).max(dim=0).values  # per class, its best slice
    torch.testing.assert_close(maximum, (5.0 * best).softmax(-1))
    assert mean.argmax() == 0 and maximum.argmax() == 1
    minimum = (5.0 * (slices @ classes.T).min(dim=0).values).softmax(-1)
    assert not torch.allclose(maximum, minimum)
    with pytest.raises(ValueError, match="Unknown pooling 'median'"):
        volume_probabilities(slices, classes, 5.0, pooling="median")


def test_bare_labels_get_the_modality_prompt_ensemble():
    prompts = expand_labels(LABELS, "ct")
    assert list(prompts) == LABELS and all(len(texts) > 1 for texts in prompts.values())
    assert all(label in text for label, texts in prompts.items() for text in texts)


@pytest.mark.parametrize(
    "labels, match",
    [
        ([], r"Labels must be non-empty; got \[\]"),
        (["pneumonia", "  "], r"Labels must be non-empty; got \['pneumonia', ''\]"),
        (["pneumonia", " pneumonia"], r"Labels must be distinct; \['pneumonia'\] appear"),
    ],
)
def test_empty_blank_and_repeated_labels_are_refused(labels, match):
    with pytest.raises(ValueError, match=match):
        expand_labels(labels)
    with pytest.raises(ValueError, match="Unknown modality 'ecg'"):
        expand_labels(["pneumonia"], "ecg")


def test_prompts_longer_than_the_context_are_truncated_as_the_original_tokenizer_does(model_dir):
    """The original's tokenizer cuts every prompt to 256 tokens ([CLS] and [SEP] included); the model has room for
    512 positions, so a prompt of 600 words would otherwise run, on different text."""
    model = UniMedCLIPModel.from_pretrained(model_dir).eval()
    processor = UniMedCLIPProcessor.from_pretrained(model_dir)
    words = ["mass", "lesion", "left", "right"] * 150
    long, cut = text_embeddings(model, processor, [" ".join(words), " ".join(words[:254])])
    torch.testing.assert_close(long, cut)
