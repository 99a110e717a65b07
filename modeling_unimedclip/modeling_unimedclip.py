"""PyTorch UniMed-CLIP model: a CLIP ViT image tower and a BiomedBERT text tower in one embedding space."""

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertModel, CLIPModel, CLIPVisionModel, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.models.clip.modeling_clip import (
    CLIPOutput,
    CLIPTextModelOutput,
    CLIPVisionModelOutput,
    image_text_contrastive_loss,
)
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, logging
from transformers.utils.generic import can_return_tuple

from .configuration_unimedclip import UniMedCLIPConfig

logger = logging.get_logger(__name__)


class UniMedCLIPTextHead(nn.Module):
    """The original text projection: bias-free Linear -> GELU (erf) -> bias-free Linear, applied to [CLS]."""

    def __init__(self, config: UniMedCLIPConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.text_config.hidden_size, config.text_head_hidden_size, bias=False)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(config.text_head_hidden_size, config.projection_dim, bias=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


def encode_image(
    model: nn.Module, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False, **kwargs
) -> tuple[BaseModelOutputWithPooling, torch.Tensor]:
    """The image tower's outputs and the projected, unnormalised embedding of its post-LayerNorm class token, for any
    model holding `vision_model` and `visual_projection`."""
    outputs = model.vision_model(
        pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True, **kwargs
    )
    return outputs, model.visual_projection(outputs.pooler_output)


def encode_text(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
) -> tuple[BaseModelOutputWithPooling, torch.Tensor]:
    """The text tower's outputs and the head's unnormalised embedding of the last layer's [CLS] state, for any model
    holding `text_model` and `text_projection`. Without `attention_mask`, padding is `input_ids == pad_token_id`, as
    the original found it; BERT runs with its default all-zero segment ids, as in the original."""
    if attention_mask is None:
        attention_mask = (input_ids != model.config.text_config.pad_token_id).long()
    outputs = model.text_model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **kwargs)
    return outputs, model.text_projection(outputs.last_hidden_state[:, 0])


class UniMedCLIPPreTrainedModel(PreTrainedModel):
    config: UniMedCLIPConfig
    config_class = UniMedCLIPConfig
    base_model_prefix = "unimed_clip"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["CLIPEncoderLayer", "BertLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    @classmethod
    def is_custom_code(cls) -> bool:
        # For custom code, transformers skips any module whose own parameters are all loaded, which includes modules
        # with no parameters of their own: the towers' CLIPMLP and CLIPAttention (which set their Linears' std) and
        # our text head. Weights missing from a checkpoint would then keep the generic std 0.02, or no values at all.
        # Every init here goes through `transformers.initialization`, which skips loaded tensors by itself.
        return False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # The two towers are sub-models and initialise themselves (transformers dispatches their modules to their own
        # `_init_weights`); only the projections and the temperature live here.
        if isinstance(module, UniMedCLIPTextHead):
            # PyTorch's default Linear init, as the original head was never re-initialised.
            init.kaiming_uniform_(module.fc1.weight, a=math.sqrt(5))
            init.kaiming_uniform_(module.fc2.weight, a=math.sqrt(5))
        elif isinstance(
            module, (UniMedCLIPModel, UniMedCLIPVisionModelWithProjection, UniMedCLIPForImageClassification)
        ):
            init.normal_(module.visual_projection.weight, std=module.visual_projection.in_features**-0.5)
        if isinstance(module, (UniMedCLIPModel, UniMedCLIPForImageClassification)):
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)
        if isinstance(module, UniMedCLIPForImageClassification) and isinstance(module.classifier, nn.Linear):
            # As transformers' CLIPForImageClassification; `from_zero_shot` replaces it with the class prompts.
            init.normal_(module.classifier.weight, std=module.classifier.in_features**-0.5)
            init.zeros_(module.classifier.bias)


class UniMedCLIPModel(UniMedCLIPPreTrainedModel):
    r"""
    UniMed-CLIP (arXiv 2412.10372). Image features are the post-LayerNorm class token projected by a bias-free
    Linear; text features are the [CLS] state of BERT's last layer passed through a bias-free Linear-GELU-Linear
    head. `forward` L2-normalises both and scales their cosine similarities by `exp(logit_scale)`.

    Example:

    ```python
    >>> from transformers import AutoModel, AutoProcessor

    >>> # a directory written by `python -m modeling_unimedclip.convert`, or its Hub repository
    >>> model = AutoModel.from_pretrained("unimed-clip-vit-b16", trust_remote_code=True)
    >>> processor = AutoProcessor.from_pretrained("unimed-clip-vit-b16", trust_remote_code=True)
    >>> inputs = processor(text=["chest X-ray with pneumonia", "normal chest X-ray"], images="chest_xray.png")
    >>> probs = model(**inputs).logits_per_image.softmax(dim=-1)
    ```"""

    def __init__(self, config: UniMedCLIPConfig):
        super().__init__(config)
        self.vision_model = CLIPVisionModel._from_config(config.vision_config)
        self.text_model = BertModel._from_config(config.text_config, add_pooling_layer=False)
        self.visual_projection = nn.Linear(config.vision_config.hidden_size, config.projection_dim, bias=False)
        self.text_projection = UniMedCLIPTextHead(config)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init_value)))
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        """The text tower's token embeddings (so that `resize_token_embeddings` adds tokens to the vocabulary)."""
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.text_model.set_input_embeddings(value)

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        interpolate_pos_encoding: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling:
        """Image tower output whose `pooler_output` is the projected, unnormalised image embedding.

        `interpolate_pos_encoding=True` resizes the position embeddings bicubically for images of another size.
        """
        vision_outputs, image_embeds = encode_image(self, pixel_values, interpolate_pos_encoding, **kwargs)
        vision_outputs.pooler_output = image_embeds
        return vision_outputs

    @can_return_tuple
    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling:
        """Text tower output whose `pooler_output` is the projected, unnormalised text embedding.

        Without `attention_mask`, padding is found as `input_ids == pad_token_id`, as the original did.
        `token_type_ids` (which tokenizers return) are accepted and ignored, as in the original model.
        """
        text_outputs, text_embeds = encode_text(self, input_ids, attention_mask, **kwargs)
        return BaseModelOutputWithPooling(
            last_hidden_state=text_outputs.last_hidden_state,
            pooler_output=text_embeds,
            hidden_states=text_outputs.hidden_states,
            attentions=text_outputs.attentions,
        )

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        return_loss: bool | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> CLIPOutput:
        r"""
        token_type_ids (`torch.Tensor`, *optional*):
            Accepted because tokenizers and the zero-shot pipeline pass them; ignored, as in the original model.
        return_loss (`bool`, *optional*):
            Whether to return the symmetric contrastive (InfoNCE) loss over the batch's matching pairs.
        interpolate_pos_encoding (`bool`, *optional*, defaults to `False`):
            Resize the image tower's position embeddings bicubically for images of another size than the model's.
        """
        if input_ids is None or pixel_values is None:
            raise ValueError(
                "UniMedCLIPModel.forward needs both `input_ids` and `pixel_values`; use `get_text_features` or "
                "`get_image_features` to embed one modality, or load a single tower: "
                "`UniMedCLIPVisionModelWithProjection` (also for `pipeline('image-feature-extraction', model=...)`) "
                "or `UniMedCLIPTextModelWithProjection`."
            )
        vision_outputs = self.get_image_features(
            pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, **kwargs
        )
        text_outputs = self.get_text_features(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

        image_embeds = F.normalize(vision_outputs.pooler_output, dim=-1)
        text_embeds = F.normalize(text_outputs.pooler_output, dim=-1)
        logits_per_text = self.logit_scale.exp() * text_embeds @ image_embeds.t()
        logits_per_image = logits_per_text.t()

        loss = None
        if return_loss:
            if logits_per_text.shape[0] != logits_per_text.shape[1]:
                raise ValueError(
                    f"return_loss=True needs one caption per image, got {logits_per_text.shape[0]} texts and "
                    f"{logits_per_text.shape[1]} images."
                )
            loss = image_text_contrastive_loss(logits_per_text)

        return CLIPOutput(
            loss=loss,
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text_outputs,
            vision_model_output=vision_outputs,
        )

    @classmethod
    def from_vision_text_pretrained(
        cls,
        vision: str,
        text: str,
        *,
        image_size: int | None = None,
        text_head_hidden_size: int | None = None,
        **kwargs,
    ) -> "UniMedCLIPModel":
        """Initialise for (re)training as the original did: vision tower, visual projection and `logit_scale` from a
        CLIP-architecture checkpoint (e.g. `facebook/metaclip-b16-400m`), text tower from a BERT checkpoint (e.g.
        BiomedBERT), and a freshly initialised text head.

        Args:
            vision: Hub id or directory of a transformers `CLIPModel` checkpoint.
            text: Hub id or directory of a BERT checkpoint.
            image_size: Input resolution if it differs from the vision checkpoint's; position embeddings are then
                resized bicubically (e.g. 224 -> 336 for the L/14-336 models).
            text_head_hidden_size: Hidden size of the text head; defaults to the original's rule.
            kwargs: Passed to both `from_pretrained` calls (e.g. `revision`, `cache_dir`).
        """
        clip = CLIPModel.from_pretrained(vision, **kwargs)
        bert = BertModel.from_pretrained(text, add_pooling_layer=False, **kwargs)
        vision_config = clip.config.vision_config.to_dict()
        if image_size is not None:
            vision_config["image_size"] = image_size
        config = UniMedCLIPConfig(
            vision_config=vision_config,
            text_config=bert.config.to_dict(),
            projection_dim=clip.config.projection_dim,
            text_head_hidden_size=text_head_hidden_size,
            logit_scale_init_value=clip.logit_scale.item(),
        )
        model = cls(config)

        vision_state = clip.vision_model.state_dict()
        position_key = "embeddings.position_embedding.weight"
        target_positions = model.vision_model.embeddings.position_embedding.weight.shape[0]
        vision_state[position_key] = resize_position_embedding(vision_state[position_key], target_positions)
        model.vision_model.load_state_dict(vision_state)
        model.visual_projection.load_state_dict(clip.visual_projection.state_dict())
        model.text_model.load_state_dict(bert.state_dict())
        with torch.no_grad():
            model.logit_scale.copy_(clip.logit_scale)
        return model


class UniMedCLIPVisionModelWithProjection(UniMedCLIPPreTrainedModel):
    r"""
    The image tower of UniMed-CLIP with its projection, for image-only work (embedding collections, linear probes,
    `pipeline("image-feature-extraction")`, which returns `image_embeds`). Loads from a full UniMed-CLIP checkpoint,
    reading only the image tower's weights, and gives the embeddings of `UniMedCLIPModel.get_image_features`.

    Example:

    ```python
    >>> from modeling_unimedclip import UniMedCLIPVisionModelWithProjection

    >>> vision = UniMedCLIPVisionModelWithProjection.from_pretrained("unimed-clip/unimed-clip-vit-b16")
    >>> image_embeds = vision(pixel_values=pixel_values).image_embeds  # unnormalised, (batch, projection_dim)
    ```"""

    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["CLIPEncoderLayer"]
    _keys_to_ignore_on_load_unexpected = [r"^text_model\.", r"^text_projection\.", r"^logit_scale$"]

    def __init__(self, config: UniMedCLIPConfig):
        super().__init__(config)
        self.vision_model = CLIPVisionModel._from_config(config.vision_config)
        self.visual_projection = nn.Linear(config.vision_config.hidden_size, config.projection_dim, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.vision_model.embeddings.patch_embedding

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> CLIPVisionModelOutput:
        vision_outputs, image_embeds = encode_image(self, pixel_values, interpolate_pos_encoding, **kwargs)
        return CLIPVisionModelOutput(
            image_embeds=image_embeds,
            last_hidden_state=vision_outputs.last_hidden_state,
            hidden_states=vision_outputs.hidden_states,
            attentions=vision_outputs.attentions,
        )


class UniMedCLIPTextModelWithProjection(UniMedCLIPPreTrainedModel):
    r"""
    The text tower of UniMed-CLIP with its head, for text-only work (embedding prompts or reports). Loads from a full
    UniMed-CLIP checkpoint, reading only the text tower's weights, and gives the embeddings of
    `UniMedCLIPModel.get_text_features`.
    """

    input_modalities = ("text",)
    _no_split_modules = ["BertLayer"]
    _keys_to_ignore_on_load_unexpected = [r"^vision_model\.", r"^visual_projection\.", r"^logit_scale$"]

    def __init__(self, config: UniMedCLIPConfig):
        super().__init__(config)
        self.text_model = BertModel._from_config(config.text_config, add_pooling_layer=False)
        self.text_projection = UniMedCLIPTextHead(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.text_model.set_input_embeddings(value)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> CLIPTextModelOutput:
        r"""
        token_type_ids (`torch.Tensor`, *optional*):
            Accepted because tokenizers pass them; ignored, as in the original model.
        """
        text_outputs, text_embeds = encode_text(self, input_ids, attention_mask, **kwargs)
        return CLIPTextModelOutput(
            text_embeds=text_embeds,
            last_hidden_state=text_outputs.last_hidden_state,
            hidden_states=text_outputs.hidden_states,
            attentions=text_outputs.attentions,
        )


class UniMedCLIPForImageClassification(UniMedCLIPPreTrainedModel):
    r"""
    UniMed-CLIP's image tower with a linear classification head, for `pipeline("image-classification")` and
    fine-tuning. The head reads the L2-normalised image embedding (the one zero-shot classification compares with
    class prompts), unlike transformers' `CLIPForImageClassification`, which reads the mean patch token, and its
    output is scaled by the model's temperature `exp(logit_scale)`, as the zero-shot logits are. A head whose rows are
    the class prompts' normalised text embeddings therefore gives exactly the zero-shot logits, and fine-tuning starts
    from the zero-shot classifier (`from_zero_shot`). Keeping the temperature out of the head's weights leaves them of
    unit scale, so that optimisers take steps of the same relative size as on the other weights. The labels are the
    config's `id2label` and `label2id`.

    Loads from a full UniMed-CLIP checkpoint too, reading only the image tower's weights and the temperature (the head
    is then new): `UniMedCLIPForImageClassification.from_pretrained(checkpoint, id2label=..., label2id=...)`.

    Example:

    ```python
    >>> from transformers import pipeline

    >>> classifier = pipeline("image-classification", model="my-chest-xray-classifier", trust_remote_code=True)
    >>> classifier("chest_xray.png")
    ```"""

    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["CLIPEncoderLayer"]
    _keys_to_ignore_on_load_unexpected = [r"^text_model\.", r"^text_projection\."]

    def __init__(self, config: UniMedCLIPConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vision_model = CLIPVisionModel._from_config(config.vision_config)
        self.visual_projection = nn.Linear(config.vision_config.hidden_size, config.projection_dim, bias=False)
        self.classifier = (
            nn.Linear(config.projection_dim, config.num_labels) if config.num_labels > 0 else nn.Identity()
        )
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init_value)))
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.vision_model.embeddings.patch_embedding

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> ImageClassifierOutput:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Class indices for the classification loss (cross-entropy; see `config.problem_type`).
        interpolate_pos_encoding (`bool`, *optional*, defaults to `False`):
            Resize the image tower's position embeddings bicubically for images of another size than the model's.
        """
        vision_outputs, image_embeds = encode_image(self, pixel_values, interpolate_pos_encoding, **kwargs)
        logits = self.logit_scale.exp() * self.classifier(F.normalize(image_embeds, dim=-1))
        loss = self.loss_function(labels, logits, self.config) if labels is not None else None
        return ImageClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=vision_outputs.hidden_states,
            attentions=vision_outputs.attentions,
        )

    @classmethod
    def from_zero_shot(
        cls, model: UniMedCLIPModel, class_embeds: torch.Tensor, labels: list[str]
    ) -> "UniMedCLIPForImageClassification":
        """The zero-shot classifier of `model` as an image classifier: its image tower and temperature, and a head
        whose row `i` is the normalised `class_embeds[i]` (the text embedding of class `labels[i]`, e.g. the mean of
        its prompts' normalised embeddings), with no bias. Its logits are the zero-shot pipeline's
        `logits_per_image` for those texts, and their softmax its scores."""
        if class_embeds.shape != (len(labels), model.config.projection_dim):
            raise ValueError(
                f"class_embeds must be ({len(labels)} labels, {model.config.projection_dim}); got "
                f"{tuple(class_embeds.shape)}."
            )
        config = copy.deepcopy(model.config)
        config.id2label = dict(enumerate(labels))
        config.label2id = {label: index for index, label in enumerate(labels)}
        config.architectures = [cls.__name__]
        classifier = cls(config).to(model.device, model.dtype)
        classifier.vision_model.load_state_dict(model.vision_model.state_dict())
        classifier.visual_projection.load_state_dict(model.visual_projection.state_dict())
        with torch.no_grad():
            classifier.logit_scale.copy_(model.logit_scale)
            classifier.classifier.weight.copy_(F.normalize(class_embeds.float(), dim=-1))
            classifier.classifier.bias.zero_()
        return classifier


def resize_position_embedding(position_embedding: torch.Tensor, num_positions: int) -> torch.Tensor:
    """Bicubically resize a ViT position table (class token first, then a square grid) to `num_positions` rows.

    The class-token row is kept; the grid is resized with `align_corners=True`, so corner patches keep their values.
    """
    if position_embedding.shape[0] == num_positions:
        return position_embedding
    old_grid, new_grid = math.isqrt(position_embedding.shape[0] - 1), math.isqrt(num_positions - 1)
    if old_grid**2 + 1 != position_embedding.shape[0] or new_grid**2 + 1 != num_positions:
        raise ValueError(
            f"Cannot resize position embeddings from {position_embedding.shape[0]} to {num_positions} rows: "
            "both must be a class token plus a square grid."
        )
    class_position, grid = position_embedding[:1], position_embedding[1:]
    grid = grid.reshape(1, old_grid, old_grid, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", align_corners=True)
    grid = grid.permute(0, 2, 3, 1).reshape(new_grid * new_grid, -1).to(position_embedding.dtype)
    logger.info(f"Resized position embeddings from a {old_grid}x{old_grid} to a {new_grid}x{new_grid} grid.")
    return torch.cat([class_position, grid])


__all__ = [
    "UniMedCLIPForImageClassification",
    "UniMedCLIPModel",
    "UniMedCLIPPreTrainedModel",
    "UniMedCLIPTextModelWithProjection",
    "UniMedCLIPVisionModelWithProjection",
    "resize_position_embedding",
]
