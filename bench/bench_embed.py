"""Images/s of `unimedclip embed` against a plain loop over the full model, on the same image folder.

    python bench/bench_embed.py [--variant b16] [--images 96] [--batch-size 16] [--num-workers 1]

The model has the variant's shapes and random weights (nothing is downloaded). `unimedclip embed` runs whole, as a user
runs it: only the image tower loaded, images decoded by DataLoader workers, batched, saved as a dataset with its
metadata. The reference loads the full model with AutoModel and embeds one image at a time with
`get_image_features`, as one would without the command. Both times include loading the model; the embeddings must
agree. Results go to bench/results/.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from bench_processor import make_images
from transformers import AutoImageProcessor, AutoModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from modeling_unimedclip import UniMedCLIPImageProcessor, UniMedCLIPModel  # noqa: E402
from unimedclip.inference import embedding  # noqa: E402
from unimedclip.variants import VARIANTS  # noqa: E402


@torch.no_grad()
def plain_loop(model_dir: Path, paths: list[Path]) -> np.ndarray:
    model = AutoModel.from_pretrained(model_dir).eval()
    image_processor = AutoImageProcessor.from_pretrained(model_dir)
    embeddings = []
    for path in paths:
        features = model.get_image_features(pixel_values=image_processor(path).pixel_values).pooler_output
        embeddings.append(F.normalize(features, dim=-1)[0].numpy())
    return np.stack(embeddings)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="b16")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    datasets.disable_progress_bars()

    with tempfile.TemporaryDirectory() as temporary:
        temporary = Path(temporary)
        config = VARIANTS[args.variant].config()
        model = UniMedCLIPModel(config)
        model.save_pretrained(temporary / "model")
        UniMedCLIPImageProcessor(size=config.vision_config.image_size).save_pretrained(temporary / "model")
        parameters = {
            "full_model": sum(p.numel() for p in model.parameters()),
            "image_tower": sum(
                p.numel() for p in [*model.vision_model.parameters(), *model.visual_projection.parameters()]
            ),
        }
        del model
        (temporary / "images").mkdir()
        paths = []
        for index, image in enumerate(make_images(args.images)):
            paths.append(temporary / "images" / f"{index:05d}.png")
            image.save(paths[-1])

        start = time.perf_counter()
        reference = plain_loop(temporary / "model", paths)
        plain_seconds = time.perf_counter() - start

        start = time.perf_counter()
        embedding.main(
            [
                "--image-folder", str(temporary / "images"), "--model", str(temporary / "model"),
                "--output", str(temporary / "embeddings"), "--batch-size", str(args.batch_size),
                "--num-workers", str(args.num_workers),
            ]
        )  # fmt: skip
        command_seconds = time.perf_counter() - start
        ours = np.asarray(datasets.load_from_disk(str(temporary / "embeddings"))["embedding"])

    report = {
        "variant": args.variant,
        "images": args.images,
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "threads": torch.get_num_threads(),
        "parameters_loaded": parameters,
        "plain_loop_images_per_s": args.images / plain_seconds,
        "embed_images_per_s": args.images / command_seconds,
        "max_abs_difference": float(np.abs(ours - reference).max()),
    }
    report["speedup"] = report["embed_images_per_s"] / report["plain_loop_images_per_s"]
    print(
        f"plain loop over the full model {report['plain_loop_images_per_s']:.2f} images/s, unimedclip embed "
        f"{report['embed_images_per_s']:.2f} images/s ({report['speedup']:.2f}x), loading "
        f"{parameters['image_tower'] / 1e6:.0f}M of {parameters['full_model'] / 1e6:.0f}M parameters; "
        f"largest embedding difference {report['max_abs_difference']:.1e}"
    )
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / f"embed_{args.variant}.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
