"""`manifest.json` of a built UniMed folder: every shard with its size, sha256, sample and skip counts, the build
settings per source, and the definitions of one's own sources. The shard builder writes it; the dataset card and the
upload read and verify it."""

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from .records import IMAGE_FIELD
from .sources import SOURCES, Source

MANIFEST = "manifest.json"
PARTIAL_SUFFIX = ".partial"


def load_manifest(output: Path) -> dict:
    path = output / MANIFEST
    if not path.exists():
        return {
            "format": "webdataset",
            "image_field": IMAGE_FIELD,
            "settings": {},
            "own_sources": {},
            "sources": {},
            "shards": [],
        }
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest.setdefault("own_sources", {})
    return manifest


def save_manifest(output: Path, manifest: dict) -> None:
    """Sorted and summarized, written atomically: the same shards give the same bytes."""
    manifest["shards"] = sorted(manifest["shards"], key=lambda entry: entry["path"])
    manifest["settings"] = dict(sorted(manifest["settings"].items()))
    manifest["own_sources"] = dict(sorted(manifest["own_sources"].items()))
    manifest["sources"] = summarize_sources(manifest["shards"])
    path = output / MANIFEST
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    partial.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(partial, path)


def record_own_source(manifest: dict, source: Source) -> None:
    """Keep the definition of a source of one's own, which the registry does not know, with the shards."""
    manifest["own_sources"][source.id] = dataclasses.asdict(source)


def sources_of(manifest: dict) -> dict[str, Source]:
    """The sources a manifest holds shards of: UniMed's own, by the registry, and one's own, by their definitions."""
    own = {source_id: Source(**fields) for source_id, fields in manifest["own_sources"].items()}
    return {source_id: SOURCES.get(source_id) or own[source_id] for source_id in manifest["sources"]}


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


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shard_is_complete(output: Path, entry: dict | None) -> bool:
    if entry is None:
        return False
    path = output / entry["path"]
    return path.is_file() and path.stat().st_size == entry["bytes"] and file_sha256(path) == entry["sha256"]


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
