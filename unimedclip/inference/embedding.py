"""`unimedclip embed`: embed an image collection with the image tower, for `unimedclip search` and the Space.

    unimedclip embed --image-folder DIR --model ORG/unimed-clip-vit-b16 --output embeddings
    unimedclip embed --csv images.csv --path-column path --model M --output embeddings
    unimedclip embed --hf-dataset NAME --split train --image-column image --model M --output embeddings \
        --push-to-hub ORG/NAME-embeddings
    accelerate launch --multi_gpu --num_processes 4 -m unimedclip.inference.embedding --image-folder DIR --model M \
        --output OUT

Writes a `datasets` dataset (`save_to_disk`) with one row per readable image: its reference, `path` (relative to the
collection's root: the folder, or the deepest folder holding every image a CSV names) or `row` (its index in the
Hugging Face dataset's split), and its `embedding`, L2-normalised, in float32. `unimedclip_embeddings.json` next to it
records the model, the source and the unreadable images. Only the image tower is loaded.

Images are embedded in chunks of --chunk-size; each finished chunk is saved under OUTPUT.partial/, so a rerun with the
same arguments continues where an interrupted one stopped. Under `accelerate launch` the pending chunks are shared
between the processes (one per GPU), and the first process assembles the result. Image folders take PNG, JPEG, TIFF
(16-bit too), BMP and DICOM files (with or without the .dcm suffix; a multi-frame DICOM contributes its first frame,
in the file's own window); unreadable images are skipped, counted and listed.
"""

import argparse
import csv
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoImageProcessor

from modeling_unimedclip import UniMedCLIPConfig, UniMedCLIPVisionModelWithProjection
from modeling_unimedclip.dicom_unimedclip import is_dicom
from modeling_unimedclip.image_processing_unimedclip import IMAGE_SUFFIXES

from .predict import MODEL_ENVIRONMENT_VARIABLE
from .zero_shot import project_images

METADATA_FILE = "unimedclip_embeddings.json"
EMBEDDING_COLUMN = "embedding"
DTYPES = ("float32", "bfloat16", "float16")


class ImageSource:
    """Where a collection's images are, as the metadata records it, and each image by its reference.

    `description` is `{"kind": "folder", "root": DIR}`, `{"kind": "csv", "csv": FILE, "root": DIR, ...}` or
    `{"kind": "hub", "dataset": NAME, "split": SPLIT, "image_column": COLUMN}`. File references are paths relative to
    the root, and opening one that resolves outside the root is refused, so a collection can name no other file.
    """

    def __init__(self, description: dict, root: str | Path | None = None):
        self.description = description
        self.kind = description["kind"]
        if self.kind not in ("folder", "csv", "hub"):
            raise ValueError(f"Unknown image source kind {self.kind!r}: expected folder, csv or hub.")
        self.root = Path(root or description["root"]).resolve() if self.kind != "hub" else None

    @property
    def reference_column(self) -> str:
        return "row" if self.kind == "hub" else "path"

    @cached_property
    def rows(self):
        """The Hugging Face dataset split of a `hub` source, loaded on first use."""
        import datasets

        name, column = self.description["dataset"], self.description["image_column"]
        rows = datasets.load_dataset(name, split=self.description["split"])
        if column not in rows.column_names:
            raise ValueError(f"{name} has no column {column!r}; columns: {rows.column_names}.")
        if not isinstance(rows.features[column], datasets.Image):
            raise ValueError(f"{name}: column {column!r} holds {rows.features[column]}, not images.")
        return rows

    def image(self, reference: str | int):
        """The image a reference names: a path (inside the root) or a decoded image of the dataset."""
        if self.kind == "hub":
            return self.rows[int(reference)][self.description["image_column"]]
        path = (self.root / reference).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"{reference!r} points outside the collection's root {self.root}.")
        return path


def folder_source(root: Path) -> tuple[ImageSource, list[str]]:
    """Every image under `root` (recursively, in sorted order) and the source they form."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise ValueError(f"Image folder {root} does not exist.")
    files = sorted(
        path
        for path in root.rglob("*")
        if path.is_file()
        and not path.name.startswith(".")
        and (path.suffix.lower() in IMAGE_SUFFIXES or is_dicom(path))
    )
    if not files:
        raise ValueError(f"{root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))} or DICOM files).")
    return ImageSource({"kind": "folder", "root": str(root)}), [path.relative_to(root).as_posix() for path in files]


def csv_source(table: Path, path_column: str = "path") -> tuple[ImageSource, list[str]]:
    """The images a CSV with a header names in `path_column` (relative to the CSV's folder, or absolute). The root is
    the deepest folder holding them all, so that every reference stays inside it."""
    table = Path(table).resolve()
    if not table.is_file():
        raise ValueError(f"CSV file {table} does not exist.")
    with open(table, newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        if path_column not in (reader.fieldnames or []):
            raise ValueError(f"{table} has no column {path_column!r}; columns: {reader.fieldnames}.")
        paths = [(table.parent / row[path_column]).resolve() for row in reader]
    if not paths:
        raise ValueError(f"{table} names no images.")
    root = Path(os.path.commonpath([str(path.parent) for path in paths]))
    description = {"kind": "csv", "csv": str(table), "path_column": path_column, "root": str(root)}
    return ImageSource(description), [path.relative_to(root).as_posix() for path in paths]


def hub_source(dataset: str, split: str = "train", image_column: str = "image") -> tuple[ImageSource, list[int]]:
    """Every row of a Hugging Face dataset split (a Hub id or a folder `datasets.load_dataset` reads)."""
    source = ImageSource({"kind": "hub", "dataset": dataset, "split": split, "image_column": image_column})
    if not len(source.rows):
        raise ValueError(f"{dataset} has no rows in its {split!r} split.")
    return source, list(range(len(source.rows)))


class ReferencedImages(torch.utils.data.Dataset):
    """Preprocessed images by reference, decoded lazily in DataLoader workers; an unreadable image yields `None`.

    Not the evaluation's `ImageDataset`: that holds labelled samples, while a collection is read by reference (a Hub
    dataset row is decoded only when its turn comes) and the reference must come back with the embedding."""

    def __init__(self, source: ImageSource, references: Sequence, image_processor):
        self.source, self.references, self.image_processor = source, references, image_processor

    def __len__(self) -> int:
        return len(self.references)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, str | int, str | None]:
        """(pixel values or None, the reference, why the image is unreadable or None)."""
        reference = self.references[index]
        try:
            image = self.source.image(reference)
            return self.image_processor(image, return_tensors="pt").pixel_values[0], reference, None
        except (ValueError, TypeError, OSError, ImportError) as error:
            return None, reference, str(error)


def _collate(batch: list) -> tuple[torch.Tensor | None, list, list[dict]]:
    """Readable pixel values stacked, their references, and the unreadable images with the reason."""
    readable = [(pixels, reference) for pixels, reference, _ in batch if pixels is not None]
    unreadable = [{"reference": reference, "error": error} for pixels, reference, error in batch if pixels is None]
    pixel_values = torch.stack([pixels for pixels, _ in readable]) if readable else None
    return pixel_values, [reference for _, reference in readable], unreadable


@torch.no_grad()
def embed_images(
    model,
    image_processor,
    source: ImageSource,
    references: Sequence,
    *,
    batch_size: int = 32,
    num_workers: int = 0,
    progress: tqdm | None = None,
) -> tuple[list, np.ndarray, list]:
    """(references embedded, their normalised float32 embeddings, unreadable images as {reference, error})."""
    loader = torch.utils.data.DataLoader(
        ReferencedImages(source, references, image_processor),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate,
    )
    kept, embeddings, unreadable = [], [], []
    for pixel_values, batch_references, failed in loader:
        unreadable += failed
        if pixel_values is not None:
            features = project_images(model, pixel_values.to(model.device, model.dtype))
            embeddings.append(F.normalize(features.float(), dim=-1).cpu().numpy())
            kept += batch_references
        if progress is not None:
            progress.update(len(batch_references) + len(failed))
    dimension = model.config.projection_dim
    return kept, np.concatenate(embeddings) if embeddings else np.empty((0, dimension), np.float32), unreadable


def embeddings_dataset(source: ImageSource, references: list, embeddings: np.ndarray):
    """The `datasets.Dataset` of a collection's embeddings: a reference column and the embedding column."""
    import datasets

    reference_feature = datasets.Value("int64" if source.kind == "hub" else "string")
    features = datasets.Features(
        {
            source.reference_column: reference_feature,
            EMBEDDING_COLUMN: datasets.List(datasets.Value("float32"), length=embeddings.shape[1]),
        }
    )
    return datasets.Dataset.from_dict(
        {source.reference_column: references, EMBEDDING_COLUMN: embeddings}, features=features
    )


def model_reference(model: str) -> str:
    """How the metadata names a model: a local directory by its absolute path, anything else as given (a Hub id)."""
    return str(Path(model).resolve()) if Path(model).is_dir() else model


def collection_metadata(
    model: str, revision: str | None, source: ImageSource, dimension: int, images: int = 0, unreadable: tuple = ()
) -> dict:
    """What `unimedclip_embeddings.json` records: the model, the source, and the images embedded and unreadable."""
    return {
        "model": model_reference(model),
        "revision": revision,
        "dimension": dimension,
        "source": source.description,
        "images": images,
        "unreadable": list(unreadable),
    }


def load_tower(tower: type, model: str, revision: str | None = None, dtype: str = "float32"):
    """One tower of a UniMed-CLIP (`UniMedCLIPVisionModelWithProjection` or `UniMedCLIPTextModelWithProjection`), in
    eval mode, reading only its weights; any other kind of model is refused rather than loaded with random weights."""
    config = AutoConfig.from_pretrained(model, revision=revision)
    if config.model_type != UniMedCLIPConfig.model_type:
        raise ValueError(
            f"{model} is a {config.model_type!r} model, not UniMed-CLIP ({UniMedCLIPConfig.model_type!r})."
        )
    return tower.from_pretrained(model, revision=revision, dtype=getattr(torch, dtype)).eval()


def parser(prog: str | None = None) -> argparse.ArgumentParser:
    embed = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sources = embed.add_argument_group("the collection (one of)").add_mutually_exclusive_group(required=True)
    sources.add_argument("--image-folder", type=Path, help="A folder of images, searched recursively.")
    sources.add_argument("--csv", type=Path, help="A CSV with a header naming one image per row.")
    sources.add_argument("--hf-dataset", help="A Hugging Face dataset: Hub id or a folder load_dataset reads.")
    embed.add_argument("--path-column", default="path", help="--csv: the column of image paths (default: path).")
    embed.add_argument("--split", default="train", help="--hf-dataset: the split (default: train).")
    embed.add_argument("--image-column", default="image", help="--hf-dataset: the image column (default: image).")
    embed.add_argument(
        "--model",
        default=os.environ.get(MODEL_ENVIRONMENT_VARIABLE),
        help=f"UniMed-CLIP directory or Hub id (default: ${MODEL_ENVIRONMENT_VARIABLE}).",
    )
    embed.add_argument("--revision", help="Hub revision of --model.")
    embed.add_argument("--output", type=Path, required=True, help="Directory for the embeddings dataset.")
    embed.add_argument("--push-to-hub", metavar="REPO_ID", help="Also upload the dataset to this Hub repository.")
    embed.add_argument("--private", action="store_true", help="Create the Hub repository private.")
    embed.add_argument("--batch-size", type=int, default=64)
    embed.add_argument(
        "--num-workers", type=int, default=min(4, os.cpu_count() or 1), help="DataLoader workers decoding images."
    )
    embed.add_argument("--chunk-size", type=int, default=4096, help="Images per saved chunk (the unit of resuming).")
    embed.add_argument("--dtype", choices=DTYPES, default="float32", help="Weights' dtype (bfloat16 on GPUs).")
    return embed


def collection(args: argparse.Namespace) -> tuple[ImageSource, list]:
    if args.image_folder is not None:
        return folder_source(args.image_folder)
    if args.csv is not None:
        return csv_source(args.csv, args.path_column)
    return hub_source(args.hf_dataset, args.split, args.image_column)


def run_plan(args: argparse.Namespace, source: ImageSource, references: list) -> dict:
    """What a run embeds; resuming is allowed only into the partial output of the same plan."""
    fingerprint = hashlib.sha256(json.dumps(references).encode()).hexdigest()
    return {
        "model": model_reference(args.model),
        "revision": args.revision,
        "dtype": args.dtype,
        "source": source.description,
        "images": len(references),
        "references_sha256": fingerprint,
        "chunk_size": args.chunk_size,
    }


def check_or_write_plan(partial: Path, plan: dict, accelerator: Accelerator) -> None:
    plan_file = partial / "plan.json"
    if accelerator.is_main_process and not plan_file.exists():
        partial.mkdir(parents=True, exist_ok=True)
        plan_file.write_text(json.dumps(plan, indent=2) + "\n")
    accelerator.wait_for_everyone()
    recorded = json.loads(plan_file.read_text())
    if recorded != plan:
        changed = sorted(key for key in plan if recorded.get(key) != plan[key])
        raise SystemExit(
            f"{partial} holds an interrupted run with other settings ({', '.join(changed)} differ); rerun with the "
            "same arguments to continue it, or delete it to start again."
        )


def embed_chunk(index: int, partial: Path, model, image_processor, source, references, args, progress) -> None:
    """Embed one chunk and save it atomically as `chunk-NNNNN` (a dataset, plus its unreadable references)."""
    kept, embeddings, unreadable = embed_images(
        model,
        image_processor,
        source,
        references,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        progress=progress,
    )
    temporary = partial / f".chunk-{index:05d}.tmp"
    shutil.rmtree(temporary, ignore_errors=True)
    embeddings_dataset(source, kept, embeddings).save_to_disk(temporary)
    (temporary / "unreadable.json").write_text(json.dumps(unreadable))
    temporary.rename(partial / f"chunk-{index:05d}")


def assemble(partial: Path, chunks: int, output: Path, metadata: dict) -> tuple[int, list]:
    """Concatenate the chunks in order, write the dataset and its metadata (with the images embedded and the
    unreadable ones) next to them, move the result to `output`, and remove the partial folder; returns (images
    embedded, unreadable images). Moving the finished folder keeps `output` from ever holding half a result."""
    import datasets

    parts = [partial / f"chunk-{index:05d}" for index in range(chunks)]
    unreadable = [failure for part in parts for failure in json.loads((part / "unreadable.json").read_text())]
    embeddings = datasets.concatenate_datasets([datasets.load_from_disk(str(part)) for part in parts])
    result = partial / "result"
    shutil.rmtree(result, ignore_errors=True)
    embeddings.save_to_disk(str(result))
    metadata = {**metadata, "images": len(embeddings), "unreadable": unreadable}
    (result / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    result.replace(output)
    shutil.rmtree(partial)
    return len(embeddings), unreadable


def push_to_hub(output: Path, repo_id: str, *, private: bool = False, api=None) -> None:
    """Upload the dataset with `datasets`' `push_to_hub` (Parquet and a dataset card), then its metadata file."""
    import datasets
    from huggingface_hub import HfApi

    datasets.load_from_disk(str(output)).push_to_hub(repo_id, private=private)
    (api or HfApi()).upload_file(
        path_or_fileobj=str(output / METADATA_FILE), path_in_repo=METADATA_FILE, repo_id=repo_id, repo_type="dataset"
    )


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    import datasets

    args = parser(prog).parse_args(argv)
    if args.model is None:
        raise SystemExit(f"unimedclip embed: pass --model DIR_OR_REPO or set ${MODEL_ENVIRONMENT_VARIABLE}.")
    if args.chunk_size < 1 or args.batch_size < 1:
        raise SystemExit("unimedclip embed: --chunk-size and --batch-size must be positive.")
    output = args.output.resolve()
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise SystemExit(f"unimedclip embed: {output} exists and is not empty; choose another --output.")
    partial = output.with_name(output.name + ".partial")
    try:
        source, references = collection(args)
        model = load_tower(UniMedCLIPVisionModelWithProjection, args.model, args.revision, args.dtype)
        image_processor = AutoImageProcessor.from_pretrained(args.model, revision=args.revision)
    except (ValueError, OSError) as error:
        raise SystemExit(f"unimedclip embed: {error}") from None

    datasets.disable_progress_bars()  # one progress bar, over images, rather than one per saved chunk
    accelerator = Accelerator()
    model = model.to(accelerator.device)
    check_or_write_plan(partial, run_plan(args, source, references), accelerator)
    chunks = [references[start : start + args.chunk_size] for start in range(0, len(references), args.chunk_size)]
    pending = [index for index in range(len(chunks)) if not (partial / f"chunk-{index:05d}").is_dir()]
    if len(pending) < len(chunks) and accelerator.is_main_process:
        print(f"Resuming: {len(chunks) - len(pending)} of {len(chunks)} chunks are done.", file=sys.stderr)
    with accelerator.split_between_processes(pending) as mine:
        description = "embedding"
        if accelerator.num_processes > 1:
            description += f" (process {accelerator.process_index + 1} of {accelerator.num_processes})"
        total = sum(len(chunks[index]) for index in mine)
        with tqdm(
            total=total, desc=description, unit="img", disable=not accelerator.is_local_main_process
        ) as progress:
            for index in mine:
                embed_chunk(index, partial, model, image_processor, source, chunks[index], args, progress)
    accelerator.wait_for_everyone()
    # Ends the process group; one left alive at exit can abort a rank ("terminate called without an active exception").
    accelerator.end_training()
    if not accelerator.is_main_process:
        return 0

    metadata = collection_metadata(args.model, args.revision, source, model.config.projection_dim)
    images, unreadable = assemble(partial, len(chunks), output, metadata)
    print(f"Embedded {images} of {len(references)} images into {output}.")
    if unreadable:
        print(
            f"{len(unreadable)} unreadable image(s) skipped, listed in {METADATA_FILE}; for example:", file=sys.stderr
        )
        for failure in unreadable[:5]:
            print(f"  {failure['reference']}: {failure['error']}", file=sys.stderr)
    if args.push_to_hub:
        push_to_hub(output, args.push_to_hub, private=args.private)
        print(f"Uploaded to https://huggingface.co/datasets/{args.push_to_hub}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
