"""Images/s of the fast (torchvision) image processor against the exact (PIL) one, and how far apart their pixels are.

    python bench/bench_processor.py [--images 256] [--batch-size 32] [--size 224]

Both preprocess the same generated images (grayscale and RGB photographs of several sizes, as radiographs and slides
come) in the same process. The largest difference is per normalised pixel over every image; results go to
bench/results/.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from modeling_unimedclip import UniMedCLIPImageProcessor, UniMedCLIPImageProcessorFast  # noqa: E402

SIZES = [(512, 512), (640, 480), (480, 640), (1024, 768)]


def make_images(count: int, seed: int = 0) -> list[Image.Image]:
    """Smooth structures plus noise, half grayscale (radiographs), half RGB (slides, fundus photographs)."""
    rng = np.random.default_rng(seed)
    images = []
    for index in range(count):
        width, height = SIZES[index % len(SIZES)]
        y, x = np.mgrid[0:height, 0:width] / max(width, height)
        base = 128 + 80 * np.sin(12 * x + rng.uniform(0, 6)) * np.cos(9 * y) + rng.normal(0, 12, (height, width))
        gray = np.clip(base, 0, 255).astype(np.uint8)
        if index % 2:
            images.append(Image.fromarray(gray, "L"))
        else:
            tint = np.stack([gray, np.clip(gray * 0.8, 0, 255), np.clip(255 - gray * 0.5, 0, 255)], axis=-1)
            images.append(Image.fromarray(tint.astype(np.uint8), "RGB"))
    return images


def images_per_second(processor, images: list, batch_size: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for offset in range(0, len(images), batch_size):
            processor(images[offset : offset + batch_size])
        times.append(time.perf_counter() - start)
    return len(images) / statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)

    images = make_images(args.images)
    exact, fast = UniMedCLIPImageProcessor(size=args.size), UniMedCLIPImageProcessorFast(size=args.size)
    difference = max(
        (fast(images[i : i + args.batch_size]).pixel_values - exact(images[i : i + args.batch_size]).pixel_values)
        .abs()
        .max()
        .item()
        for i in range(0, len(images), args.batch_size)
    )
    report = {
        "images": args.images,
        "batch_size": args.batch_size,
        "size": args.size,
        "threads": torch.get_num_threads(),
        "exact_images_per_s": images_per_second(exact, images, args.batch_size, args.repeats),
        "fast_images_per_s": images_per_second(fast, images, args.batch_size, args.repeats),
        "max_abs_difference": difference,
    }
    report["speedup"] = report["fast_images_per_s"] / report["exact_images_per_s"]
    print(
        f"exact {report['exact_images_per_s']:.1f} images/s, fast {report['fast_images_per_s']:.1f} images/s "
        f"({report['speedup']:.2f}x); largest difference {difference:.4f} per normalised pixel"
    )
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / f"processor_{args.size}.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
