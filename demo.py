"""The whole system end to end, offline, in a few minutes on a CPU: data -> shards -> stream -> train -> evaluate ->
model card -> AutoModel and the zero-shot pipeline -> fine-tuned classifier.

1. Generates a small synthetic image-caption set (eight findings over six modalities) in ROCOv2's raw layout, a
   held-out split as image folders, and a WordPiece tokenizer for its captions.
2. Builds WebDataset shards with the real ROCOv2 builder (`dataset_scripts/build.py`).
3. Streams them back with `datasets.load_dataset(<dir>, "mixed", streaming=True)`.
4. Trains a tiny UniMed-CLIP from scratch with `accelerate launch train.py --config demo`.
5. Evaluates it zero-shot on the held-out images with `evaluate_zero_shot.py`; it must beat chance clearly.
6. Writes the model card from the evaluation results.
7. Reloads the model with `AutoModel` and `pipeline("zero-shot-image-classification")` and classifies a few images.
8. Fine-tunes it into a classifier of the eight findings with `accelerate launch finetune.py` (a linear probe, then
   WiSE-FT's mix with the zero-shot weights chosen on the validation split) on the training images, labelled by their
   captions' finding, and shows its accuracy on the held-out images beside the zero-shot classifier's, which it must
   beat; then classifies with `pipeline("image-classification")`.

With real data the same commands do the real job: `build.py --source <id> --root RAW --annotations FILE`,
`train.py --config b16 --data ORG/UniMed`, `evaluate_zero_shot.py --data-root EVAL_DATA`, publishing with
`unimedclip publish model DIR --repo-id ORG/NAME`, and `finetune.py --model ORG/NAME --image-folder YOUR_IMAGES`.
"""

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from datasets import load_dataset
from PIL import Image
from transformers import AutoModel, AutoProcessor, BertTokenizer, pipeline

from dataset_scripts.synthetic import FINDINGS, caption_corpus, write_synthetic_rocov2
from unimedclip.release.model_card import model_card_for_directory
from unimedclip.training.config import build_config

ROOT = Path(__file__).resolve().parent
DEMO_REPO_ID = "unimed-clip/unimed-clip-demo"


STAGES = 8
# `accelerate launch` on this machine's CPU, one process, as `accelerate config` would set it up.
ACCELERATE_CPU = [
    "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1", "--num_machines", "1",
    "--mixed_precision", "no", "--dynamo_backend", "no",
]  # fmt: skip


# Written into the output folder, so that running the demo again replaces its own earlier output and nothing else.
MARKER = ".unimedclip-demo"


def prepare_output(output: Path) -> None:
    """Empty `output` for a new run: a folder an earlier demo wrote is replaced, any other non-empty one refused."""
    if output.exists() and any(output.iterdir()):
        if not (output / MARKER).is_file():
            raise SystemExit(
                f"{output} is not empty and was not written by the demo; remove it or pass another --output."
            )
        shutil.rmtree(output)
    output.mkdir(parents=True, exist_ok=True)
    (output / MARKER).write_text("Written by demo.py, which replaces this folder when it runs again.\n")


def stage(number: int, title: str) -> None:
    print(f"\n[{number}/{STAGES}] {title}", flush=True)


# The demo's model is tiny: one intra-op thread per process loses little on an idle machine, while two spinning
# OpenMP threads on a busy one made a training step several times slower (see tests/conftest.py).
ENVIRONMENT = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def run(*command: str) -> None:
    """Run a project command as a user would, echoing it; stop the demo if it fails."""
    print("  $", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT, env=ENVIRONMENT)


def write_labels(raw: Path, heldout: Path) -> tuple[Path, Path]:
    """`finetune.py --csv` files (path, label) of the training images, labelled with the finding their caption
    describes, and of the held-out images, labelled with their folder; the labels are the held-out folder names."""
    finding_of = {
        caption: finding.replace(" ", "_") for finding, (_, captions, _) in FINDINGS.items() for caption in captions
    }
    train = raw / "train_labels.csv"
    with open(raw / "train_captions.csv", newline="") as captions, open(train, "w", newline="") as labels:
        writer = csv.writer(labels)
        writer.writerow(["path", "label"])
        for row in csv.DictReader(captions):
            writer.writerow([f"train/{row['ID']}.jpg", finding_of[row["Caption"]]])
    held_out = heldout.parent / "heldout_labels.csv"
    with open(held_out, "w", newline="") as labels:
        writer = csv.writer(labels)
        writer.writerow(["path", "label"])
        for folder in sorted(heldout.iterdir()):
            writer.writerows(
                [f"{heldout.name}/{folder.name}/{image.name}", folder.name] for image in sorted(folder.iterdir())
            )
    return train, held_out


def write_tokenizer(directory: Path) -> None:
    """An uncased WordPiece vocabulary (BiomedBERT's kind) with every word of the demo captions and prompts.

    Built by hand rather than with the tokenizers trainer, whose ties make the vocabulary differ between runs.
    """
    words = sorted({word for text in caption_corpus() for word in re.findall(r"\w+|[^\w\s]", text.lower())})
    characters = sorted({character for word in words for character in word})
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *characters, *(f"##{c}" for c in characters), *words]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=256).save_pretrained(directory)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("demo_output"))
    parser.add_argument("--train-per-class", type=int, default=120)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--finetune-epochs", type=int, default=5)
    args = parser.parse_args(argv)
    output = args.output.resolve()
    prepare_output(output)
    started = time.perf_counter()

    stage(1, "Generating a synthetic multi-modality image-caption set in ROCOv2's raw layout")
    raw, heldout, prompts = write_synthetic_rocov2(output / "raw", train_per_class=args.train_per_class)
    tokenizer_dir = output / "tokenizer"
    write_tokenizer(tokenizer_dir)

    stage(2, "Building WebDataset shards with the ROCOv2 builder")
    shards = output / "unimed"
    run(
        sys.executable,
        "dataset_scripts/build.py",
        "--source",
        "rocov2",
        "--root",
        str(raw),
        "--annotations",
        str(raw / "train_captions.csv"),
        "--output",
        str(shards),
        "--shard-size",
        "64",
        "--shard-multiple",
        "4",
    )

    stage(3, "Streaming them back with datasets")
    stream = load_dataset(str(shards), "mixed", split="train", streaming=True)
    for sample in stream.take(2):
        record = sample["json"]
        print(
            f"  {sample['__key__']}: {sample['image'].size[0]}x{sample['image'].size[1]} {record['source']} "
            f"({record['modality']}) {record['captions'][0]!r}"
        )

    stage(4, "Training a tiny UniMed-CLIP with accelerate launch train.py --config demo")
    run_dir = output / "run"
    run(
        sys.executable,
        *ACCELERATE_CPU,
        "train.py",
        "--config",
        "demo",
        "--data",
        str(shards),
        "--tokenizer",
        str(tokenizer_dir),
        "--output-dir",
        str(run_dir),
        "--epochs",
        str(args.epochs),
        "--samples-per-epoch",
        str(8 * args.train_per_class),
        "--report-to",
        "tensorboard",
    )
    model_dir = run_dir / "final"

    stage(5, "Zero-shot evaluation on the held-out images")
    evaluation = output / "evaluation"
    run(
        sys.executable,
        "evaluate_zero_shot.py",
        "--model",
        str(model_dir),
        "--image-folder",
        str(heldout),
        "--prompts",
        str(prompts),
        "--output",
        str(evaluation),
        "--num-workers",
        "0",
        "--cache-dir",
        str(output / "cache"),
    )
    result = json.loads((evaluation / "results.json").read_text())["results"][heldout.name]
    accuracy, chance = result["accuracy"], 100 / len(result["classes"])
    print(f"  accuracy {accuracy:.1f}% over {len(result['classes'])} classes (chance {chance:.1f}%)")
    if accuracy < 2 * chance:
        raise SystemExit(f"The demo model did not learn: {accuracy:.1f}% is not clearly above chance ({chance:.1f}%).")

    stage(6, "Writing the model card from the evaluation results")
    run_config = build_config(str(run_dir / "config.yaml"), {"push_to_hub": DEMO_REPO_ID})
    fields = run_config.model_card_fields(precision="no")  # what stage 4 launched with
    card = model_card_for_directory(model_dir, results_path=evaluation / "results.json", **fields)
    card.save(model_dir / "README.md")
    print(f"  {model_dir / 'README.md'}")

    stage(7, "Reloading with AutoModel and the zero-shot pipeline")
    model = AutoModel.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    classifier = pipeline("zero-shot-image-classification", model=str(model_dir))
    class_prompts = json.loads(prompts.read_text())[heldout.name]
    labels = [candidates[0] for candidates in class_prompts.values()]
    print("  one held-out image per class, labelled with its first prompt (a single prompt, no ensemble):")
    for folder in sorted(heldout.iterdir()):
        expected = class_prompts[folder.name][0]
        image = Image.open(sorted(folder.iterdir())[0]).convert("RGB")
        best = classifier(image, candidate_labels=labels, hypothesis_template="{}")[0]
        with torch.no_grad():
            logits = model(**processor(text=labels, images=image)).logits_per_image[0]
        verdict = "right" if best["label"] == expected else "wrong"
        agrees = labels[int(logits.argmax())] == best["label"]
        print(f"  {folder.name:15s} -> {best['label']!r} ({best['score']:.2f}, {verdict}); AutoModel agrees: {agrees}")

    stage(8, "Fine-tuning it into a classifier of the findings with accelerate launch finetune.py")
    train_labels, heldout_labels = write_labels(raw, heldout)
    classifier_prompts = output / "classifier_prompts.json"  # the held-out prompts: the zero-shot head's classes
    classifier_prompts.write_text(json.dumps(json.loads(prompts.read_text())[heldout.name], indent=2) + "\n")
    finetuned = output / "classifier"
    run(
        sys.executable,
        *ACCELERATE_CPU,
        "finetune.py",
        "--model",
        str(model_dir),
        "--csv",
        str(train_labels),
        "--test",
        str(heldout_labels),
        "--prompts",
        str(classifier_prompts),
        "--output-dir",
        str(finetuned),
        # A minute on a CPU; full fine-tuning (`--method full`) takes a few and gains about as much on this tiny model.
        "--method",
        "linear-probe",
        "--lr",
        "1e-2",
        # The probe alone gains about a point over zero-shot here and loses one class; the mix keeps both strengths.
        "--wise-ft",
        "--epochs",
        str(args.finetune_epochs),
        "--num-workers",
        "0",
        "--report-to",
        "tensorboard",
        "--base-model-id",
        DEMO_REPO_ID,
    )
    report = json.loads((finetuned / "final" / "results.json").read_text())
    before, after = report["before"]["test"], report["after"]["test"]
    print(f"  on the {after['images']} held-out images ({finetuned / 'final' / 'results.json'}):")
    print(f"  {'':15s} {'zero-shot':>10s} {'fine-tuned':>11s}")
    for name in report["classes"]:
        print(f"  {name:15s} {before['classes'][name]['recall']:9.1f}% {after['classes'][name]['recall']:10.1f}%")
    print(f"  {'accuracy':15s} {before['accuracy']:9.1f}% {after['accuracy']:10.1f}%")
    print(f"  (the zero-shot head is the zero-shot classifier: stage 5 measured {accuracy:.1f}% on these images)")
    if not after["accuracy"] > before["accuracy"]:
        raise SystemExit(
            f"Fine-tuning did not beat zero-shot on the held-out images: {after['accuracy']:.1f}% vs "
            f"{before['accuracy']:.1f}%."
        )
    image_classifier = pipeline("image-classification", model=str(finetuned / "final"))
    print("  one held-out image per class with pipeline('image-classification'):")
    for folder in sorted(heldout.iterdir()):
        best = image_classifier(str(sorted(folder.iterdir())[0]))[0]
        verdict = "right" if best["label"] == folder.name else "wrong"
        print(f"  {folder.name:15s} -> {best['label']!r} ({best['score']:.2f}, {verdict})")
    print(
        f"\nDone in {time.perf_counter() - started:.0f} s. Model, processor and card: {model_dir}/; fine-tuned "
        f"classifier: {finetuned / 'final'}/"
    )


if __name__ == "__main__":
    main()
