"""Deterministic, resumable WebDataset shard writer for the UniMed sources.

Layout: `data/<modality>/<source>-<i>-of-<n>.tar`, one sample = `<key>.image` (the image bytes) + `<key>.json` (the
record). Keys are `<source>-<index in annotation order>`. Samples are spread over a multiple of `shard_multiple`
shards per (source, modality): never padded or duplicated; shards hold at most `shard_size` samples and differ by at
most one before skips, so every modality config and `all` split evenly over ranks x workers.

A shard is written to `<name>.partial`, fsynced and renamed, then recorded (bytes, sha256, skips) in
`manifest.json`. A re-run recomputes the same plan, keeps the shards whose file matches the manifest and rewrites the
others byte for byte, so an interrupted build resumes to the result of an uninterrupted one.
"""

import hashlib
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

from dataset_scripts.readers import READERS, RawSample
from modeling_unimedclip.unimed_sources import IMAGE_FIELD, MODALITIES, RECORD_FIELD, get_source

MANIFEST = "manifest.json"
PARTIAL_SUFFIX = ".partial"
MISSING_IMAGE, UNREADABLE_IMAGE, NO_CAPTION = "missing image", "unreadable image", "no caption"
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
    source: str
    modality: str
    root: Path
    samples: list[tuple[str, RawSample]]  # (key, sample)
    resize_short_side: int | None


class SkippedSample(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def plan_shards(source: str, root: Path, samples: list[RawSample], settings: BuildSettings) -> list[ShardTask]:
    keyed = [(f"{source}-{index:09d}", sample) for index, sample in enumerate(samples)]
    tasks = []
    for modality in MODALITIES:
        group = [(key, sample) for key, sample in keyed if sample.modality == modality]
        if not group:
            continue
        if len(group) < settings.shard_multiple:
            raise ValueError(
                f"{source} has {len(group)} {modality} samples, fewer than --shard-multiple "
                f"{settings.shard_multiple}: lower the multiple so no shard is empty."
            )
        # Annotation files list a patient's or a paper's images together, and the loader reads shards without a
        # shuffle buffer (so that resume is exact): shuffle once here, with a fixed seed so rebuilds are identical.
        random.Random(f"{source}/{modality}").shuffle(group)
        count = settings.shard_multiple * math.ceil(len(group) / (settings.shard_size * settings.shard_multiple))
        for index in range(count):
            shard_samples = group[index * len(group) // count : (index + 1) * len(group) // count]
            path = f"data/{modality}/{source}-{index:05d}-of-{count:05d}.tar"
            tasks.append(ShardTask(path, source, modality, root, shard_samples, settings.resize_short_side))
    return tasks


def encode_image(path: Path, resize_short_side: int | None) -> tuple[bytes, list[int] | None]:
    """The image bytes, untouched unless the short side exceeds `resize_short_side`: then resized and re-encoded
    (JPEG stays JPEG, everything else becomes lossless PNG); returns the original size when resized."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SkippedSample(MISSING_IMAGE) from None
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


def sample_record(sample: RawSample, resized_from: list[int] | None) -> dict:
    source = get_source(sample.source)
    return {
        "source": sample.source,
        "modality": sample.modality,
        "captions": sample.captions,
        "report": sample.report,
        "labels": sample.labels,
        "license": source.license_class,
        "path": sample.path,
        "resized_from": resized_from,
    }


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)  # mtime, owner and mode stay at their fixed defaults: reproducible bytes
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
                    image, resized_from = encode_image(task.root / sample.path, task.resize_short_side)
                except SkippedSample as skip:
                    skipped[skip.reason] += 1
                    continue
                record = json.dumps(sample_record(sample, resized_from), ensure_ascii=False)
                _add_member(tar, f"{key}.{IMAGE_FIELD}", image)
                _add_member(tar, f"{key}.{RECORD_FIELD}", record.encode("utf-8"))
                written += 1
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, final)
    return {
        "path": task.path,
        "source": task.source,
        "modality": task.modality,
        "samples": written,
        "bytes": final.stat().st_size,
        "sha256": file_sha256(final),
        "skipped": dict(sorted(skipped.items())),
    }


def _write_shard_star(args: tuple[Path, ShardTask]) -> dict:
    return write_shard(*args)


def load_manifest(output: Path) -> dict:
    path = output / MANIFEST
    if not path.exists():
        return {"format": "webdataset", "image_field": IMAGE_FIELD, "settings": {}, "sources": {}, "shards": []}
    return json.loads(path.read_text(encoding="utf-8"))


def save_manifest(output: Path, manifest: dict) -> None:
    """Sorted and summarized, written atomically: the same shards give the same bytes."""
    manifest["shards"] = sorted(manifest["shards"], key=lambda entry: entry["path"])
    manifest["settings"] = dict(sorted(manifest["settings"].items()))
    manifest["sources"] = summarize_sources(manifest["shards"])
    path = output / MANIFEST
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    partial.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(partial, path)


def summarize_sources(shards: Iterable[dict]) -> dict:
    sources: dict[str, dict] = {}
    for entry in shards:
        summary = sources.setdefault(
            entry["source"], {"samples": 0, "shards": 0, "bytes": 0, "modalities": {}, "skipped": {}}
        )
        summary["samples"] += entry["samples"]
        summary["shards"] += 1
        summary["bytes"] += entry["bytes"]
        summary["modalities"][entry["modality"]] = summary["modalities"].get(entry["modality"], 0) + entry["samples"]
        for reason, count in entry["skipped"].items():
            summary["skipped"][reason] = summary["skipped"].get(reason, 0) + count
    return dict(sorted(sources.items()))


def shard_is_complete(output: Path, entry: dict | None) -> bool:
    if entry is None:
        return False
    path = output / entry["path"]
    return path.is_file() and path.stat().st_size == entry["bytes"] and file_sha256(path) == entry["sha256"]


def build_source(
    source: str,
    root: Path,
    annotations: Path,
    output: Path,
    settings: BuildSettings = BuildSettings(),
    num_proc: int = 1,
) -> dict:
    """Build (or resume building) one source's shards into `output`; returns the source's manifest summary."""
    if not root.is_dir():
        raise NotADirectoryError(f"Raw {source} folder not found: {root}.")
    samples = list(tqdm(READERS[source](annotations), desc=f"{source}: reading annotations", unit=" rows"))
    if not samples:
        raise ValueError(f"The {source} annotations at {annotations} list no sample.")
    tasks = plan_shards(source, root, samples, settings)
    output.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(output)
    previous = manifest["settings"].get(source)
    if previous is not None and previous != asdict(settings):
        raise ValueError(
            f"{output} holds {source} shards built with {previous}, not {asdict(settings)}; "
            "build into another folder or delete that source's shards and its manifest entries first."
        )
    planned = {task.path for task in tasks}
    strays = sorted(
        str(path.relative_to(output))
        for path in output.glob(f"data/*/{source}-*.tar")
        if str(path.relative_to(output)) not in planned
    )
    if strays:
        raise ValueError(
            f"{output} holds {source} shards outside this build's plan: {strays[:3]}... Remove them first."
        )
    for partial in output.glob(f"data/*/{source}-*.tar{PARTIAL_SUFFIX}"):
        partial.unlink()  # our own interrupted writes

    manifest["settings"][source] = asdict(settings)
    entries = {entry["path"]: entry for entry in manifest["shards"]}
    todo = [
        task
        for task in tqdm(tasks, desc=f"{source}: verifying existing shards", unit=" shards")
        if not shard_is_complete(output, entries.get(task.path))
    ]
    save_manifest(output, manifest)
    with ExitStack() as stack:
        parallel_map = stack.enter_context(Pool(num_proc)).imap_unordered if num_proc > 1 else map
        results = parallel_map(_write_shard_star, [(output, task) for task in todo])
        for entry in tqdm(results, total=len(todo), desc=f"{source}: writing shards", unit=" shards"):
            entries[entry["path"]] = entry
            manifest["shards"] = list(entries.values())
            save_manifest(output, manifest)
    return manifest["sources"][source]


def verify_output(output: Path) -> None:
    """Raise if a manifest shard is missing or altered, or if `data/` holds a file the manifest does not list."""
    manifest = load_manifest(output)
    listed = {entry["path"]: entry for entry in manifest["shards"]}
    on_disk = {str(path.relative_to(output)) for path in (output / "data").rglob("*") if path.is_file()}
    problems = [f"not in the manifest: {path}" for path in sorted(on_disk - listed.keys())]
    problems += [
        f"missing or altered: {path}"
        for path, entry in sorted(listed.items())
        if path not in on_disk or not shard_is_complete(output, entry)
    ]
    if problems:
        raise ValueError(f"{output} does not match its manifest:\n  " + "\n  ".join(problems))
