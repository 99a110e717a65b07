"""Export a UniMed-CLIP directory to pip open_clip's Hub layout, so open_clip users can load our weights.

    unimedclip export --model unimed-clip-vit-b16 --output unimed-clip-vit-b16-open_clip \
        --text-encoder microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract

The output (`open_clip_config.json` + `open_clip_model.safetensors`) loads with
`open_clip.create_model_and_transforms("hf-hub:ORG/NAME")` or `("local-dir:PATH")`; pass `pretrained_text=False` to
skip downloading BERT weights that the checkpoint replaces anyway.
"""

import argparse
import json
from pathlib import Path

from safetensors.torch import save_file

from modeling_unimedclip.image_processing_unimedclip import UniMedCLIPImageProcessor
from modeling_unimedclip.modeling_unimedclip import UniMedCLIPModel
from modeling_unimedclip.processing_unimedclip import CONTEXT_LENGTH

from .original_format import hf_to_open_clip

OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"
OPEN_CLIP_HEAD_WIDTH = 64


def open_clip_config(model: UniMedCLIPModel, image_processor: UniMedCLIPImageProcessor, text_encoder: str) -> dict:
    """The `CustomTextCLIP` configuration that rebuilds `model` in open_clip; raises if open_clip cannot express it."""
    vision, text, config = model.config.vision_config, model.config.text_config, model.config
    incompatible = []
    if vision.hidden_act != "quick_gelu":
        incompatible.append(f"vision activation {vision.hidden_act!r} (open_clip: quick_gelu)")
    if vision.layer_norm_eps != 1e-5:
        incompatible.append(f"vision LayerNorm eps {vision.layer_norm_eps} (open_clip: 1e-5)")
    if vision.hidden_size != vision.num_attention_heads * OPEN_CLIP_HEAD_WIDTH:
        incompatible.append(
            f"{vision.num_attention_heads} vision heads of width {vision.hidden_size} (open_clip: 64-wide)"
        )
    if config.text_head_hidden_size != (text.hidden_size + config.projection_dim) // 2:
        incompatible.append(f"text head hidden size {config.text_head_hidden_size} (open_clip: (d + e) // 2)")
    if incompatible:
        raise ValueError(f"open_clip cannot express this model: {'; '.join(incompatible)}.")
    return {
        "model_cfg": {
            "embed_dim": config.projection_dim,
            "quick_gelu": True,
            "vision_cfg": {
                "image_size": vision.image_size,
                "patch_size": vision.patch_size,
                "width": vision.hidden_size,
                "layers": vision.num_hidden_layers,
                "head_width": OPEN_CLIP_HEAD_WIDTH,
                "mlp_ratio": vision.intermediate_size / vision.hidden_size,
            },
            "text_cfg": {
                "hf_model_name": text_encoder,
                "hf_tokenizer_name": text_encoder,
                "hf_proj_type": "mlp",
                "hf_pooler_type": "cls_last_hidden_state_pooler",
                "context_length": CONTEXT_LENGTH,
            },
        },
        "preprocess_cfg": {
            "mean": list(image_processor.image_mean),
            "std": list(image_processor.image_std),
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        },
    }


def export_open_clip(model_dir: str | Path, output: str | Path, text_encoder: str) -> Path:
    """Write `open_clip_config.json` and `open_clip_model.safetensors` for the model in `model_dir`."""
    model = UniMedCLIPModel.from_pretrained(model_dir)
    image_processor = UniMedCLIPImageProcessor.from_pretrained(model_dir)
    config = open_clip_config(model, image_processor, text_encoder)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    save_file(hf_to_open_clip(model.state_dict()), output / OPEN_CLIP_WEIGHTS)
    (output / OPEN_CLIP_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return output


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="UniMed-CLIP directory or Hub id.")
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument(
        "--text-encoder", required=True, help="BERT Hub id (or directory) open_clip builds the tower from."
    )
    args = parser.parse_args(argv)
    print(f"Wrote {export_open_clip(args.model, args.output, args.text_encoder)}")


if __name__ == "__main__":
    main()
