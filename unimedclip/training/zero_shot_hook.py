"""Periodic zero-shot evaluation during training, with the project's Evaluator and the paper's prompt sets."""

import json
import logging
from pathlib import Path

import torch

from modeling_unimedclip import UniMedCLIPModel, UniMedCLIPProcessor

from ..evaluation import DEFAULT_PROMPTS, Evaluator, catalog_dataset, load_catalog

logger = logging.getLogger(__name__)


class ZeroShotHook:
    """Evaluates the catalog datasets found under `data_root` (all, or `keys`); missing ones are skipped once."""

    def __init__(self, data_root: str | Path, keys: list[str] | None = None, batch_size: int = 64):
        catalog = load_catalog()
        unknown = sorted(set(keys or []) - set(catalog))
        if unknown:
            raise ValueError(f"Unknown evaluation dataset(s) {unknown}; the catalog has {sorted(catalog)}.")
        self.datasets = []
        for key in keys or catalog:
            try:
                self.datasets.append(catalog_dataset(key, catalog[key], Path(data_root)))
            except FileNotFoundError as error:
                logger.warning(f"Zero-shot evaluation skips {key}: {error}")
        if not self.datasets:
            raise FileNotFoundError(f"None of the evaluation datasets was found under {data_root}.")
        self.prompts = json.loads(DEFAULT_PROMPTS.read_text())
        self.batch_size = batch_size

    def __call__(self, model: UniMedCLIPModel, processor: UniMedCLIPProcessor, dtype: torch.dtype) -> dict:
        """{"zero_shot/<key>": metric value, "zero_shot/mean": mean}; leaves `model` in train mode."""
        evaluator = Evaluator(model, processor, batch_size=self.batch_size, dtype=dtype)
        with torch.no_grad():
            scores = {
                f"zero_shot/{d.key}": evaluator.zero_shot(d, self.prompts.get(d.key, {}))["value"]
                for d in self.datasets
            }
        model.train()
        return {**scores, "zero_shot/mean": sum(scores.values()) / len(scores)}
