"""Training-data throughput per CPU core: `load_unimed` + `UniMedCollator` against a plain webdataset pipeline doing
the original UniMed-CLIP steps, on the same synthetic shards.

Both run in one process (no workers) over shards of JPEGs pre-resized to a short side of 512 px, 40 % grayscale as
radiology sources are. Baseline, as the original training did: PIL decode to RGB, torchvision
RandomResizedCrop(scale 0.9-1, bicubic), RGB, uint8 tensor, captions cleaned and padded to 256 tokens, stacked. Ours:
decode, crop and resize before the RGB conversion of grayscale images, captions padded to the longest of the batch.
Throughput is samples per second of process CPU time (all threads), i.e. per core.

    python bench/bench_data.py [--samples 1536] [--image-size 224] [--batch-size 64]

With --loader-workers, the loader alone as train.py runs it instead: wall-clock samples/s with that many DataLoader
workers (`--decode-on-device`: also with the JPEGs decoded on `--device`), to set against the training step alone
(bench/bench_train.py); bench/gpu_check.sh compares the two. `--data DIR` keeps the shards and a tokenizer for
`train.py --data DIR --tokenizer DIR/tokenizer`.
"""

import argparse
import io
import json
import math
import random
import tarfile
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import yaml

WORDS = (
    "chest radiograph shows a right lower lobe opacity with small pleural effusion no pneumothorax heart size normal "
    "axial ct of the abdomen liver lesion hypodense mri brain t2 weighted signal fundus photograph optic disc cup "
    "retina haemorrhage histopathology slide tumour cells nuclei stained ultrasound thyroid nodule echogenic"
).split()


def write_shard(path: Path, indices: range, short_side: int) -> None:
    """One shard of samples `indices`, each drawn from a generator seeded with its shard's first index."""
    import numpy as np
    from PIL import Image, ImageFilter

    from unimedclip.data.records import make_record
    from unimedclip.data.sources import get_source

    rng = np.random.default_rng(indices.start)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for index in indices:
            long_side = int(short_side * rng.uniform(1.0, 1.5))
            size = (long_side, short_side) if index % 2 else (short_side, long_side)
            mode = "L" if index % 5 < 2 else "RGB"
            # Smooth noise compresses like a scan rather than like white noise.
            noise = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 1 if mode == "L" else 3), dtype=np.uint8)
            image = Image.fromarray(noise.squeeze(-1) if mode == "L" else noise, mode).resize(size)
            buffer = io.BytesIO()
            image.filter(ImageFilter.GaussianBlur(2)).save(buffer, "JPEG", quality=90)
            captions = [" ".join(rng.choice(WORDS, int(rng.integers(8, 60)))) for _ in range(10)]
            record = make_record(
                get_source("chexpert"), modality="xray", captions=captions, report=None, labels=[],
                path=f"{index}.jpg", resized_from=None,
            )  # fmt: skip
            for name, data in ((f"{index:08d}.image", buffer.getvalue()), (f"{index:08d}.json", json.dumps(record))):
                data = data.encode() if isinstance(data, str) else data
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def write_shards(root: Path, samples: int, shard_size: int, short_side: int) -> list[str]:
    """Shards in the UniMed layout (`<key>.image`, `<key>.json`) plus a card, so both pipelines read the same files;
    written by one process per CPU core."""
    paths = [root / "data" / "xray" / f"xray-{shard:06d}.tar" for shard in range(math.ceil(samples / shard_size))]
    ranges = [range(start, min(start + shard_size, samples)) for start in range(0, samples, shard_size)]
    with ProcessPoolExecutor() as pool:
        list(pool.map(write_shard, paths, ranges, [short_side] * len(paths)))
    card = {
        "configs": [{"config_name": "xray", "data_files": [{"split": "train", "path": "data/xray/*.tar"}]}],
        # The sample count lets `load_unimed` mix by size, as train.py does.
        "dataset_info": [
            {"config_name": "xray", "splits": [{"name": "train", "num_bytes": 0, "num_examples": samples}]}
        ],
    }
    (root / "README.md").write_text(f"---\n{yaml.safe_dump(card, sort_keys=False)}---\n")
    return [str(path) for path in paths]


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


def loader_throughput(
    root: Path, image_size: int, batch_size: int, tokenizer, workers: int, on_device: bool, device
) -> float:
    """The loader alone, as train.py builds it: wall-clock samples/s of one pass with `workers` DataLoader workers,
    counted from the first batch (worker start-up excluded), up to uint8 images on `device` (decoded there if
    `on_device`)."""
    import torch

    from unimedclip.data import UniMedCollator, load_unimed, unimed_dataloader
    from unimedclip.data.device_decode import DeviceDecodeCollator, DeviceDecodeStream, pixels_on_device

    dataset, collate_fn = load_unimed(str(root), image_size=image_size), UniMedCollator(tokenizer)
    if on_device:
        dataset, collate_fn = DeviceDecodeStream(dataset), DeviceDecodeCollator(collate_fn)
    loader = unimed_dataloader(dataset, batch_size, workers, collate_fn, pin_memory=device.type == "cuda")
    samples, started = 0, None
    for batch in loader:
        pixels_on_device(batch, image_size, device)
        if started is None:
            started = time.perf_counter()
        else:
            samples += len(batch["input_ids"])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return samples / (time.perf_counter() - started)


def loader_report(args: argparse.Namespace, root: Path, tokenizer) -> dict:
    import torch

    results = {}
    for workers in args.loader_workers:
        for on_device in (False, True) if args.decode_on_device else (False,):
            name = f"{workers} workers, {'device' if on_device else 'worker'} decoding"
            rate = loader_throughput(
                root, args.image_size, args.batch_size, tokenizer, workers, on_device, torch.device(args.device)
            )
            results[name] = {"workers": workers, "decode_on_device": on_device, "samples_per_s": rate}
            print(f"loader alone, {name}: {rate:.1f} samples/s")
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=1536, help="synthetic samples to write and read")
    parser.add_argument("--shard-size", type=int, default=256, help="samples per shard")
    parser.add_argument("--short-side", type=int, default=512, help="short side of the pre-resized images")
    parser.add_argument("--image-size", type=int, default=224, help="training crop size")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="passes per pipeline, alternating; the best counts")
    parser.add_argument("--data", type=Path, help="keep the shards (and a tokenizer) here; reused if present")
    parser.add_argument(
        "--loader-workers", type=int, nargs="+", help="measure the loader alone with these numbers of workers"
    )
    parser.add_argument("--decode-on-device", action="store_true", help="with --loader-workers: also the GPU path")
    parser.add_argument("--device", default="cpu", help="where --loader-workers delivers the images")
    parser.add_argument("--output", type=Path, help="JSON of the --loader-workers figures")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    import torch

    torch.set_num_threads(1)
    tokenizer = make_tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data or Path(tmp)
        if (root / "README.md").is_file():
            urls = sorted(str(path) for path in (root / "data" / "xray").glob("*.tar"))
        else:
            started = time.perf_counter()
            urls = write_shards(root, args.samples, args.shard_size, args.short_side)
            tokenizer.save_pretrained(root / "tokenizer")
            print(f"wrote {args.samples} samples in {len(urls)} shards in {time.perf_counter() - started:.1f} s")
        if args.loader_workers:
            results = loader_report(args, root, tokenizer)
            if args.output:
                args.output.parent.mkdir(parents=True, exist_ok=True)
                args.output.write_text(json.dumps({"device": args.device, "loader": results}, indent=2) + "\n")
            return
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
