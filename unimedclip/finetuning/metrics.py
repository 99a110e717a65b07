"""A classifier's metrics on a split, with the evaluation's metric module (accuracy, balanced accuracy, AUC, per-class
recall, confusion matrix, in percent): the same numbers `evaluate_zero_shot.py` reports for zero-shot models."""

import evaluate
import torch
from tqdm.auto import tqdm

from ..evaluation.evaluator import METRIC_MODULE
from ..evaluation.readers import ImageDataset, Sample, collate


class SplitEvaluator:
    """Scores a classifier (anything returning `.logits` for `pixel_values`) on lists of samples."""

    def __init__(self, image_processor, classes: list[str], batch_size: int, num_workers: int):
        self.image_processor, self.classes = image_processor, classes
        self.batch_size, self.num_workers = batch_size, num_workers
        self.metric = evaluate.load(METRIC_MODULE)

    @torch.no_grad()
    def logits(self, model, samples: list[Sample], description: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, classes) float32 logits on CPU and the labels, of the images the processor reads."""
        loader = torch.utils.data.DataLoader(
            ImageDataset(samples, self.image_processor, decode=False),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=collate,
        )
        was_training = model.training
        model.eval()
        logits, labels = [], []
        device = next(model.parameters()).device
        for pixel_values, batch_labels, _ in tqdm(loader, desc=description, unit="batch", leave=False):
            if pixel_values is not None:
                logits.append(model(pixel_values=pixel_values.to(device)).logits.float().cpu())
                labels.append(batch_labels)
        model.train(was_training)
        return torch.cat(logits), torch.cat(labels)

    def __call__(self, model, samples: list[Sample], description: str) -> dict:
        logits, labels = self.logits(model, samples, description)
        # Probabilities, not logits: one-vs-rest AUC ranks the images by one class's score, which a logit shift
        # common to all classes of an image would distort.
        probabilities = logits.softmax(dim=-1)
        metrics = self.metric.compute(predictions=probabilities.tolist(), references=labels.tolist())
        return {
            **{key: metrics[key] for key in ("accuracy", "balanced_accuracy", "auc")},
            "classes": {
                name: {"recall": recall, "support": support}
                for name, recall, support in zip(self.classes, metrics["per_class_recall"], metrics["support"])
            },
            "confusion_matrix": metrics["confusion_matrix"],
            "images": len(labels),
        }
