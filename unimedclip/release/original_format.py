"""The original open_clip-format UniMed-CLIP weights: safe loading, and the key mapping to and from this model.

One rename table serves both directions. Two weights need more than a rename: the fused attention input projection
(`in_proj_*`, split into q/k/v) and the visual projection (`x @ proj` in the original, a Linear here, so transposed).
Original training checkpoints name the text tower `text_encoder.`; pip open_clip's `CustomTextCLIP` names it `text.`.
"""

import math
import pickle
import re
from pathlib import Path

import numpy as np
import torch
from transformers import BertConfig, CLIPVisionConfig

from modeling_unimedclip.configuration_unimedclip import UniMedCLIPConfig

from ..variants import get_variant

OPEN_CLIP_TEXT_PREFIX = "text."
ORIGINAL_TEXT_PREFIX = "text_encoder."

# (open_clip name, transformers name); {i} is a layer index, {p} weight|bias, {rest} any BERT parameter path.
_RENAMES = [
    ("logit_scale", "logit_scale"),
    ("visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight"),
    ("visual.class_embedding", "vision_model.embeddings.class_embedding"),
    ("visual.positional_embedding", "vision_model.embeddings.position_embedding.weight"),
    ("visual.ln_pre.{p}", "vision_model.pre_layrnorm.{p}"),
    ("visual.ln_post.{p}", "vision_model.post_layernorm.{p}"),
    ("visual.transformer.resblocks.{i}.ln_1.{p}", "vision_model.encoder.layers.{i}.layer_norm1.{p}"),
    ("visual.transformer.resblocks.{i}.ln_2.{p}", "vision_model.encoder.layers.{i}.layer_norm2.{p}"),
    ("visual.transformer.resblocks.{i}.attn.out_proj.{p}", "vision_model.encoder.layers.{i}.self_attn.out_proj.{p}"),
    ("visual.transformer.resblocks.{i}.mlp.c_fc.{p}", "vision_model.encoder.layers.{i}.mlp.fc1.{p}"),
    ("visual.transformer.resblocks.{i}.mlp.c_proj.{p}", "vision_model.encoder.layers.{i}.mlp.fc2.{p}"),
    ("text.transformer.{rest}", "text_model.{rest}"),
    ("text.proj.0.weight", "text_projection.fc1.weight"),
    ("text.proj.2.weight", "text_projection.fc2.weight"),
]
_IN_PROJ = (
    "visual.transformer.resblocks.{i}.attn.in_proj_{p}",
    "vision_model.encoder.layers.{i}.self_attn.{qkv}_proj.{p}",
)
_PROJ = ("visual.proj", "visual_projection.weight")


def _pattern(template: str) -> re.Pattern:
    groups = {
        "{i}": r"(?P<i>\d+)",
        "{p}": r"(?P<p>weight|bias)",
        "{qkv}": r"(?P<qkv>[qkv])",
        "{rest}": r"(?P<rest>.+)",
    }
    pattern = re.escape(template)
    for placeholder, group in groups.items():
        pattern = pattern.replace(re.escape(placeholder), group)
    return re.compile(pattern)


_FORWARD = [(_pattern(source), target) for source, target in _RENAMES]
_BACKWARD = [(_pattern(target), source) for source, target in _RENAMES]
_IN_PROJ_SOURCE, _IN_PROJ_TARGET = _pattern(_IN_PROJ[0]), _pattern(_IN_PROJ[1])


def _rename(key: str, rules: list[tuple[re.Pattern, str]]) -> str | None:
    for pattern, template in rules:
        if match := pattern.fullmatch(key):
            return template.format(**match.groupdict())
    return None


def open_clip_to_hf(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map pip-open_clip-named weights (`visual.*`, `text.*`, `logit_scale`) to this model's names.

    Returns the converted weights and the source keys that no rule consumed.
    """
    converted, unconsumed = {}, []
    for key, tensor in state_dict.items():
        if match := _IN_PROJ_SOURCE.fullmatch(key):
            for name, chunk in zip("qkv", tensor.chunk(3, dim=0)):
                converted[_IN_PROJ[1].format(qkv=name, **match.groupdict())] = chunk.clone()
        elif key == _PROJ[0]:
            converted[_PROJ[1]] = tensor.t().contiguous()
        elif (target := _rename(key, _FORWARD)) is not None:
            converted[target] = tensor
        else:
            unconsumed.append(key)
    return converted, unconsumed


def hf_to_open_clip(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map this model's weights to pip open_clip `CustomTextCLIP` names (the inverse of `open_clip_to_hf`)."""
    converted, in_proj = {}, {}
    for key, tensor in state_dict.items():
        if match := _IN_PROJ_TARGET.fullmatch(key):
            in_proj.setdefault((match["i"], match["p"]), {})[match["qkv"]] = tensor
        elif key == _PROJ[1]:
            converted[_PROJ[0]] = tensor.t().contiguous()
        elif (source := _rename(key, _BACKWARD)) is not None:
            converted[source] = tensor
        else:
            raise ValueError(f"No open_clip name for the weight {key!r}.")
    for (layer, kind), parts in in_proj.items():
        converted[_IN_PROJ[0].format(i=layer, p=kind)] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return converted


# What original training checkpoints pickle besides tensors: numpy scalars (optimizer learning rates) and their
# dtypes. Pickles written under numpy 1 name the scalar constructor `numpy.core.multiarray.scalar`.
_NUMPY_SAFE_GLOBALS = [
    np._core.multiarray.scalar,
    (np._core.multiarray.scalar, "numpy.core.multiarray.scalar"),
    np.dtype,
    np.dtypes.Float64DType,
    np.dtypes.Float32DType,
    np.dtypes.Int64DType,
]


def load_original_checkpoint(path: str | Path, unsafe_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read the weights of an original UniMed-CLIP `.pt` file, in pip open_clip naming.

    Accepts a full training checkpoint (`{"epoch", "state_dict", "optimizer", "scaler", ...}`) or a bare state dict;
    strips DistributedDataParallel's `module.` prefix and renames `text_encoder.` to `text.`. Optimizer and scaler
    state are dropped. The file is read with `weights_only=True` plus an allow-list of numpy scalar types; arbitrary
    unpickling (which can run code) happens only with `unsafe_pickle=True`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist.")
    try:
        if unsafe_pickle:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        else:
            with torch.serialization.safe_globals(_NUMPY_SAFE_GLOBALS):
                checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a damaged file fails anywhere in the unpickler, with any exception type
        refused = re.search(r"unsupported global:?\s+(?:GLOBAL\s+)?([\w.]+)", str(error), flags=re.IGNORECASE)
        if isinstance(error, pickle.UnpicklingError) and refused:
            raise ValueError(
                f"{path} pickles `{refused[1]}`, which the safe loader refuses: unpickling it would import and run "
                "that code. Only for a file whose origin you trust, convert it with --unsafe-pickle."
            ) from None
        raise ValueError(
            f"{path} is not a readable PyTorch checkpoint (corrupt or truncated?): {type(error).__name__}: {error}"
        ) from error

    state_dict = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict) or not state_dict:
        raise ValueError(f"{path} holds no state dict (found {type(checkpoint).__name__}).")
    non_tensors = [key for key, value in state_dict.items() if not isinstance(value, torch.Tensor)]
    if non_tensors:
        raise ValueError(f"{path}: the state dict has non-tensor entries, e.g. {non_tensors[:5]}.")
    return {_canonical_key(key): tensor for key, tensor in state_dict.items()}


def _canonical_key(key: str) -> str:
    key = key.removeprefix("module.")
    if key.startswith(ORIGINAL_TEXT_PREFIX):
        key = OPEN_CLIP_TEXT_PREFIX + key.removeprefix(ORIGINAL_TEXT_PREFIX)
    return key


_REQUIRED = {
    "visual.conv1.weight": "the ViT patch embedding",
    "visual.positional_embedding": "the ViT position embeddings",
    "visual.transformer.resblocks.0.mlp.c_fc.weight": "the ViT blocks",
    "visual.proj": "the visual projection",
    "text.transformer.embeddings.word_embeddings.weight": "a BERT text tower",
    "text.transformer.embeddings.position_embeddings.weight": "the BERT position embeddings",
    "text.transformer.encoder.layer.0.intermediate.dense.weight": "the BERT layers",
    "text.proj.0.weight": "the MLP text head",
    "text.proj.2.weight": "the MLP text head",
}


def infer_config(state_dict: dict[str, torch.Tensor], text_config: BertConfig) -> UniMedCLIPConfig:
    """Read the architecture off the weights; BERT settings the weights cannot show come from `text_config`.

    Attention heads are not stored in the weights: the vision tower uses open_clip's 64-wide heads, and the text
    tower's head count comes from `text_config`.
    """
    missing = [f"{key} ({what})" for key, what in _REQUIRED.items() if key not in state_dict]
    if missing:
        sample = ", ".join(sorted(state_dict)[:8])
        raise ValueError(
            "Not a UniMed-CLIP checkpoint (CLIP ViT image tower + BERT text tower with an MLP head): missing "
            f"{'; '.join(missing)}. Its keys start with: {sample}."
        )
    width, _, patch, _ = state_dict["visual.conv1.weight"].shape
    positions = state_dict["visual.positional_embedding"].shape[0]
    grid = math.isqrt(positions - 1)
    if grid * grid + 1 != positions:
        raise ValueError(f"visual.positional_embedding has {positions} rows: not a class token plus a square grid.")
    vision_config = CLIPVisionConfig(
        image_size=grid * patch,
        patch_size=patch,
        hidden_size=width,
        num_hidden_layers=_count_layers(state_dict, r"visual\.transformer\.resblocks\.(\d+)\."),
        num_attention_heads=width // 64,
        intermediate_size=state_dict["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        hidden_act="quick_gelu",
    )

    vocab_size, text_width = state_dict["text.transformer.embeddings.word_embeddings.weight"].shape
    found = {
        "vocab_size": vocab_size,
        "hidden_size": text_width,
        "num_hidden_layers": _count_layers(state_dict, r"text\.transformer\.encoder\.layer\.(\d+)\."),
        "intermediate_size": state_dict["text.transformer.encoder.layer.0.intermediate.dense.weight"].shape[0],
        "max_position_embeddings": state_dict["text.transformer.embeddings.position_embeddings.weight"].shape[0],
    }
    mismatched = {
        key: (getattr(text_config, key), value) for key, value in found.items() if getattr(text_config, key) != value
    }
    if mismatched:
        details = ", ".join(
            f"{key} {given} vs {value} in the checkpoint" for key, (given, value) in mismatched.items()
        )
        raise ValueError(f"The text encoder config does not match the checkpoint's text tower: {details}.")

    return UniMedCLIPConfig(
        vision_config=vision_config,
        text_config=text_config,
        projection_dim=state_dict["visual.proj"].shape[1],
        text_head_hidden_size=state_dict["text.proj.0.weight"].shape[0],
    )


def _count_layers(state_dict: dict[str, torch.Tensor], pattern: str) -> int:
    indices = {int(match[1]) for key in state_dict if (match := re.match(pattern, key))}
    if indices != set(range(len(indices))) or not indices:
        raise ValueError(f"Layers matching {pattern!r} are missing or not numbered 0..n-1: {sorted(indices)}.")
    return len(indices)


def check_variant(config: UniMedCLIPConfig, variant: str) -> None:
    """Raise if `config` differs from the released `variant` in any dimension, listing every difference."""
    expected = get_variant(variant).config()
    pairs = [(f"vision {key}", config.vision_config, expected.vision_config, key) for key in _VISION_DIMENSIONS]
    pairs += [(f"text {key}", config.text_config, expected.text_config, key) for key in _TEXT_DIMENSIONS]
    pairs += [(key, config, expected, key) for key in ("projection_dim", "text_head_hidden_size")]
    differences = [
        f"{name} {getattr(got, key)} (expected {getattr(want, key)})"
        for name, got, want, key in pairs
        if getattr(got, key) != getattr(want, key)
    ]
    if differences:
        raise ValueError(f"The checkpoint is not the {variant!r} variant: {', '.join(differences)}.")


_VISION_DIMENSIONS = ("image_size", "patch_size", "hidden_size", "num_hidden_layers", "intermediate_size")
_TEXT_DIMENSIONS = ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size")
