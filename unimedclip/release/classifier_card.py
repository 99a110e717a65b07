"""The model card of a classifier fine-tuned by `finetune.py`, rendered from its `results.json`: the base model with
`base_model_relation: finetune`, the method, the data, the metrics before training (the zero-shot point) and after,
as `model-index` entries too."""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..paper import CITATION

TEMPLATE_PATH = Path(__file__).with_name("classifier_card_template.md")
METRICS = {
    "accuracy": ("accuracy", "Accuracy (%)"),
    "balanced_accuracy": ("balanced_accuracy", "Balanced accuracy (%)"),
    "auc": ("roc_auc", "ROC AUC (%)"),
}


def classifier_method(config: Mapping[str, Any]) -> str:
    """What a fine-tuning run trained, in words, from its configuration."""
    if config["method"] == "linear-probe":
        return "a linear probe, the head trained on the frozen image tower"
    if config["method"] == "lora":
        return (
            f"LoRA (rank {config['lora_r']}, alpha {config['lora_alpha']}) on the image tower's "
            f"{', '.join(config['lora_target_modules'])} with the head, merged into the weights"
        )
    return "full fine-tuning of the image tower and the head"


def classifier_eval_results(results: Mapping[str, Any], dataset: str) -> list[EvalResult]:
    """`model-index` entries of a fine-tuned classifier: its metrics after fine-tuning on each evaluated split."""
    return [
        EvalResult(
            task_type="image-classification",
            task_name="Image classification",
            dataset_type=dataset,
            dataset_name=dataset.split("/")[-1],
            dataset_split=split,
            metric_type=metric_type,
            metric_name=metric_name,
            metric_value=round(results["after"][split][metric], 2),
        )
        for split in ("validation", "test")
        if split in results["after"]
        for metric, (metric_type, metric_name) in METRICS.items()
        if results["after"][split][metric] == results["after"][split][metric]  # NaN: AUC of a one-class split
    ]


def render_classifier_card(results: Mapping[str, Any], *, repo_id: str, base_model: str | None) -> ModelCard:
    """The card of a classifier fine-tuned by `finetune.py`, from its `results.json`; `base_model` is the Hub id of
    the UniMed-CLIP checkpoint it was fine-tuned from (None when that has no Hub id)."""
    config = results["config"]
    dataset = config["hf_dataset"] if config["hf_dataset"] and not Path(config["hf_dataset"]).exists() else None
    card_data = ModelCardData(
        model_name=repo_id.split("/")[-1],
        language="en",
        license="cc-by-nc-4.0",
        library_name="transformers",
        pipeline_tag="image-classification",
        base_model=base_model,
        base_model_relation="finetune" if base_model else None,
        datasets=[dataset] if dataset else None,
        tags=["medical", "image-classification", "unimed-clip", config["method"], *(["wise-ft"] * config["wise_ft"])],
        metrics=sorted(metric_type for metric_type, _ in METRICS.values()),
        eval_results=classifier_eval_results(results, dataset or Path(results["data"]["train"]["source"]).name),
    )
    steps = results["steps"]
    training = {
        "method": config["method"],
        "head initialisation": config["head_init"],
        "steps": f"{steps}" + (" (stopped early)" if results["stopped_early"] else ""),
        "global batch": config["batch_size"],
        "peak learning rate": config["lr"],
        "schedule": "linear warmup, cosine decay to 0",
        "optimizer": f"AdamW (beta {config['beta1']}/{config['beta2']}, weight decay {config['weight_decay']})",
        "class-balanced sampling": "yes" if config["balanced_sampling"] else "no",
        "class-weighted loss": "yes" if config["class_weights"] else "no",
        "model selection": f"best validation {config['metric_for_best_model'].replace('_', ' ')}",
        "precision": config["mixed_precision"] or "as accelerate launched it",
        "seed": config["seed"],
    }
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        name=repo_id.split("/")[-1],
        repo_id=repo_id,
        base=results["base_model"],
        base_model=base_model,
        method_description=classifier_method(config),
        classes=results["classes"],
        results=results,
        evaluated_splits=[split for split in ("validation", "test") if split in results["after"]],
        metrics={metric: name.removesuffix(" (%)") for metric, (_, name) in METRICS.items()},
        training=training,
        window=config["window"],
        citation=CITATION,
    )
