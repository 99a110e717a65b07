"""Images/s of the zero-shot evaluator vs a straightforward loop that re-encodes the prompts for every batch.

    python bench/bench_eval.py [--variant b16] [--images 64] [--batch-size 16] [--classes 11] [--prompts-per-class 10]

Both run the same randomly initialised model on the same generated images in the same process; the evaluator
encodes the class prompts once (and caches them), batches images through a DataLoader, and uses bf16 on GPU.
Results go to bench/results/.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import BertTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from modeling_unimedclip import UniMedCLIPImageProcessor, UniMedCLIPModel, UniMedCLIPProcessor  # noqa: E402
from unimedclip.evaluation import EvalDataset, Evaluator, Sample  # noqa: E402
from unimedclip.variants import VARIANTS  # noqa: E402

WORDS = "chest x ray ct scan liver lung kidney heart brain tumor normal mass effusion showing with of a the".split()


def naive(model, processor, samples: list[Sample], prompts: dict[str, list[str]], batch_size: int) -> list[int]:
    """The straightforward loop: every batch encodes its images and all the prompts again."""
    predictions = []
    texts = [text for class_prompts in prompts.values() for text in class_prompts]
    with torch.no_grad():
        for start in range(0, len(samples), batch_size):
            batch = [Image.open(sample.image).convert("RGB") for sample in samples[start : start + batch_size]]
            inputs = processor(text=texts, images=batch).to(model.device)
            outputs = model(**inputs)
            classes = F.normalize(outputs.text_embeds.reshape(len(prompts), -1, outputs.text_embeds.shape[-1]).mean(1))
            predictions += (outputs.image_embeds @ classes.T).argmax(-1).tolist()
    return predictions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="b16")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    # Defaults shaped like the CT organ datasets: 11 classes, 10 descriptive prompts of about 30 words each.
    parser.add_argument("--classes", type=int, default=11)
    parser.add_argument("--prompts-per-class", type=int, default=10)
    parser.add_argument("--words-per-prompt", type=int, default=30)
    parser.add_argument("--num-workers", type=int, default=2 if torch.cuda.is_available() else 0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = UniMedCLIPModel(VARIANTS[args.variant].config()).to(args.device).eval()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    tokenizer = BertTokenizer(vocab={word: i for i, word in enumerate(vocab)}, model_max_length=256)
    size = model.config.vision_config.image_size
    processor = UniMedCLIPProcessor(UniMedCLIPImageProcessor(size=size), tokenizer)
    rng = np.random.default_rng(0)
    prompts = {
        f"class {c}": [" ".join(rng.choice(WORDS, args.words_per_prompt)) for _ in range(args.prompts_per_class)]
        for c in range(args.classes)
    }

    with tempfile.TemporaryDirectory() as directory:
        samples = []
        for index in range(args.images):
            path = Path(directory) / f"{index}.png"
            Image.fromarray(rng.integers(0, 256, (size + 37, size + 11, 3), dtype=np.uint8)).save(path)
            samples.append(Sample(path, index % args.classes))
        dataset = EvalDataset("bench", "xray", "accuracy", list(prompts), samples)
        dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
        evaluator = Evaluator(model, processor, batch_size=args.batch_size, num_workers=args.num_workers, dtype=dtype)

        start = time.perf_counter()
        evaluator.zero_shot(dataset, prompts)
        ours = args.images / (time.perf_counter() - start)
        start = time.perf_counter()
        naive(model, processor, samples, prompts, args.batch_size)
        reference = args.images / (time.perf_counter() - start)

    report = {
        "config": {**vars(args), "output": str(args.output), "torch": torch.__version__},
        "evaluator_images_per_s": ours,
        "naive_images_per_s": reference,
        "ratio": ours / reference,
    }
    print(
        f"{args.variant} on {args.device}: evaluator {ours:.2f} img/s, naive loop {reference:.2f} img/s, "
        f"ratio {ours / reference:.2f}x"
    )
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / f"eval_{args.variant}_{args.device}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"Wrote {path}")


if __name__ == "__main__":
    main()
