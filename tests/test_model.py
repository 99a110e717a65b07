"""UniMedCLIPModel: released shapes, save/load, the zero-shot pipeline, attention backends, checkpointing, dtypes,
the contrastive loss and initialisation for retraining."""

import numpy as np
import pytest
import torch
from conftest import LABELS, TINY_VISION, images, labelled_images, tiny_config
from huggingface_hub.errors import StrictDataclassError
from safetensors.torch import load_file, save_file
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
    BertModel,
    CLIPConfig,
    CLIPModel,
    pipeline,
)

from modeling_unimedclip import (
    UniMedCLIPConfig,
    UniMedCLIPModel,
    UniMedCLIPProcessor,
    UniMedCLIPTextModelWithProjection,
    UniMedCLIPVisionModelWithProjection,
)
from modeling_unimedclip.modeling_unimedclip import resize_position_embedding
from unimedclip.variants import VARIANTS, get_variant, variant_of


@pytest.mark.parametrize(
    ("variant", "total", "vision", "text"),
    [
        ("b16", 195_903_489, 86_192_640, 109_710_848),
        ("l14-336-base", 414_365_185, 304_293_888, 110_071_296),
        ("l14-336-large", 639_991_809, 304_293_888, 335_697_920),
    ],
)
def test_variants_have_the_released_parameter_counts(variant, total, vision, text):
    with torch.device("meta"):
        model = UniMedCLIPModel(VARIANTS[variant].config())
    count = lambda *modules: sum(p.numel() for m in modules for p in m.parameters())  # noqa: E731
    assert count(model) == total
    assert count(model.vision_model, model.visual_projection) == vision
    assert count(model.text_model, model.text_projection) == text
    assert model.text_model.pooler is None


def test_default_config_is_the_b16_variant():
    assert UniMedCLIPConfig().to_diff_dict() == VARIANTS["b16"].config().to_diff_dict()
    assert variant_of(UniMedCLIPConfig()) is VARIANTS["b16"]
    assert variant_of(VARIANTS["l14-336-large"].config()) is VARIANTS["l14-336-large"]
    with pytest.raises(ValueError, match="Unknown UniMed-CLIP variant 'b32'"):
        get_variant("b32")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(projection_dim=0), "projection_dim must be positive, got 0"),
        (dict(text_head_hidden_size=-4), "text_head_hidden_size must be positive, got -4"),
        (dict(projection_dim="512"), "Field 'projection_dim' expected int"),
        (dict(vision_config=dict(hidden_size=100, num_attention_heads=3)), r"hidden size \(100\) is not a multiple"),
    ],
)
def test_invalid_config_is_a_clear_error(kwargs, match):
    with pytest.raises(StrictDataclassError, match=match):
        UniMedCLIPConfig(**kwargs)


def test_save_and_auto_reload_are_identical(model_dir):
    model = AutoModel.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    assert isinstance(model, UniMedCLIPModel) and isinstance(processor, UniMedCLIPProcessor)
    assert isinstance(AutoConfig.from_pretrained(model_dir), UniMedCLIPConfig)
    assert isinstance(AutoModelForZeroShotImageClassification.from_pretrained(model_dir), UniMedCLIPModel)

    reference = UniMedCLIPModel.from_pretrained(model_dir).eval()
    for (name, ours), (_, theirs) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(ours, theirs), name
    inputs = processor(text=LABELS, images=images(2), return_tensors="pt")
    with torch.no_grad():
        first, second = model(**inputs), reference(**inputs)
    torch.testing.assert_close(first.logits_per_image, second.logits_per_image, atol=0, rtol=0)
    assert model.logit_scale.item() == pytest.approx(3.0)

    auto_map = AutoConfig.from_pretrained(model_dir).auto_map
    assert set(auto_map) == {
        "AutoConfig",
        "AutoModel",
        "AutoModelForImageClassification",
        "AutoModelForZeroShotImageClassification",
        "AutoProcessor",
        "AutoImageProcessor",
    }
    references = [entry for value in auto_map.values() for entry in ([value] if isinstance(value, str) else value)]
    for module_name in {entry.split(".")[0] for entry in references}:
        assert (model_dir / f"{module_name}.py").is_file()


def test_forward_matches_manual_logits_and_loss(model_dir, tiny_tokenizer):
    model = UniMedCLIPModel.from_pretrained(model_dir).eval()
    processor = UniMedCLIPProcessor.from_pretrained(model_dir)
    inputs = processor(text=LABELS, images=images(3), return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs, return_loss=True)
        image = model.get_image_features(pixel_values=inputs.pixel_values).pooler_output
        text = model.get_text_features(input_ids=inputs.input_ids).pooler_output
    image, text = image / image.norm(dim=-1, keepdim=True), text / text.norm(dim=-1, keepdim=True)
    logits = np.exp(3.0) * image @ text.T
    torch.testing.assert_close(outputs.logits_per_image, logits, atol=1e-5, rtol=1e-5)
    targets = torch.arange(3)
    loss = (
        torch.nn.functional.cross_entropy(logits, targets) + torch.nn.functional.cross_entropy(logits.T, targets)
    ) / 2
    torch.testing.assert_close(outputs.loss, loss, atol=1e-5, rtol=1e-5)

    with pytest.raises(ValueError, match="one caption per image, got 3 texts and 2 images"):
        model(**processor(text=LABELS, images=images(2), return_tensors="pt"), return_loss=True)
    with pytest.raises(ValueError, match="needs both `input_ids` and `pixel_values`"):
        model(pixel_values=inputs.pixel_values)


def test_zero_shot_pipeline_from_a_directory(model_dir):
    classifier = pipeline("zero-shot-image-classification", model=str(model_dir))
    model = UniMedCLIPModel.from_pretrained(model_dir).eval()
    processor = UniMedCLIPProcessor.from_pretrained(model_dir)
    batch = [labelled_images(label, 1, seed=7)[0] for label in LABELS]  # one image of each label's colour

    single = classifier(batch[0], candidate_labels=LABELS)
    batched = classifier(batch, candidate_labels=LABELS, batch_size=2)
    prompts = [f"This is a photo of {label}." for label in LABELS]
    with torch.no_grad():
        expected = model(**processor(text=prompts, images=batch, return_tensors="pt")).logits_per_image.softmax(-1)

    for result, row in zip([single, *batched], [expected[0], *expected]):
        scores = {entry["label"]: entry["score"] for entry in result}
        assert [entry["label"] for entry in result] == [LABELS[i] for i in row.argsort(descending=True)]
        for label, probability in zip(LABELS, row.tolist()):
            assert scores[label] == pytest.approx(probability, abs=1e-5)
    assert [result[0]["label"] for result in batched] == LABELS  # the model tells the labels apart


def test_sdpa_and_eager_attention_agree(model_dir, tiny_tokenizer):
    sdpa = UniMedCLIPModel.from_pretrained(model_dir).eval()
    eager = UniMedCLIPModel.from_pretrained(model_dir, attn_implementation="eager").eval()
    assert sdpa.config.vision_config._attn_implementation == "sdpa"
    assert eager.config.text_config._attn_implementation == "eager"
    inputs = tiny_tokenizer(LABELS, padding=True, return_tensors="pt")
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            sdpa(**inputs, pixel_values=pixel_values).logits_per_image,
            eager(**inputs, pixel_values=pixel_values).logits_per_image,
            atol=1e-5,
            rtol=1e-5,
        )


def test_activation_checkpointing_gives_the_same_gradients(tiny_tokenizer):
    config = tiny_config()
    config.text_config.hidden_dropout_prob = config.text_config.attention_probs_dropout_prob = 0.0
    torch.manual_seed(0)
    model = UniMedCLIPModel(config).train()
    inputs = dict(**tiny_tokenizer(LABELS, padding=True, return_tensors="pt"), pixel_values=torch.randn(3, 3, 32, 32))

    # Checkpointing wraps each layer's forward, so modules inside a layer start again during the backward pass (a
    # pre-hook: recomputation stops early, once the tensors the backward needs exist, so a module may not finish).
    calls = []
    for inner in model.vision_model.encoder.layers[0].mlp, model.text_model.encoder.layer[0].intermediate:
        inner.register_forward_pre_hook(lambda module, args: calls.append(module))

    def gradients() -> dict[str, torch.Tensor]:
        model.zero_grad()
        calls.clear()
        model(**inputs, return_loss=True).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    plain = gradients()
    assert len(calls) == 2
    model.activation_checkpointing_enable()
    checkpointed = gradients()
    assert len(calls) == 4, "each tower's layers must run again in the backward pass"
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_forward(model_dir, tiny_tokenizer, dtype):
    full = UniMedCLIPModel.from_pretrained(model_dir).eval()
    half = UniMedCLIPModel.from_pretrained(model_dir, dtype=dtype).eval()
    assert half.vision_model.embeddings.patch_embedding.weight.dtype == dtype
    assert half.text_projection.fc1.weight.dtype == dtype
    inputs = tiny_tokenizer(LABELS, padding=True, return_tensors="pt")
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = full(**inputs, pixel_values=pixel_values).image_embeds
        got = half(**inputs, pixel_values=pixel_values.to(dtype)).image_embeds
    assert got.dtype == dtype
    assert torch.nn.functional.cosine_similarity(got.float(), expected).min() > 0.99


def test_from_vision_text_pretrained(tmp_path, tiny_bert_dir):
    clip_config = CLIPConfig(
        vision_config=TINY_VISION,
        text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64),
        projection_dim=24,
    )
    torch.manual_seed(0)
    clip = CLIPModel(clip_config)
    with torch.no_grad():
        clip.logit_scale.fill_(4.6)
    clip.save_pretrained(tmp_path / "clip")

    model = UniMedCLIPModel.from_vision_text_pretrained(str(tmp_path / "clip"), str(tiny_bert_dir))
    assert model.logit_scale.item() == pytest.approx(4.6)
    assert torch.equal(model.visual_projection.weight, clip.visual_projection.weight)
    for name, parameter in clip.vision_model.state_dict().items():
        assert torch.equal(model.vision_model.state_dict()[name], parameter), name
    bert = BertModel.from_pretrained(tiny_bert_dir, add_pooling_layer=False)
    for name, parameter in bert.state_dict().items():
        assert torch.equal(model.text_model.state_dict()[name], parameter), name
    assert model.config.text_head_hidden_size == (32 + 24) // 2
    assert 0.01 < model.text_projection.fc1.weight.std() < 1.0

    resized = UniMedCLIPModel.from_vision_text_pretrained(str(tmp_path / "clip"), str(tiny_bert_dir), image_size=48)
    old = clip.vision_model.embeddings.position_embedding.weight
    new = resized.vision_model.embeddings.position_embedding.weight
    assert new.shape == (1 + 6 * 6, 64)
    assert torch.equal(new[0], old[0])
    old_grid, new_grid = old[1:].reshape(4, 4, 64), new[1:].reshape(6, 6, 64)
    for (i, j), (k, m) in {(0, 0): (0, 0), (0, 3): (0, 5), (3, 0): (5, 0), (3, 3): (5, 5)}.items():
        torch.testing.assert_close(new_grid[k, m], old_grid[i, j])
    with torch.no_grad():
        assert resized.get_image_features(pixel_values=torch.randn(1, 3, 48, 48)).pooler_output.shape == (1, 24)


def test_position_embedding_resize_needs_square_grids():
    with pytest.raises(ValueError, match="from 11 to 37 rows"):
        resize_position_embedding(torch.zeros(11, 8), 37)


def test_single_towers_load_from_a_full_checkpoint_and_give_its_embeddings(model_dir):
    model = UniMedCLIPModel.from_pretrained(model_dir).eval()
    processor = UniMedCLIPProcessor.from_pretrained(model_dir)
    inputs = processor(text=LABELS, images=images(2))
    vision, loading = UniMedCLIPVisionModelWithProjection.from_pretrained(model_dir, output_loading_info=True)
    assert not loading["missing_keys"] and not loading["mismatched_keys"]
    text, loading = UniMedCLIPTextModelWithProjection.from_pretrained(model_dir, output_loading_info=True)
    assert not loading["missing_keys"] and not loading["mismatched_keys"]
    assert not any(name.startswith("text") for name, _ in vision.named_parameters())
    assert not any(name.startswith("vision") for name, _ in text.named_parameters())
    with torch.no_grad():
        expected_images = model.get_image_features(pixel_values=inputs.pixel_values).pooler_output
        expected_texts = model.get_text_features(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask)
        assert torch.equal(vision.eval()(pixel_values=inputs.pixel_values).image_embeds, expected_images)
        text_embeds = text.eval()(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask).text_embeds
        assert torch.equal(text_embeds, expected_texts.pooler_output)

    extractor = pipeline("image-feature-extraction", model=vision, image_processor=processor.image_processor)
    features = extractor(images(2)[0], return_tensors=True)
    torch.testing.assert_close(features, expected_images[:1], rtol=0, atol=1e-6)


def test_token_embeddings_resize_for_new_medical_tokens(model_dir, tiny_tokenizer):
    model = UniMedCLIPModel.from_pretrained(model_dir)
    vocabulary = model.get_input_embeddings().num_embeddings
    tokenizer = type(tiny_tokenizer)(vocab=tiny_tokenizer.get_vocab(), do_lower_case=True)
    assert tokenizer.add_tokens(["pneumothorax", "hemothorax"]) == 2
    model.resize_token_embeddings(len(tokenizer))
    assert model.get_input_embeddings().num_embeddings == vocabulary + 2 == model.config.text_config.vocab_size
    input_ids = tokenizer(["pneumothorax"], return_tensors="pt").input_ids
    assert input_ids.max() == vocabulary  # the new token, now embedded
    assert torch.isfinite(model.get_text_features(input_ids=input_ids).pooler_output).all()


def test_interpolate_pos_encoding_takes_other_image_sizes(model_dir):
    model = UniMedCLIPModel.from_pretrained(model_dir).eval()
    larger = torch.randn(1, 3, 48, 48)
    with pytest.raises(ValueError, match="doesn't match model"):
        model.get_image_features(pixel_values=larger)
    with torch.no_grad():
        features = model.get_image_features(pixel_values=larger, interpolate_pos_encoding=True).pooler_output
        outputs = model(input_ids=torch.tensor([[2, 40, 3]]), pixel_values=larger, interpolate_pos_encoding=True)
    assert features.shape == (1, model.config.projection_dim)
    torch.testing.assert_close(outputs.image_embeds, torch.nn.functional.normalize(features, dim=-1))


def test_weights_missing_from_a_checkpoint_get_the_initialisation_of_a_fresh_model(model_dir, tmp_path):
    """The "load the towers, train a new head" path: `from_pretrained` initialises what the checkpoint lacks as
    `__init__` does (transformers' ModelTesterMixin checks the same), never NaN or the generic std 0.02."""
    config = tiny_config(logit_scale_init_value=3.0)
    config.vision_config.intermediate_size = config.text_config.intermediate_size = 512  # enough values for a std
    torch.manual_seed(0)
    UniMedCLIPModel(config).save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    dropped = [
        name
        for name in weights
        if name.startswith(("text_projection", "visual_projection", "logit_scale"))
        or ".layers.1." in name
        or ".layer.1." in name
        or "post_layernorm" in name
    ]
    save_file({k: v for k, v in weights.items() if k not in dropped}, tmp_path / "model.safetensors", {"format": "pt"})
    loaded = dict(UniMedCLIPModel.from_pretrained(tmp_path).named_parameters())
    fresh = [dict(UniMedCLIPModel(config).named_parameters()) for _ in range(3)]
    for name in dropped:
        value = loaded[name].detach()
        assert torch.isfinite(value).all(), name
        references = [reference[name].detach() for reference in fresh]
        if all(torch.equal(references[0], reference) for reference in references):  # a constant init (0, 1, 3.0)
            assert torch.equal(value, references[0]), name
        else:
            low, high = min(r.std() for r in references), max(r.std() for r in references)
            assert 0.85 * low <= value.std() <= 1.15 * high, (name, value.std(), low, high)
