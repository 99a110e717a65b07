"""The format of a UniMed sample in a shard, written by the shard builder and read by the loader and `datasets`.

A sample is two tar members: `<key>.image`, the image bytes as the source shipped them (one member name for every
image format, typed `Image()` by the card's declared features), and `<key>.json`, its record. The record carries
everything the loader needs, its caption rule included, so that shards of one's own sources need no registry entry.
"""

import json
import random
from collections.abc import Mapping
from typing import Any

from datasets import Features, Image, List, Value

from .sources import CAPTION_RULES, FIRST, RANDOM_OF_FIRST_10, REPORT_ELSE_RANDOM_OF_FIRST_10, Source

IMAGE_FIELD = "image"
RECORD_FIELD = "json"

# Declared in the dataset card for every config: without them the webdataset builder would type `.image` members as
# raw bytes, and the `json` struct is fixed so that every source and modality yields the same columns.
FEATURES = Features(
    {
        IMAGE_FIELD: Image(),
        RECORD_FIELD: {
            "source": Value("string"),
            "modality": Value("string"),
            "captions": List(Value("string")),
            "caption_rule": Value("string"),
            "report": Value("string"),
            "labels": List(Value("string")),
            "license": Value("string"),
            "path": Value("string"),
            "resized_from": List(Value("int32")),
        },
        "__key__": Value("string"),
        "__url__": Value("string"),
    }
)


def make_record(
    source: Source,
    *,
    modality: str,
    captions: list[str],
    report: str | None,
    labels: list[str],
    path: str,
    resized_from: list[int] | None,
) -> dict:
    """The JSON record of one sample, in the field order of `FEATURES`."""
    return {
        "source": source.id,
        "modality": modality,
        "captions": captions,
        "caption_rule": source.caption_rule,
        "report": report,
        "labels": labels,
        "license": source.license_class,
        "path": path,
        "resized_from": resized_from,
    }


def parse_record(data: bytes) -> dict[str, Any]:
    """A record from its JSON bytes, checked to hold what the loader reads; ValueError otherwise."""
    try:
        record = json.loads(data)  # raises ValueError, also for bytes that are not UTF-8
    except RecursionError:  # a hostile record of deeply nested brackets
        raise ValueError("The sample record nests too deeply to parse.") from None
    if not isinstance(record, dict):
        raise ValueError(f"A sample record must be a JSON object, not {type(record).__name__}.")
    for name, kind in (
        ("source", str),
        ("modality", str),
        ("captions", list),
        ("caption_rule", str),
        ("report", (str, type(None))),
    ):
        if not isinstance(record.get(name), kind):
            raise ValueError(f"Sample record field {name!r} is missing or has the wrong type.")
    if not all(isinstance(caption, str) for caption in record["captions"]):
        raise ValueError("Sample record captions must be strings.")
    if record["caption_rule"] not in CAPTION_RULES:
        raise ValueError(f"Unknown caption rule {record['caption_rule']!r}.")
    return record


def choose_caption(record: Mapping[str, Any], rng: random.Random) -> str:
    """
    The training caption of a sample by its caption rule, as the original training code chose it: uniform among the
    first 10 captions (LLM-generated), the report when present (MIMIC-CXR), or the source's own caption (the first).
    Returns "" when the record has no usable caption.
    """
    rule, captions = record["caption_rule"], record["captions"]
    if rule == FIRST:
        return captions[0].strip() if captions else ""
    if rule == REPORT_ELSE_RANDOM_OF_FIRST_10 and (record.get("report") or "").strip():
        return record["report"].strip()
    if rule in (RANDOM_OF_FIRST_10, REPORT_ELSE_RANDOM_OF_FIRST_10):
        candidates = [caption.strip() for caption in captions[:10] if caption.strip()]
        return rng.choice(candidates) if candidates else ""
    raise ValueError(f"Unknown caption rule {rule!r} for source {record['source']!r}.")
