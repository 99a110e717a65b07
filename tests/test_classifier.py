"""UniMedCLIPForImageClassification: the zero-shot head against the zero-shot pipeline and hand-computed cosines,
loading from a full UniMed-CLIP checkpoint, the auto classes and the image-classification pipeline."""

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import images
from transformers import AutoModelForImageClassification, pipeline

from modeling_unimedclip import UniMedCLIPForImageClassification, UniMedCLIPModel, UniMedCLIPProcessor
from modeling_unimedclip.configuration_unimedclip import AUTO_MAP

# One prompt per class, so that transformers' zero-shot pipeline (which takes no ensembles) is the reference.
PROMPTS = ["chest x ray showing pneumonia", "normal chest x ray", "ct of the liver with a mass"]


@pytest.fixture(scope="module")
def clip(model_dir) -> UniMedCLIPModel:
    return UniMedCLIPModel.from_pretrained(model_dir).eval()


@pytest.fixture(scope="module")
def processor(model_dir) -> UniMedCLIPProcessor:
    return UniMedCLIPProcessor.from_pretrained(model_dir)


def text_embeds(clip, processor, texts: list[str]) -> torch.Tensor:
    with torch.no_grad():
        return clip.get_text_features(**processor(text=texts, return_tensors="pt")).pooler_output


def test_zero_shot_head_reproduces_the_zero_shot_pipeline(model_dir, clip, processor):
    classifier = UniMedCLIPForImageClassification.from_zero_shot(clip, text_embeds(clip, processor, PROMPTS), PROMPTS)
    batch = images(4)
    with torch.no_grad():
        logits = classifier(pixel_values=processor(images=batch).pixel_values).logits
    zero_shot = pipeline("zero-shot-image-classification", model=str(model_dir))
    for image, image_logits in zip(batch, logits):
        expected = {
            entry["label"]: entry["score"]
            for entry in zero_shot(image, candidate_labels=PROMPTS, hypothesis_template="{}")
        }
        probabilities = image_logits.softmax(dim=-1)
        torch.testing.assert_close(probabilities, torch.tensor([expected[p] for p in PROMPTS]), atol=1e-6, rtol=0)
        assert PROMPTS[int(image_logits.argmax())] == max(expected, key=expected.get)


def test_zero_shot_head_of_a_prompt_ensemble_is_the_scaled_cosine_to_the_mean_prompt(clip, processor):
    """Per class, the renormalised mean of its prompts' normalised embeddings, computed here by hand."""
    ensembles = {"pneumonia": PROMPTS[:2], "mass": PROMPTS[2:] + ["a ct scan of the liver"]}
    per_class = [F.normalize(text_embeds(clip, processor, prompts), dim=-1).mean(0) for prompts in ensembles.values()]
    class_embeds = F.normalize(torch.stack(per_class), dim=-1)
    classifier = UniMedCLIPForImageClassification.from_zero_shot(clip, torch.stack(per_class), list(ensembles))
    pixel_values = processor(images=images(3)).pixel_values
    with torch.no_grad():
        image_embeds = F.normalize(clip.get_image_features(pixel_values=pixel_values).pooler_output, dim=-1)
        expected = clip.logit_scale.exp() * image_embeds @ class_embeds.T
        logits = classifier(pixel_values=pixel_values).logits
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-6)
    assert classifier.config.id2label == {0: "pneumonia", 1: "mass"}
    assert classifier.config.label2id == {"pneumonia": 0, "mass": 1}
    with pytest.raises(ValueError, match=r"class_embeds must be \(3 labels, 24\); got \(2, 24\)"):
        UniMedCLIPForImageClassification.from_zero_shot(clip, class_embeds, PROMPTS)


def test_loads_from_a_full_checkpoint_with_a_new_head(model_dir, clip):
    labels = {0: "pneumonia", 1: "normal", 2: "mass", 3: "effusion"}
    classifier = UniMedCLIPForImageClassification.from_pretrained(
        model_dir, id2label=labels, label2id={name: index for index, name in labels.items()}
    )
    assert classifier.classifier.weight.shape == (4, 24) and classifier.num_labels == 4
    expected = {**clip.vision_model.state_dict()}
    for name, tensor in classifier.vision_model.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    assert torch.equal(classifier.visual_projection.weight, clip.visual_projection.weight)
    assert classifier.logit_scale.item() == clip.logit_scale.item() == 3.0
    assert torch.count_nonzero(classifier.classifier.bias) == 0 and classifier.classifier.weight.std() > 0


def test_loss_is_cross_entropy_with_the_labels(clip, processor):
    classifier = UniMedCLIPForImageClassification.from_zero_shot(clip, text_embeds(clip, processor, PROMPTS), PROMPTS)
    labels = torch.tensor([2, 0, 1])
    output = classifier(pixel_values=processor(images=images(3)).pixel_values, labels=labels)
    torch.testing.assert_close(output.loss, F.cross_entropy(output.logits, labels))


def test_saved_classifier_is_an_auto_image_classifier_and_serves_the_pipeline(tmp_path, clip, processor):
    classifier = UniMedCLIPForImageClassification.from_zero_shot(clip, text_embeds(clip, processor, PROMPTS), PROMPTS)
    classifier.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["UniMedCLIPForImageClassification"]
    assert config["auto_map"]["AutoModelForImageClassification"] == AUTO_MAP["AutoModelForImageClassification"]
    assert (tmp_path / "modeling_unimedclip.py").is_file()
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert type(loaded) is UniMedCLIPForImageClassification
    image = images(1)[0]
    with torch.no_grad():
        probabilities = loaded(pixel_values=processor(images=image).pixel_values).logits[0].softmax(dim=-1)
    scores = pipeline("image-classification", model=str(tmp_path), top_k=None)(image)
    by_label = {entry["label"]: entry["score"] for entry in scores}
    torch.testing.assert_close(torch.tensor([by_label[p] for p in PROMPTS]), probabilities, atol=1e-6, rtol=0)
