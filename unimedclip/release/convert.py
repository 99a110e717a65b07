"""Convert an original UniMed-CLIP checkpoint into a transformers model directory.

    unimedclip convert --checkpoint unimed-clip-vit-b16.pt \
        --text-encoder microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract --output unimed-clip-vit-b16 --variant b16

The output holds `model.safetensors`, `config.json`, the processor and tokenizer files and the remote code, and loads
with `AutoModel`/`AutoProcessor`/`pipeline("zero-shot-image-classification")`.
"""

import argparse
import os
import shutil
from pathlib import Path

import torch
from transformers import AutoTokenizer, BertConfig
from transformers import initialization as init

from modeling_unimedclip.image_processing_unimedclip import UniMedCLIPImageProcessor
from modeling_unimedclip.modeling_unimedclip import UniMedCLIPModel
from modeling_unimedclip.processing_unimedclip import CONTEXT_LENGTH, UniMedCLIPProcessor

from ..variants import RELEASE_NAMESPACE, VARIANTS
from .hub import publish_model
from .model_card import model_card_for_directory
from .original_format import check_variant, infer_config, load_original_checkpoint, open_clip_to_hf


def convert_checkpoint(
    checkpoint: str | Path,
    text_encoder: str,
    *,
    variant: str | None = None,
    unsafe_pickle: bool = False,
) -> tuple[UniMedCLIPModel, UniMedCLIPProcessor]:
    """Build the model and processor from an original `.pt` checkpoint and the BERT repository it was trained from.

    Every checkpoint weight must land in the model and every model weight must be filled, or a `ValueError` lists
    what does not match.
    """
    state_dict = load_original_checkpoint(checkpoint, unsafe_pickle=unsafe_pickle)
    config = infer_config(state_dict, BertConfig.from_pretrained(text_encoder))
    if variant is not None:
        check_variant(config, variant)
    weights, unconsumed = open_clip_to_hf(state_dict)
    with init.no_init_weights():
        model = UniMedCLIPModel(config)
    load_exactly(model, weights, unconsumed)
    model.eval()

    tokenizer = AutoTokenizer.from_pretrained(text_encoder, model_max_length=CONTEXT_LENGTH)
    if tokenizer.pad_token_id != config.text_config.pad_token_id:
        raise ValueError(
            f"The tokenizer of {text_encoder} pads with id {tokenizer.pad_token_id}, the text tower expects "
            f"{config.text_config.pad_token_id}."
        )
    image_size = config.vision_config.image_size
    image_processor = UniMedCLIPImageProcessor(size=image_size, crop_size=image_size)
    return model, UniMedCLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def load_exactly(model: torch.nn.Module, weights: dict[str, torch.Tensor], unconsumed: list[str]) -> None:
    """Load `weights` only if they cover the model one-to-one with matching shapes; else list every problem."""
    expected = model.state_dict()
    problems = [f"checkpoint weight with no place in the model: {key}" for key in sorted(unconsumed)]
    problems += [f"checkpoint weight with no place in the model: {key}" for key in sorted(weights.keys() - expected)]
    problems += [f"model weight missing from the checkpoint: {key}" for key in sorted(expected.keys() - weights)]
    problems += [
        f"shape mismatch for {key}: checkpoint {tuple(weights[key].shape)}, model {tuple(expected[key].shape)}"
        for key in sorted(weights.keys() & expected)
        if weights[key].shape != expected[key].shape
    ]
    if problems:
        shown = "\n  ".join(problems[:40]) + (f"\n  ... and {len(problems) - 40} more" if len(problems) > 40 else "")
        raise ValueError(f"The checkpoint does not match the UniMed-CLIP architecture:\n  {shown}")
    model.load_state_dict(weights, strict=True)


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="Original UniMed-CLIP .pt file.")
    parser.add_argument(
        "--text-encoder",
        required=True,
        help="BERT the model was trained from (config and tokenizer), e.g. "
        "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract, or a local directory.",
    )
    parser.add_argument("--output", required=True, type=Path, help="Directory to write the converted model to.")
    parser.add_argument(
        "--overwrite", action="store_true", help="Replace a non-empty --output (swapped in once fully written)."
    )
    parser.add_argument("--variant", choices=sorted(VARIANTS), help="Fail unless the checkpoint has these dimensions.")
    parser.add_argument("--push-to-hub", metavar="ORG/NAME", help="Also upload the output directory to this repo.")
    parser.add_argument(
        "--unsafe-pickle",
        action="store_true",
        help="Unpickle arbitrary Python objects (can run code): only for checkpoints you trust that the safe loader "
        "rejects.",
    )
    args = parser.parse_args(argv)
    if args.output.exists() and any(args.output.iterdir()) and not args.overwrite:
        parser.error(f"{args.output} is not empty; pass --overwrite to replace it, or choose another --output.")

    try:
        model, processor = convert_checkpoint(
            args.checkpoint, args.text_encoder, variant=args.variant, unsafe_pickle=args.unsafe_pickle
        )
        repo_id = args.push_to_hub or f"{RELEASE_NAMESPACE}/{args.output.name}"
        converted_from = VARIANTS[args.variant].original_checkpoint if args.variant else None
        write_directory(args.output, model, processor, repo_id, converted_from)
    except (FileNotFoundError, ValueError, OSError) as error:
        raise SystemExit(f"convert: error: {error}") from None
    print(f"Converted {args.checkpoint} ({model.num_parameters():,} parameters) to {args.output}, with its card")
    if args.push_to_hub:
        print(f"Uploaded: {publish_model(args.output, args.push_to_hub)}")


def write_directory(
    output: Path, model: UniMedCLIPModel, processor: UniMedCLIPProcessor, repo_id: str, converted_from: str | None
) -> None:
    """Write the model, processor and card into a new sibling folder, then swap it in: an earlier model at `output`
    (sharded or not) stays whole until the new one is complete, and no stale file of it survives."""
    staging = output.with_name(f".tmp-{output.name}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        model_card_for_directory(staging, repo_id=repo_id, converted_from=converted_from).save(staging / "README.md")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if output.exists():
        previous = output.with_name(f".old-{output.name}")
        shutil.rmtree(previous, ignore_errors=True)
        os.replace(output, previous)
        os.replace(staging, output)
        shutil.rmtree(previous)
    else:
        os.replace(staging, output)


if __name__ == "__main__":
    main()
