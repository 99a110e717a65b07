"""UniMed-CLIP's zero-shot evaluation suite: catalog, prompt ensembles, loaders (the archive's folders or the benchmark
dataset), metrics, retrieval and probes, and baselines side by side."""

from pathlib import Path

from .adapters import load_model
from .comparison import compare, comparison_markdown
from .evaluator import Evaluator, eval_results, markdown_table, retrieval_recalls, summarize
from .readers import (
    EvalDataset,
    Sample,
    benchmark_dataset,
    catalog_dataset,
    csv_dataset,
    hf_dataset,
    image_folder_dataset,
    load_catalog,
)

DEFAULT_PROMPTS = Path(__file__).parent / "prompts" / "unimed.json"

__all__ = [
    "DEFAULT_PROMPTS",
    "EvalDataset",
    "Evaluator",
    "Sample",
    "benchmark_dataset",
    "catalog_dataset",
    "compare",
    "comparison_markdown",
    "csv_dataset",
    "eval_results",
    "hf_dataset",
    "image_folder_dataset",
    "load_catalog",
    "load_model",
    "markdown_table",
    "retrieval_recalls",
    "summarize",
]
