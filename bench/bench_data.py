"""Training-data throughput per CPU core: `load_unimed` + `UniMedCollator` against a plain webdataset pipeline doing
the original UniMed-CLIP steps, on the same synthetic shards.

Both run in one process (no workers) over shards of JPEGs pre-resized to a short side of 512 px, 40 % grayscale as
radiology sources are. Baseline, as the original training did: PIL decode to RGB, torchvision
RandomResizedCrop(scale 0.9-1, bicubic), RGB, uint8 tensor, captions cleaned and padded to 256 tokens, stacked. Ours:
decode, crop and resize before the RGB conversion of grayscale images, captions padded to the longest of the batch.
Throughput is samples per second of process CPU time (all threads), i.e. per core.

    python bench/bench_data.py [--samples 1536] [--image-size 224] [--batch-size 64]
"""

import argparse
import io
import json
import random
import tarfile
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

WORDS = (
    "chest radiograph shows a right lower lobe opacity with small pleural effusion no pneumothorax heart size normal "
    "axial ct of the abdomen liver lesion hypodense mri brain t2 weighted signal fundus photograph optic disc cup "
    "retina haemorrhage histopathology slide tumour cells nuclei stained ultrasound thyroid nodule echogenic"
).split()


def write_shards(root: Path, samples: int, shard_size: int, short_side: int) -> list[str]:
    """Shards in the UniMed layout (`<key>.image`, `<key>.json`) plus a card, so both pipelines read the same files."""
    import numpy as np
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(0)
    urls = []
    for shard in range(0, samples, shard_size):
        path = root / "data" / "xray" / f"xray-{shard // shard_size:06d}.tar"
        path.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(path, "w") as tar:
            for index in range(shard, min(shard + shard_size, samples)):
                long_side = int(short_side * rng.uniform(1.0, 1.5))
                size = (long_side, short_side) if index % 2 else (short_side, long_side)
                mode = "L" if index % 5 < 2 else "RGB"
                # Smooth noise compresses like a scan rather than like white noise.
                noise = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 1 if mode == "L" else 3), dtype=np.uint8)
                image = Image.fromarray(noise.squeeze(-1) if mode == "L" else noise, mode).resize(size)
                buffer = io.BytesIO()
                image.filter(ImageFilter.GaussianBlur(2)).save(buffer, "JPEG", quality=90)
                captions = [" ".join(rng.choice(WORDS, int(rng.integers(8, 60)))) for _ in range(10)]
                record = {"source": "chexpert", "modality": "xray", "captions": captions, "report": None}
                record |= {"labels": [], "license": "open", "path": f"{index}.jpg"}
                for name, data in (
                    (f"{index:08d}.image", buffer.getvalue()),
                    (f"{index:08d}.json", json.dumps(record)),
                ):
                    data = data.encode() if isinstance(data, str) else data
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        urls.append(str(path))
    card = "configs:\n- config_name: xray\n  data_files:\n  - split: train\n    path: data/xray/*.tar\n"
    (root / "README.md").write_text(f"---\n{card}---\n")
    return urls


def make_tokenizer():
    from transformers import BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(WORDS))]
    return BertTokenizer(vocab={word: i for i, word in enumerate(vocab)}, do_lower_case=True, model_max_length=256)


def baseline_batches(urls: list[str], image_size: int, batch_size: int, tokenizer) -> Iterable:
    import torch
    import webdataset as wds
    from PIL import Image
    from torchvision import transforms

    from modeling_unimedclip.processing_unimedclip import clean_text

    crop = transforms.RandomResizedCrop(
        image_size, scale=(0.9, 1.0), interpolation=transforms.InterpolationMode.BICUBIC
    )
    to_tensor = transforms.PILToTensor()

    def transform(sample: dict) -> tuple:
        image = Image.open(io.BytesIO(sample["image"])).convert("RGB")
        caption = random.choice(json.loads(sample["json"])["captions"][:10])
        return to_tensor(crop(image).convert("RGB")), caption

    def collate(samples: list) -> dict:
        images, captions = zip(*samples)
        tokens = tokenizer(
            [clean_text(c) for c in captions],
            padding="max_length",
            truncation=True,
            max_length=256,
            return_tensors="pt",
        )
        return {"pixel_values": torch.stack(images), "input_ids": tokens["input_ids"]}

    pipeline = wds.WebDataset(urls, shardshuffle=False, empty_check=False).map(transform)
    return pipeline.batched(batch_size, collation_fn=collate, partial=False)


def our_batches(root: Path, image_size: int, batch_size: int, tokenizer) -> Iterable:
    from unimedclip.data import UniMedCollator, load_unimed, unimed_dataloader

    dataset = load_unimed(str(root), weights={"xray": 1.0}, image_size=image_size)
    return unimed_dataloader(dataset, batch_size=batch_size, num_workers=0, collate_fn=UniMedCollator(tokenizer))


def measure(batches: Iterable) -> tuple[int, float, float]:
    """(samples, CPU seconds, wall seconds) for one pass over a pipeline built (and its imports done) beforehand."""
    cpu, wall = time.process_time(), time.perf_counter()
    samples = sum(len(batch["pixel_values"]) for batch in batches)
    return samples, time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=1536, help="synthetic samples to write and read")
    parser.add_argument("--shard-size", type=int, default=256, help="samples per shard")
    parser.add_argument("--short-side", type=int, default=512, help="short side of the pre-resized images")
    parser.add_argument("--image-size", type=int, default=224, help="training crop size")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="passes per pipeline, alternating; the best counts")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    tokenizer = make_tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        urls = write_shards(root, args.samples, args.shard_size, args.short_side)
        print(f"wrote {args.samples} samples in {len(urls)} shards in {time.perf_counter() - started:.1f} s")
        pipelines = {
            "webdataset (original steps)": lambda: baseline_batches(urls, args.image_size, args.batch_size, tokenizer),
            "load_unimed + UniMedCollator": lambda: our_batches(root, args.image_size, args.batch_size, tokenizer),
        }
        best = {name: 0.0 for name in pipelines}
        for _ in range(args.repeats):
            for name, make_batches in pipelines.items():
                samples, cpu, wall = measure(make_batches())
                best[name] = max(best[name], samples / cpu)
                print(f"{name:30s} {samples} samples  {samples / cpu:7.1f} samples/s per core  (wall {wall:.1f} s)")
    baseline, ours = best.values()
    print(f"\nbest at {args.image_size} px: baseline {baseline:.1f}, ours {ours:.1f} samples/s per core")
    print(f"ratio ours / baseline: {ours / baseline:.2f}x")


if __name__ == "__main__":
    main()
