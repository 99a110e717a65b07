"""A synthetic multi-modality image-caption set in ROCOv2's raw layout, for the offline demo and the tests.

Eight findings across six modalities are drawn as simple pictures with one visual signature each (a bright opacity
in one lung, a dark liver lesion, a large optic cup, dense purple nuclei, ...), varied by position, size, contrast and
noise. Training pairs are written as ROCOv2 ships its training split, so the real ROCOv2 builder reads them:

    <output>/train_captions.csv   columns ID, Caption
    <output>/train/<ID>.jpg

A held-out split is written as one folder per finding (`evaluate_zero_shot.py --image-folder`), with a prompt set in
the evaluation's JSON format (`--prompts`). Captions and prompts come from disjoint template sets, so the zero-shot
evaluation does not see a training caption verbatim.

    python dataset_scripts/synthetic.py --output DIR [--train-per-class 120] [--heldout-per-class 30]
"""

import argparse
import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

SIZE = 128
Painter = Callable[[np.random.Generator], np.ndarray]


def _grid() -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    return x / SIZE, y / SIZE


def _blob(rng: np.random.Generator, cx: float, cy: float, radius: float) -> np.ndarray:
    x, y = _grid()
    cx, cy = cx + rng.uniform(-0.04, 0.04), cy + rng.uniform(-0.04, 0.04)
    radius *= rng.uniform(0.85, 1.15)
    return np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * radius**2))


def _gray(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    image = image * rng.uniform(0.85, 1.1) + rng.normal(0, 0.04, image.shape)
    return np.repeat(np.clip(image * 255, 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


def _color(channels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    channels = channels * rng.uniform(0.9, 1.1) + rng.normal(0, 0.03, channels.shape)
    return np.clip(channels * 255, 0, 255).astype(np.uint8)


def chest_xray(rng: np.random.Generator, pneumonia: bool) -> np.ndarray:
    thorax = 0.75 * _blob(rng, 0.5, 0.5, 0.32)
    lungs = 0.55 * (_blob(rng, 0.33, 0.48, 0.12) + _blob(rng, 0.67, 0.48, 0.12))
    image = thorax - lungs
    if pneumonia:
        image += 0.7 * _blob(rng, rng.choice([0.33, 0.67]), 0.55, 0.07)
    return _gray(image, rng)


def liver_ct(rng: np.random.Generator) -> np.ndarray:
    body = 0.55 * (_blob(rng, 0.5, 0.5, 0.3) > 0.3)
    liver = 0.2 * _blob(rng, 0.38, 0.5, 0.14)
    lesion = -0.45 * _blob(rng, 0.38, 0.5, 0.04)
    return _gray(body + liver + lesion, rng)


def brain_mri(rng: np.random.Generator) -> np.ndarray:
    head = 0.5 * (_blob(rng, 0.5, 0.5, 0.28) > 0.25) + 0.15 * _blob(rng, 0.5, 0.5, 0.2)
    tumor = 0.6 * _blob(rng, rng.uniform(0.35, 0.65), rng.uniform(0.35, 0.65), 0.05)
    return _gray(head + tumor, rng)


def thyroid_ultrasound(rng: np.random.Generator) -> np.ndarray:
    x, y = _grid()
    angle = np.arctan2(x - 0.5, y + 0.1)
    sector = (np.abs(angle) < 0.6) & (y > 0.1)
    speckle = rng.gamma(2.0, 0.15, (SIZE, SIZE))
    nodule = -0.4 * _blob(rng, 0.5, 0.55, 0.08)
    return _gray(sector * (speckle + nodule), rng)


def fundus(rng: np.random.Generator, glaucoma: bool) -> np.ndarray:
    retina = _blob(rng, 0.5, 0.5, 0.28) > 0.2
    disc_radius = 0.09 if glaucoma else 0.04
    disc = _blob(rng, 0.68, 0.5, disc_radius)
    red = 0.85 * retina + 0.1 * disc
    green = 0.35 * retina + 0.6 * disc
    blue = 0.1 * retina + 0.5 * disc
    return _color(np.stack([red, green, blue], axis=-1), rng)


def histopathology(rng: np.random.Generator, tumor: bool) -> np.ndarray:
    nuclei = np.zeros((SIZE, SIZE))
    x, y = _grid()
    count, radius = (70, 0.025) if tumor else (18, 0.015)
    for cx, cy in rng.uniform(0, 1, (count, 2)):
        nuclei += np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * radius**2))
    nuclei = np.clip(nuclei, 0, 1)
    background = np.stack([np.full_like(x, 0.95), np.full_like(x, 0.75), np.full_like(x, 0.85)], axis=-1)
    stain = np.array([0.35, 0.15, 0.55])
    return _color(background * (1 - nuclei[..., None]) + stain * nuclei[..., None], rng)


# finding -> (painter, training caption templates, held-out prompts)
FINDINGS: dict[str, tuple[Painter, list[str], list[str]]] = {
    "pneumonia": (
        lambda rng: chest_xray(rng, pneumonia=True),
        ["chest x-ray showing pneumonia.", "frontal chest radiograph with pneumonia in the lung."],
        ["x-ray of the chest with pneumonia.", "radiograph showing pneumonia."],
    ),
    "normal chest": (
        lambda rng: chest_xray(rng, pneumonia=False),
        ["normal chest x-ray.", "frontal chest radiograph with clear lungs."],
        ["x-ray of a normal chest.", "chest radiograph with no findings."],
    ),
    "liver lesion": (
        liver_ct,
        ["ct scan of the abdomen showing a liver lesion.", "axial ct image with a dark lesion in the liver."],
        ["ct of a liver lesion.", "abdominal ct showing a lesion of the liver."],
    ),
    "brain tumor": (
        brain_mri,
        ["mri of the brain showing a tumor.", "brain mri with a bright tumor."],
        ["magnetic resonance image of a brain tumor.", "mri showing a tumor in the brain."],
    ),
    "thyroid nodule": (
        thyroid_ultrasound,
        ["ultrasound of the thyroid showing a nodule.", "thyroid ultrasound with a dark nodule."],
        ["sonogram of a thyroid nodule.", "ultrasound image of a nodule in the thyroid."],
    ),
    "glaucoma": (
        lambda rng: fundus(rng, glaucoma=True),
        ["fundus photograph showing glaucoma with a large optic cup.", "retina fundus image with glaucoma."],
        ["fundus image of glaucoma.", "retinal photograph showing glaucoma."],
    ),
    "normal retina": (
        lambda rng: fundus(rng, glaucoma=False),
        ["fundus photograph of a normal retina.", "healthy retina fundus image with a small optic disc."],
        ["fundus image of a normal retina.", "retinal photograph with no findings."],
    ),
    "tumor tissue": (
        lambda rng: histopathology(rng, tumor=True),
        ["histopathology slide of tumor tissue with dense nuclei.", "h&e stained tumor tissue."],
        ["histopathology image of tumor tissue.", "slide showing tumor tissue."],
    ),
}


def caption_corpus() -> list[str]:
    """Every caption and prompt the set uses, for training a tokenizer that covers them."""
    return [text for _, captions, prompts in FINDINGS.values() for text in captions + prompts]


def write_synthetic_rocov2(
    output: str | Path, train_per_class: int = 120, heldout_per_class: int = 30, seed: int = 0
) -> tuple[Path, Path, Path]:
    """Write the training pairs (ROCOv2 layout), the held-out image folders and their prompt set.

    Returns (raw ROCOv2 root, held-out image folder root, prompts JSON).
    """
    if train_per_class < 1 or heldout_per_class < 1:
        raise ValueError(f"Need at least one image per class; got {train_per_class=} and {heldout_per_class=}.")
    output = Path(output)
    raw, heldout = output / "rocov2", output / "heldout"
    (raw / "train").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    progress = tqdm(total=len(FINDINGS) * (train_per_class + heldout_per_class), desc="synthetic images", unit="img")
    for finding, (paint, captions, _) in FINDINGS.items():
        for _ in range(train_per_class):
            image_id = f"ROCOv2_2023_train_{len(rows) + 1:06d}"
            Image.fromarray(paint(rng)).save(raw / "train" / f"{image_id}.jpg", quality=92)
            rows.append({"ID": image_id, "Caption": captions[int(rng.integers(len(captions)))]})
            progress.update()
        folder = heldout / finding.replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(heldout_per_class):
            Image.fromarray(paint(rng)).save(folder / f"{index:04d}.png")
            progress.update()
    progress.close()
    order = rng.permutation(len(rows))  # ROCOv2's file is not sorted by finding
    with open(raw / "train_captions.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["ID", "Caption"])
        writer.writeheader()
        writer.writerows(rows[i] for i in order)
    prompts = {heldout.name: {finding.replace(" ", "_"): held for finding, (_, _, held) in FINDINGS.items()}}
    prompts_file = output / "heldout_prompts.json"
    prompts_file.write_text(json.dumps(prompts, indent=2) + "\n")
    return raw, heldout, prompts_file


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--train-per-class", type=int, default=120)
    parser.add_argument("--heldout-per-class", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    raw, heldout, prompts = write_synthetic_rocov2(
        args.output, args.train_per_class, args.heldout_per_class, args.seed
    )
    print(f"ROCOv2-layout training pairs in {raw}, held-out images in {heldout}, prompts in {prompts}")


if __name__ == "__main__":
    main()
