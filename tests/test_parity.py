"""Numerical parity with the original architecture (pip open_clip `CustomTextCLIP`) holding the same weights,
starting from original-format training checkpoints and going through the converter and `from_pretrained`."""

import pytest
import torch
from reference import open_clip_model, original_checkpoint
from transformers import AutoModel

from unimedclip.release.convert import main as convert_main

TOLERANCE = 1e-5
SHAPES = {
    "b16-224": dict(image_size=224, patch_size=16),
    "l14-336": dict(image_size=336, patch_size=14),
}
CAPTIONS = [
    "chest x-ray showing pneumonia",
    "a ct scan of the liver with a mass",
    "normal fundus photo of the retina",
    "histopathology slide of benign tissue with no evidence of tumor",
]


@pytest.fixture(scope="module", params=sorted(SHAPES))
def converted(request, tiny_bert_dir, tmp_path_factory):
    """(open_clip reference, converted UniMed-CLIP loaded with AutoModel) holding the same weights."""
    reference = open_clip_model(tiny_bert_dir, **SHAPES[request.param])
    work = tmp_path_factory.mktemp(request.param)
    torch.save(original_checkpoint(reference), work / "epoch_10.pt")
    convert_main(
        ["--checkpoint", str(work / "epoch_10.pt"), "--text-encoder", str(tiny_bert_dir), "--output", str(work / "hf")]
    )
    return reference, AutoModel.from_pretrained(work / "hf").eval()


def test_image_embeddings_match(converted):
    reference, model = converted
    size = model.config.vision_config.image_size
    pixel_values = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference.encode_image(pixel_values)
        ours = model.get_image_features(pixel_values=pixel_values).pooler_output
    torch.testing.assert_close(ours, expected, atol=TOLERANCE, rtol=0)


def test_text_embeddings_match_with_original_and_dynamic_padding(converted, tiny_tokenizer):
    reference, model = converted
    padded = tiny_tokenizer(CAPTIONS, padding="max_length", max_length=256, truncation=True, return_tensors="pt")
    dynamic = tiny_tokenizer(CAPTIONS, padding="longest", return_tensors="pt")
    assert dynamic.input_ids.shape[1] < 32
    with torch.no_grad():
        expected = reference.encode_text(padded.input_ids)
        ours_padded = model.get_text_features(input_ids=padded.input_ids).pooler_output
        ours_dynamic = model.get_text_features(**dynamic).pooler_output
    torch.testing.assert_close(ours_padded, expected, atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(ours_dynamic, expected, atol=TOLERANCE, rtol=0)


def test_logits_match(converted, tiny_tokenizer):
    reference, model = converted
    size = model.config.vision_config.image_size
    pixel_values = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    padded = tiny_tokenizer(CAPTIONS, padding="max_length", max_length=256, return_tensors="pt")
    with torch.no_grad():
        image_features, text_features, logit_scale = reference(pixel_values, padded.input_ids)
        expected = logit_scale * image_features @ text_features.T
        outputs = model(**tiny_tokenizer(CAPTIONS, padding=True, return_tensors="pt"), pixel_values=pixel_values)
    assert model.logit_scale.item() == pytest.approx(4.2)
    torch.testing.assert_close(outputs.logits_per_image, expected, atol=TOLERANCE * logit_scale.item(), rtol=0)
    torch.testing.assert_close(outputs.logits_per_text, expected.T, atol=TOLERANCE * logit_scale.item(), rtol=0)
