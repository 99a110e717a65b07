"""An append-only JSONL cache of generated captions, so that a rerun generates nothing and a crashed run resumes.

One line per label set: `{"key": {...}, "captions": [...], "rejected": {reason: count}, "complete": bool}`. The key
holds everything the captions depend on: backend and model, modality, sorted label set, prompt version and n.
"""

import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def cache_key(backend: str, modality: str, labels: tuple[str, ...], prompt_version: str, n: int) -> dict:
    return {
        "backend": backend,
        "modality": modality,
        "labels": sorted(labels),
        "prompt_version": prompt_version,
        "n": n,
    }


def _canonical(key: dict) -> str:
    return json.dumps(key, sort_keys=True, ensure_ascii=False)


class CaptionCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.entries: dict[str, dict] = {}
        self.unreadable_lines = 0
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        data = self.path.read_bytes()
        complete_length = data.rfind(b"\n") + 1
        if complete_length < len(data):
            # A run killed mid-write leaves a partial last line; drop it so the next append starts a fresh line.
            logger.warning("%s: ignoring a truncated last line (%d bytes)", self.path, len(data) - complete_length)
            self.unreadable_lines += 1
            with self.path.open("r+b") as file:
                file.truncate(complete_length)
        for number, line in enumerate(data[:complete_length].decode("utf-8", errors="replace").splitlines(), 1):
            try:
                record = json.loads(line)
                self.entries[_canonical(record["key"])] = record
            except (json.JSONDecodeError, KeyError, TypeError):
                logger.warning("%s:%d: ignoring an unreadable cache line", self.path, number)
                self.unreadable_lines += 1

    def get(self, key: dict) -> dict | None:
        return self.entries.get(_canonical(key))

    def put(self, key: dict, captions: list[str], rejected: dict[str, int], complete: bool) -> None:
        record = {"key": key, "captions": captions, "rejected": rejected, "complete": complete}
        self.entries[_canonical(key)] = record
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as file:
            file.write(json.dumps(record, ensure_ascii=False) + "\n")
