"""End-to-end demo on a fresh machine with no network: original checkpoint -> converter -> AutoModel -> pipeline.

1. Builds a tiny UniMed-CLIP (random weights) and its BiomedBERT-style WordPiece tokenizer, and writes the model as
   an original open_clip-fork training checkpoint (`module.` prefixes, `text_encoder.` tower, optimizer state with
   numpy learning rates).
2. Converts it with `python -m modeling_unimedclip.convert`, exactly as for the released checkpoints.
3. Loads the result with `AutoModel`/`AutoProcessor` and classifies generated images in the modes hospitals store
   (16-bit grayscale, RGBA, palette, RGB), and checks that `pipeline("zero-shot-image-classification")` agrees.

The weights are random, so the scores mean nothing: this shows that every stage runs. With a real checkpoint, pass
`--checkpoint unimed-clip-vit-b16.pt --text-encoder microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract`.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tokenizers import BertWordPieceTokenizer
from transformers import AutoModel, AutoProcessor, BertModel, BertTokenizer, pipeline

from modeling_unimedclip import UniMedCLIPConfig, UniMedCLIPModel
from modeling_unimedclip.original_format import hf_to_open_clip

OUTPUT = Path("demo_output")
LABELS = ["chest x-ray with pneumonia", "normal chest x-ray", "ct scan of the liver", "fundus photo of the retina"]
CORPUS = LABELS + [
    "mri of the brain showing a tumor",
    "ultrasound of the thyroid with a benign nodule",
    "histopathology slide of lung adenocarcinoma",
    "this is a photo of a lesion",
]


def build_text_encoder(directory: Path) -> BertTokenizer:
    """A tiny uncased WordPiece tokenizer trained on the demo captions, saved with a matching tiny BERT."""
    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(CORPUS, vocab_size=300, min_frequency=1, show_progress=False)
    tokenizer = BertTokenizer(vocab=wordpiece.get_vocab(), do_lower_case=True, model_max_length=256)
    tokenizer.save_pretrained(directory)
    return tokenizer


def write_original_checkpoint(path: Path, text_encoder: Path, vocab_size: int) -> None:
    config = UniMedCLIPConfig(
        vision_config=dict(
            image_size=64,
            patch_size=16,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=1,
            intermediate_size=256,
            hidden_act="quick_gelu",
        ),
        text_config=dict(
            vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128
        ),
        projection_dim=32,
    )
    torch.manual_seed(0)
    model = UniMedCLIPModel(config)
    BertModel(config.text_config, add_pooling_layer=False).save_pretrained(text_encoder)
    state_dict = {
        "module." + key.replace("text.", "text_encoder.", 1) if key.startswith("text.") else "module." + key: value
        for key, value in hf_to_open_clip(model.state_dict()).items()
    }
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4).state_dict()
    optimizer["param_groups"][0]["lr"] = np.float64(5e-4)
    torch.save({"epoch": 1, "name": "demo", "state_dict": state_dict, "optimizer": optimizer}, path)


def generated_images() -> dict[str, Image.Image]:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:300, 0:260]
    radiograph = (20000 + 30000 * np.exp(-((x - 130) ** 2 + (y - 150) ** 2) / 8000)).astype(np.uint16)
    fundus = np.zeros((240, 240, 4), dtype=np.uint8)
    fundus[..., 0] = (180 * np.exp(-((x[:240, :240] - 120) ** 2 + (y[:240, :240] - 120) ** 2) / 5000)).astype(np.uint8)
    fundus[..., 3] = 255
    return {
        "16-bit radiograph (I;16)": Image.fromarray(radiograph),
        "RGBA fundus": Image.fromarray(fundus),
        "palette slide (P)": Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)).convert("P"),
        "RGB photo": Image.fromarray(rng.integers(0, 256, (180, 320, 3), dtype=np.uint8)),
    }


def main() -> None:
    OUTPUT.mkdir(exist_ok=True)
    text_encoder, checkpoint, converted = OUTPUT / "text-encoder", OUTPUT / "epoch_1.pt", OUTPUT / "unimed-clip-tiny"

    print("[1/3] Building a tiny UniMed-CLIP and writing it as an original training checkpoint")
    tokenizer = build_text_encoder(text_encoder)
    write_original_checkpoint(checkpoint, text_encoder, vocab_size=len(tokenizer))

    print("[2/3] Converting it with the converter CLI")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "modeling_unimedclip.convert",
            "--checkpoint",
            str(checkpoint),
            "--text-encoder",
            str(text_encoder),
            "--output",
            str(converted),
        ],
        check=True,
    )

    print("[3/3] Zero-shot classification with AutoModel + AutoProcessor (random weights: scores are meaningless)")
    model = AutoModel.from_pretrained(converted).eval()
    processor = AutoProcessor.from_pretrained(converted)
    images = generated_images()
    with torch.no_grad():
        probabilities = model(**processor(text=LABELS, images=list(images.values()))).logits_per_image.softmax(-1)
    for name, row in zip(images, probabilities):
        print(f"  {name:26s} -> {LABELS[int(row.argmax())]!r} ({row.max():.3f})")

    # The pipeline loads images as 8-bit RGB itself, so it sees the same pixels only for RGB inputs.
    classifier = pipeline("zero-shot-image-classification", model=str(converted))
    results = classifier(images["RGB photo"], candidate_labels=LABELS, hypothesis_template="{}")
    scores = {result["label"]: result["score"] for result in results}
    if not np.allclose([scores[label] for label in LABELS], probabilities[-1].numpy(), atol=1e-5):
        raise SystemExit(f"The pipeline disagrees with the model: {scores} vs {probabilities[-1].tolist()}")
    print("  pipeline on the RGB photo: same scores as AutoModel")
    print(f"Done. The converted model is in {converted}/")


if __name__ == "__main__":
    main()
