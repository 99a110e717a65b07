"""Zero-shot classification metrics of the UniMed-CLIP evaluation, in percent.

Predictions are per-image class scores (cosine similarities); references are class indices. Reported: top-1 accuracy
over all images (the paper's metric for most datasets), balanced accuracy, ROC AUC (binary: from the score
difference of class 1 and class 0, the paper's metric for its imbalanced datasets; more classes: the macro mean of
one-vs-rest AUCs over the classes present), per-class recall and the confusion matrix.
"""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import confusion_matrix, roc_auc_score

_DESCRIPTION = __doc__
_CITATION = """@article{khattak2024unimed,
  title={UniMed-CLIP: Towards a Unified Image-Text Pretraining Paradigm for Diverse Medical Imaging Modalities},
  author={Khattak, Muhammad Uzair and Kunhimon, Shahina and Naseer, Muzammal and Khan, Salman and Khan, Fahad Shahbaz},
  journal={arXiv preprint arXiv:2412.10372},
  year={2024}
}"""
_INPUTS = """predictions: list of per-class score lists, one per image; references: list of class indices."""


class UniMedZeroShot(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float64")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references) -> dict:
        scores, labels = np.asarray(predictions, dtype=np.float64), np.asarray(references)
        classes = range(scores.shape[1])
        predicted = scores.argmax(axis=1)
        matrix = confusion_matrix(labels, predicted, labels=list(classes))
        support = matrix.sum(axis=1)
        recall = np.divide(np.diag(matrix), support, out=np.full(len(support), np.nan), where=support > 0)
        return {
            "accuracy": 100.0 * float((predicted == labels).mean()),
            "balanced_accuracy": 100.0 * float(np.nanmean(recall)),
            "auc": 100.0 * _auc(scores, labels),
            "per_class_recall": [None if np.isnan(value) else 100.0 * float(value) for value in recall],
            "support": support.tolist(),
            "confusion_matrix": matrix.tolist(),
        }


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    if scores.shape[1] == 2:
        if len(set(labels.tolist())) < 2:
            return float("nan")
        return float(roc_auc_score(labels, scores[:, 1] - scores[:, 0]))
    present = [c for c in range(scores.shape[1]) if 0 < (labels == c).sum() < len(labels)]
    if not present:
        return float("nan")
    return float(np.mean([roc_auc_score(labels == c, scores[:, c]) for c in present]))
