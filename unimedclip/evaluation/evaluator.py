"""Zero-shot evaluation as in the paper, plus retrieval and few-shot linear probes on frozen features.

Works with any model exposing transformers' `get_image_features`/`get_text_features` and its processor: UniMed-CLIP,
transformers CLIP-family models, and open_clip models through `adapters` (BiomedCLIP, PMC-CLIP style releases).
Class text embeddings are computed once per model and prompt set and cached on disk; image features are computed in
batches by DataLoader workers, in bf16/fp16 on GPU when asked.
"""

import hashlib
import json
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import evaluate
import numpy as np
import torch
import torch.nn.functional as F
from huggingface_hub import EvalResult
from tqdm.auto import tqdm

from ..inference.zero_shot import class_embeddings, project_images, text_embeddings
from .readers import EvalDataset, ImageDataset, Sample, collate

METRIC_MODULE = str(Path(__file__).parent / "metrics" / "unimed_zero_shot")
RECALL_AT = (1, 5, 10)


class Evaluator:
    """Holds a model, its processor and the run settings; evaluates datasets one at a time."""

    def __init__(
        self,
        model,
        processor,
        *,
        batch_size: int = 64,
        num_workers: int = 0,
        dtype: torch.dtype = torch.float32,
        cache_dir: str | Path | None = None,
    ):
        self.model, self.processor = model.eval(), processor
        self.batch_size, self.num_workers, self.dtype = batch_size, num_workers, dtype
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.metric = evaluate.load(METRIC_MODULE)
        self._fingerprint = None

    def zero_shot(self, dataset: EvalDataset, prompts: dict[str, list[str]]) -> dict:
        """The paper protocol: cosine similarity to each class prompt-ensemble embedding, argmax, catalog metric."""
        missing = [name for name in dataset.classes if not prompts.get(name)]
        if missing:
            raise ValueError(f"{dataset.key}: no prompts for the class(es) {missing}; add them to the prompt file.")
        class_embeds = self.text_class_embeddings({name: prompts[name] for name in dataset.classes})
        image_embeds, labels, unreadable = self.image_features(dataset.samples, dataset.key)
        if not len(labels):
            raise ValueError(f"{dataset.key}: none of the {len(dataset.samples)} images could be read.")
        scores = image_embeds @ class_embeds.T
        metrics = self.metric.compute(predictions=scores.tolist(), references=labels.tolist())
        return {
            "modality": dataset.modality,
            "hub_dataset": dataset.hub_dataset,
            "metric": dataset.metric,
            "value": metrics["auc" if dataset.metric == "auc" else "accuracy"],
            "also_report": list(dataset.also_report),
            **{key: metrics[key] for key in ("accuracy", "balanced_accuracy", "auc")},
            "classes": {
                name: {"recall": recall, "support": support}
                for name, recall, support in zip(dataset.classes, metrics["per_class_recall"], metrics["support"])
            },
            "confusion_matrix": metrics["confusion_matrix"],
            "images": len(labels),
            "unreadable": len(unreadable),
            "unreadable_examples": [dataset.samples[i].origin for i in unreadable[:5]],
        }

    def text_class_embeddings(self, prompts: dict[str, list[str]]) -> torch.Tensor:
        """(classes, dim), cached on disk by model fingerprint and prompt set when a cache directory is set."""
        path = None
        if self.cache_dir is not None:
            key = json.dumps({"model": self.fingerprint(), "prompts": prompts}, sort_keys=True)
            path = self.cache_dir / f"text-{hashlib.sha256(key.encode()).hexdigest()[:24]}.pt"
            if path.is_file():
                return torch.load(path, weights_only=True)
        embeds = class_embeddings(self.model, self.processor, prompts).cpu()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(f".tmp{os.getpid()}")
            torch.save(embeds, temporary)
            temporary.replace(path)
        return embeds

    def fingerprint(self) -> str:
        """A hash of the model's weights: the cache key must change when the weights do, whatever their path. All of
        them, since model families name their text towers differently (open_clip's CLIP: `transformer.*`)."""
        if self._fingerprint is None:
            digest = hashlib.sha256(type(self.model).__name__.encode())
            for name, tensor in self.model.state_dict().items():
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    @torch.no_grad()
    def image_features(self, samples: Sequence[Sample], description: str = "images"):
        """Normalised image embeddings (float32, CPU), their labels, and the indices of unreadable images."""
        loader = torch.utils.data.DataLoader(
            ImageDataset(samples, self.processor.image_processor),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=collate,
        )
        embeds, labels, unreadable = [], [], []
        autocast = torch.autocast(self.model.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)
        with tqdm(total=len(samples), desc=description, unit="img", leave=False) as progress:
            for pixel_values, batch_labels, failed in loader:
                unreadable += failed
                if pixel_values is not None:
                    with autocast:
                        features = project_images(self.model, pixel_values.to(self.model.device))
                    embeds.append(F.normalize(features.float(), dim=-1).cpu())
                    labels.append(batch_labels)
                progress.update(len(batch_labels) + len(failed))
        if not embeds:
            return torch.empty(0), torch.empty(0, dtype=torch.long), unreadable
        return torch.cat(embeds), torch.cat(labels), unreadable

    def text_features(self, texts: list[str]) -> torch.Tensor:
        return text_embeddings(self.model, self.processor, texts, self.batch_size).cpu()

    def retrieval(self, images: list, captions: list[str], key: str = "retrieval") -> dict:
        """Image-to-text and text-to-image recall@1/5/10 (percent) for image-caption pairs (one caption each)."""
        image_embeds, _, unreadable = self.image_features([Sample(image, 0) for image in images], key)
        if unreadable:
            kept = sorted(set(range(len(images))) - set(unreadable))
            captions = [captions[i] for i in kept]
        return {
            **retrieval_recalls(image_embeds @ self.text_features(captions).T),
            "pairs": len(captions),
            "unreadable": len(unreadable),
        }

    def linear_probe(self, dataset: EvalDataset, shots: list[int], seeds: list[int]) -> dict:
        """Few-shot logistic regression on frozen image features: `k` training images per class drawn with each seed,
        tested on all the others; mean and standard deviation of top-1 accuracy (percent) over the seeds."""
        features, labels, _ = self.image_features(dataset.samples, dataset.key)
        return {str(k): few_shot_accuracy(features.numpy(), labels.numpy(), k, seeds) for k in shots}


def retrieval_recalls(similarity: torch.Tensor) -> dict:
    """Recall@k when item i of both sides forms a pair: rows are images, columns captions."""
    targets = torch.arange(len(similarity)).unsqueeze(1)
    results = {}
    for direction, matrix in (("image_to_text", similarity), ("text_to_image", similarity.T)):
        ranks = (matrix.argsort(dim=1, descending=True) == targets).float().argmax(dim=1)
        for k in RECALL_AT:
            results[f"{direction}_R@{k}"] = 100.0 * (ranks < k).float().mean().item()
    return results


def few_shot_accuracy(features: np.ndarray, labels: np.ndarray, shots: int, seeds: list[int]) -> dict:
    from sklearn.linear_model import LogisticRegression

    classes = np.unique(labels)
    too_small = [int(c) for c in classes if (labels == c).sum() <= shots]
    if too_small:
        raise ValueError(
            f"{shots}-shot probing needs more than {shots} images in every class; classes {too_small} lack them."
        )
    accuracies = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        train = np.concatenate([rng.choice(np.flatnonzero(labels == c), size=shots, replace=False) for c in classes])
        test = np.setdiff1d(np.arange(len(labels)), train)
        classifier = LogisticRegression(max_iter=1000).fit(features[train], labels[train])
        accuracies.append(100.0 * float((classifier.predict(features[test]) == labels[test]).mean()))
    return {"mean": float(np.mean(accuracies)), "std": float(np.std(accuracies)), "seeds": list(seeds)}


def summarize(results: dict[str, dict]) -> dict:
    """Per-modality and overall means of each dataset's reported value (datasets weighted equally)."""
    by_modality = defaultdict(list)
    for result in results.values():
        by_modality[result["modality"] or "other"].append(result["value"])
    values = [result["value"] for result in results.values()]
    return {
        "modalities": {modality: float(np.mean(v)) for modality, v in sorted(by_modality.items())},
        "average": float(np.mean(values)) if values else math.nan,
        "datasets": len(values),
    }


def markdown_table(results: dict[str, dict], summary: dict) -> str:
    lines = [
        "| dataset | modality | metric | value | accuracy | balanced acc. | AUC | images |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for key, r in results.items():
        lines.append(
            f"| {key} | {r['modality'] or ''} | {r['metric']} | {r['value']:.2f} | {r['accuracy']:.2f} | "
            f"{r['balanced_accuracy']:.2f} | {r['auc']:.2f} | {r['images']} |"
        )
    for modality, value in summary["modalities"].items():
        lines.append(f"| mean ({modality}) | | | {value:.2f} | | | | |")
    lines.append(f"| **mean ({summary['datasets']} datasets)** | | | **{summary['average']:.2f}** | | | | |")
    return "\n".join(lines) + "\n"


METRIC_NAMES = {"accuracy": ("accuracy", "Top-1 accuracy (%)"), "auc": ("roc_auc", "ROC AUC (%)")}


def eval_results(results: dict[str, dict]) -> list[EvalResult]:
    """Model-card `model-index` entries: per dataset, the paper's metric, then those reported beside it. A dataset is
    named by the Hub dataset (and config) it comes from, or by its key when it has none (a local folder)."""
    entries = []
    for key, r in results.items():
        dataset_type, dataset_config = r.get("hub_dataset") or (key, None)
        values = {r["metric"]: r["value"], **{metric: r[metric] for metric in r.get("also_report", [])}}
        for metric, value in values.items():
            metric_type, metric_name = METRIC_NAMES[metric]
            entries.append(
                EvalResult(
                    task_type="zero-shot-image-classification",
                    task_name="Zero-shot image classification",
                    dataset_type=dataset_type,
                    dataset_config=dataset_config,
                    dataset_name=key,
                    metric_type=metric_type,
                    metric_name=metric_name,
                    metric_value=round(value, 2),
                )
            )
    return entries
