"""Deterministic, resumable WebDataset shard writer for UniMed sources.

Layout: `data/<modality>/<source>-<i>-of-<n>.tar`, one sample = `<key>.image` (the image bytes) + `<key>.json` (the
record, `unimedclip.data.records`). Keys are `<source>-<index in annotation order>`. Samples are spread over a
multiple of `shard_multiple` shards per (source, modality): never padded or duplicated; shards hold at most
`shard_size` samples and differ by at most one before skips, so every modality config and `all` split evenly over
ranks x workers.

A shard is written to `<name>.partial`, fsynced and renamed, then recorded (bytes, sha256, skips) in
`manifest.json`. A re-run recomputes the same plan, keeps the shards whose file matches the manifest and rewrites the
others byte for byte, so an interrupted build resumes to the result of an uninterrupted one.
"""

import io
import json
import math
import os
import random
import tarfile
from collections import Counter
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from multiprocessing import Pool
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from dataset_scripts.images import SkippedSample, SourceImages
from dataset_scripts.readers import RawSample
from unimedclip.data.manifest import (
    PARTIAL_SUFFIX,
    file_sha256,
    load_manifest,
    record_own_source,
    save_manifest,
    shard_is_complete,
)
from unimedclip.data.records import IMAGE_FIELD, RECORD_FIELD, make_record
from unimedclip.data.sources import SOURCES, Source
from unimedclip.modalities import DATA_MODALITIES

UNREADABLE_IMAGE, NO_CAPTION = "unreadable image", "no caption"
JPEG_QUALITY = 95


@dataclass(frozen=True)
class BuildSettings:
    shard_size: int = 1000
    shard_multiple: int = 16
    resize_short_side: int | None = None

    def __post_init__(self) -> None:
        if self.shard_size < 1 or self.shard_multiple < 1:
            raise ValueError(f"shard_size and shard_multiple must be positive, got {self}.")
        if self.resize_short_side is not None and self.resize_short_side < 1:
            raise ValueError(f"resize_short_side must be positive, got {self.resize_short_side}.")


@dataclass
class ShardTask:
    path: str  # relative to the output folder
    source: Source
    modality: str
    images: SourceImages
    samples: list[tuple[str, RawSample]]  # (key, sample)
    resize_short_side: int | None


def plan_shards(
    source: Source, images: SourceImages, samples: list[RawSample], settings: BuildSettings
) -> list[ShardTask]:
    keyed = [(f"{source.id}-{index:09d}", sample) for index, sample in enumerate(samples)]
    tasks = []
    for modality in DATA_MODALITIES:
        group = [(key, sample) for key, sample in keyed if sample.modality == modality]
        if not group:
            continue
        if len(group) < settings.shard_multiple:
            raise ValueError(
                f"{source.id} has {len(group)} {modality} samples, fewer than --shard-multiple "
                f"{settings.shard_multiple}: lower the multiple so no shard is empty."
            )
        # Annotation files list a patient's or a paper's images together, and the loader reads shards without a
        # shuffle buffer (so that resume is exact): shuffle once here, with a fixed seed so rebuilds are identical.
        random.Random(f"{source.id}/{modality}").shuffle(group)
        count = settings.shard_multiple * math.ceil(len(group) / (settings.shard_size * settings.shard_multiple))
        for index in range(count):
            shard_samples = group[index * len(group) // count : (index + 1) * len(group) // count]
            path = f"data/{modality}/{source.id}-{index:05d}-of-{count:05d}.tar"
            tasks.append(ShardTask(path, source, modality, images, shard_samples, settings.resize_short_side))
    return tasks


def encode_image(data: bytes, resize_short_side: int | None) -> tuple[bytes, list[int] | None]:
    """The image bytes, untouched unless the short side exceeds `resize_short_side`: then resized and re-encoded
    (JPEG stays JPEG, everything else becomes lossless PNG); returns the original size when resized."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # a full decode: truncated files must fail here, not in the training loop
            width, height = image.size
            if resize_short_side is None or min(width, height) <= resize_short_side:
                return data, None
            scale = resize_short_side / min(width, height)
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            resized = image.resize(size, Image.Resampling.LANCZOS)
            buffer = io.BytesIO()
            if image.format == "JPEG":
                resized.save(buffer, "JPEG", quality=JPEG_QUALITY)
            else:
                resized.save(buffer, "PNG")
            return buffer.getvalue(), [width, height]
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise SkippedSample(UNREADABLE_IMAGE) from None


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)  # mtime, owner and mode stay at their fixed defaults: reproducible bytes
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shard(output: Path, task: ShardTask) -> dict:
    """Write one shard atomically; returns its manifest entry."""
    final = output / task.path
    partial = final.with_name(final.name + PARTIAL_SUFFIX)
    final.parent.mkdir(parents=True, exist_ok=True)
    skipped: Counter[str] = Counter()
    written = 0
    with partial.open("wb") as file:
        with tarfile.open(fileobj=file, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for key, sample in task.samples:
                try:
                    if not sample.captions:
                        raise SkippedSample(NO_CAPTION)
                    image, resized_from = encode_image(task.images.read(sample.path), task.resize_short_side)
                except SkippedSample as skip:
                    skipped[skip.reason] += 1
                    continue
                record = make_record(
                    task.source,
                    modality=sample.modality,
                    captions=sample.captions,
                    report=sample.report,
                    labels=sample.labels,
                    path=sample.path,
                    resized_from=resized_from,
                )
                record = json.dumps(record, ensure_ascii=False)
                _add_member(tar, f"{key}.{IMAGE_FIELD}", image)
                _add_member(tar, f"{key}.{RECORD_FIELD}", record.encode("utf-8"))
                written += 1
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, final)
    return {
        "path": task.path,
        "source": task.source.id,
        "modality": task.modality,
        "samples": written,
        "bytes": final.stat().st_size,
        "sha256": file_sha256(final),
        "skipped": dict(sorted(skipped.items())),
    }


def _write_shard_star(args: tuple[Path, ShardTask]) -> dict:
    return write_shard(*args)


def build_source(
    source: Source,
    samples: Iterable[RawSample],
    images: SourceImages,
    output: Path,
    settings: BuildSettings = BuildSettings(),
    num_proc: int = 1,
) -> dict:
    """Build (or resume building) one source's shards into `output`; returns the source's manifest summary.

    `samples` come from the source's reader, in annotation order; `images` reads their image bytes."""
    samples = list(tqdm(samples, desc=f"{source.id}: reading annotations", unit=" rows"))
    if not samples:
        raise ValueError(f"The {source.id} annotations list no sample.")
    tasks = plan_shards(source, images, samples, settings)
    output.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(output)
    previous = manifest["settings"].get(source.id)
    if previous is not None and previous != asdict(settings):
        raise ValueError(
            f"{output} holds {source.id} shards built with {previous}, not {asdict(settings)}; "
            "build into another folder or delete that source's shards and its manifest entries first."
        )
    planned = {task.path for task in tasks}
    strays = sorted(
        str(path.relative_to(output))
        for path in output.glob(f"data/*/{source.id}-*.tar")
        if str(path.relative_to(output)) not in planned
    )
    if strays:
        raise ValueError(
            f"{output} holds {source.id} shards outside this build's plan: {strays[:3]}... Remove them first."
        )
    for partial in output.glob(f"data/*/{source.id}-*.tar{PARTIAL_SUFFIX}"):
        partial.unlink()  # our own interrupted writes

    manifest["settings"][source.id] = asdict(settings)
    if source.id not in SOURCES:
        record_own_source(manifest, source)
    entries = {entry["path"]: entry for entry in manifest["shards"]}
    todo = [
        task
        for task in tqdm(tasks, desc=f"{source.id}: verifying existing shards", unit=" shards")
        if not shard_is_complete(output, entries.get(task.path))
    ]
    save_manifest(output, manifest)
    with ExitStack() as stack:
        parallel_map = stack.enter_context(Pool(num_proc)).imap_unordered if num_proc > 1 else map
        results = parallel_map(_write_shard_star, [(output, task) for task in todo])
        for entry in tqdm(results, total=len(todo), desc=f"{source.id}: writing shards", unit=" shards"):
            entries[entry["path"]] = entry
            manifest["shards"] = list(entries.values())
            save_manifest(output, manifest)
    return manifest["sources"][source.id]
