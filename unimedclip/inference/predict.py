"""`unimedclip predict`: zero-shot classification of medical files from the command line.

    unimedclip predict scan.dcm series_dir/ brain.nii.gz --labels "hemorrhage,no hemorrhage" --modality ct \
        --window brain --model ORG/unimed-clip-vit-b16 [--json]

Images (PNG, JPEG, 16-bit TIFF/PNG, single-frame DICOM) are classified directly. Volumes (NIfTI files, directories
of DICOM slices, multi-frame DICOM files) are sampled into slices whose embeddings are pooled. Bare labels are
expanded with the shipped prompt ensemble of `--modality`.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import pydicom
import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor

from modeling_unimedclip.dicom_unimedclip import WINDOW_PRESETS, is_dicom

from ..modalities import MODALITIES
from .volumes import AXES, is_volume_path, load_volume, sample_slices
from .zero_shot import (
    POOLINGS,
    class_embeddings,
    expand_labels,
    image_embeddings,
    image_probabilities,
    volume_probabilities,
)

MODEL_ENVIRONMENT_VARIABLE = "UNIMEDCLIP_MODEL"


def parse_window(value: str) -> str | tuple[float, float]:
    """A preset name, or `center,width`."""
    if value.lower() in WINDOW_PRESETS:
        return value.lower()
    try:
        center, width = (float(part) for part in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is neither a window preset ({', '.join(WINDOW_PRESETS)}) nor 'center,width'."
        ) from None
    return center, width


def parser(prog: str | None = None) -> argparse.ArgumentParser:
    predict = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    predict.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    predict.add_argument("--labels", required=True, help="Comma-separated class labels.")
    predict.add_argument(
        "--modality", choices=list(MODALITIES), help="Prompt ensemble for the labels (default: generic)."
    )
    predict.add_argument("--window", type=parse_window, help="CT window preset or 'center,width' (DICOM, NIfTI).")
    predict.add_argument(
        "--model",
        default=os.environ.get(MODEL_ENVIRONMENT_VARIABLE),
        help=f"UniMed-CLIP directory or Hub id (default: ${MODEL_ENVIRONMENT_VARIABLE}).",
    )
    predict.add_argument("--axis", choices=AXES, help="Slicing axis for NIfTI volumes (default: axial).")
    sampling = predict.add_mutually_exclusive_group()
    sampling.add_argument("--slices", type=int, default=16, help="Evenly spaced slices per volume (default: 16).")
    sampling.add_argument("--stride", type=int, help="Use every N-th slice instead of --slices.")
    predict.add_argument("--pooling", choices=POOLINGS, default="mean", help="How slices combine (default: mean).")
    predict.add_argument("--frame", type=int, help="Classify this frame of multi-frame DICOMs as an image.")
    predict.add_argument("--batch-size", type=int, default=32)
    predict.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    predict.add_argument("--json", action="store_true", help="Print JSON instead of a table.")
    return predict


def predict_path(path: Path, model, processor, class_embeds: torch.Tensor, args: argparse.Namespace) -> dict:
    """Classify one image or volume; returns its path, kind, slice count and per-label probabilities."""
    scale = model.logit_scale.exp().item()
    if is_volume_path(path) or (args.frame is None and is_dicom(path) and _frame_count(path) > 1):
        volume = load_volume(path, window=args.window, axis=args.axis)
        indices = sample_slices(len(volume), count=None if args.stride else args.slices, stride=args.stride)
        slices = [Image.fromarray(np.round(volume[i]).astype(np.uint8)) for i in indices]
        embeds = image_embeddings(model, processor, slices, args.batch_size)
        probabilities = volume_probabilities(embeds, class_embeds, scale, args.pooling)
        kind = f"volume, {len(indices)} of {len(volume)} slices, {args.pooling} pooling"
    else:
        if args.window is not None and not is_dicom(path):
            print(f"unimedclip predict: {path}: --window applies to DICOM and NIfTI only; ignored.", file=sys.stderr)
        embeds = image_embeddings(model, processor, [path], args.batch_size, window=args.window, frame=args.frame)
        probabilities = image_probabilities(embeds, class_embeds, scale)[0]
        kind = "image"
    return {"path": str(path), "kind": kind, "scores": probabilities.tolist()}


def _frame_count(path: Path) -> int:
    try:
        return int(pydicom.dcmread(path, stop_before_pixels=True).get("NumberOfFrames", 1) or 1)
    except Exception:  # an unreadable file is reported by the image path, with its own message
        return 1


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = parser(prog).parse_args(argv)
    if args.model is None:
        raise SystemExit(
            f"unimedclip predict: pass --model DIR_OR_REPO or set ${MODEL_ENVIRONMENT_VARIABLE} (a UniMed-CLIP "
            "directory, e.g. one written by `unimedclip convert`)."
        )
    try:
        prompts = expand_labels(args.labels.split(","), args.modality)
    except ValueError as error:
        raise SystemExit(f"unimedclip predict: --labels: {error}") from None
    labels = list(prompts)
    model = AutoModel.from_pretrained(args.model).to(args.device).eval()
    processor = AutoProcessor.from_pretrained(args.model)
    class_embeds = class_embeddings(model, processor, prompts)

    results, failures = [], 0
    for path in args.paths:
        try:
            result = predict_path(path, model, processor, class_embeds, args)
        except (ValueError, TypeError, ImportError) as error:
            failures += 1
            print(f"unimedclip predict: {path}: {error}", file=sys.stderr)
            continue
        ranked = sorted(zip(labels, result.pop("scores")), key=lambda pair: pair[1], reverse=True)
        result["predictions"] = [{"label": label, "score": score} for label, score in ranked]
        results.append(result)
        if not args.json:
            print(f"{path} ({result['kind']})")
            for label, score in ranked:
                print(f"  {100 * score:6.2f}%  {label}")
    if args.json:
        print(json.dumps(results, indent=2))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
