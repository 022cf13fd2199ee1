"""Classification metrics, streamed over evaluation batches and computed with scikit-learn at the end.

accuracy: correct / total. balanced_accuracy: the mean of per-class recalls (classes present in the targets).
macro_f1: the unweighted mean of per-class F1 over every class of the model. confusion_matrix: rows are true
classes, columns predicted ones, in the model's class order.
"""
from __future__ import annotations

import numpy as np


class ClassificationMetrics:
    def __init__(self, class_names: list | None = None):
        self.class_names = list(class_names) if class_names else None
        self.predicted: list = []
        self.targets: list = []

    def update(self, prediction, target) -> None:
        """prediction: (B, classes) scores (logits or probabilities); target: (B,) class indices."""
        scores = np.asarray(prediction.detach().cpu() if hasattr(prediction, "detach") else prediction)
        self.predicted.extend(scores.argmax(axis=1).tolist())
        self.targets.extend(np.asarray(target.cpu() if hasattr(target, "cpu") else target).tolist())

    def compute(self) -> dict:
        from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score

        y, p = np.asarray(self.targets), np.asarray(self.predicted)
        n_classes = len(self.class_names) if self.class_names else int(max(y.max(), p.max())) + 1
        labels = list(range(n_classes))
        out = {"accuracy": float(accuracy_score(y, p)),
               "balanced_accuracy": float(balanced_accuracy_score(y, p)),
               "macro_f1": float(f1_score(y, p, labels=labels, average="macro", zero_division=0)),
               "errors": int((y != p).sum()),
               "confusion_matrix": confusion_matrix(y, p, labels=labels).tolist()}
        if self.class_names:
            out["classes"] = list(self.class_names)
        return out
