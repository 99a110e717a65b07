"""UniMed-CLIP's zero-shot evaluation suite: catalog, prompt ensembles, loaders, metrics, retrieval and probes."""

from pathlib import Path

from .evaluator import Evaluator, eval_results, markdown_table, retrieval_recalls, summarize
from .readers import EvalDataset, Sample, catalog_dataset, csv_dataset, hf_dataset, image_folder_dataset, load_catalog

DEFAULT_PROMPTS = Path(__file__).parent / "prompts" / "unimed.json"

__all__ = [
    "DEFAULT_PROMPTS",
    "EvalDataset",
    "Evaluator",
    "Sample",
    "catalog_dataset",
    "csv_dataset",
    "eval_results",
    "hf_dataset",
    "image_folder_dataset",
    "load_catalog",
    "markdown_table",
    "retrieval_recalls",
    "summarize",
]
