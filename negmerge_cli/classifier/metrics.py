"""The unlearning metrics of the standard-classifier scenario (pure math: no files, no models).

- **Accuracy** on Dr, Df and Dtest: the fraction of samples whose arg-max class is the label.
- **MIA-efficacy** (SalUn, l1-sparse): the feature of a sample is the model's softmax probability
  of its true label. Shadow members are the first |Dtest| samples of Dr (Dr in index order),
  non-members are Dtest; an RBF SVM (C = 3, gamma = "auto") learns members = 1, non-members = 0;
  MIA-efficacy is the fraction of Df it calls non-members (0). Higher means Df looks less like
  training data.
- **Avg. Gap**: the mean absolute difference, in percentage points, from a reference model (the
  retrained one) over (Dr acc, Df acc, Dtest acc, MIA-efficacy).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from negmerge_cli.core.errors import NegmergeError
from negmerge_cli.results import UnlearningMetrics

SVM_C = 3.0
SVM_GAMMA = "auto"  # 1 / n_features = 1 for the one confidence feature


@dataclass(frozen=True)
class Predictions:
    """Per-sample results of one model on one set, in the set's order."""

    confidence: np.ndarray  # softmax probability of the true label, float64
    correct: np.ndarray  # arg-max == label, bool

    def __len__(self) -> int:
        return len(self.correct)

    def head(self, count: int) -> "Predictions":
        return Predictions(self.confidence[:count], self.correct[:count])


def predictions_from_logits(logits, labels) -> Predictions:
    """True-label confidence (softmax in float32 as the reference code does, kept as float64) and
    correctness from a batch of logits (torch tensors, ``[n, classes]`` and ``[n]``)."""
    import torch

    probabilities = torch.softmax(logits.float(), dim=-1)
    labels = labels.long().to(logits.device)
    confidence = probabilities.gather(1, labels[:, None])[:, 0]
    correct = logits.argmax(dim=-1) == labels
    return Predictions(confidence.double().cpu().numpy(), correct.cpu().numpy())


def concatenate(parts: Sequence[Predictions]) -> Predictions:
    if not parts:
        return Predictions(np.zeros(0, np.float64), np.zeros(0, bool))
    return Predictions(np.concatenate([p.confidence for p in parts]), np.concatenate([p.correct for p in parts]))


def accuracy(predictions: Predictions) -> float:
    if len(predictions) == 0:
        raise NegmergeError("accuracy of an empty set")
    return float(np.mean(predictions.correct))


def mia_efficacy(members: np.ndarray, non_members: np.ndarray, forget: np.ndarray) -> float:
    """Fraction of ``forget`` confidences that an RBF SVM fitted on members (1) vs non-members (0)
    classifies as non-members."""
    from sklearn.svm import SVC

    if len(members) == 0 or len(non_members) == 0 or len(forget) == 0:
        raise NegmergeError("MIA-efficacy needs shadow members, non-members and forget samples")
    features = np.concatenate([members, non_members]).astype(np.float64).reshape(-1, 1)
    labels = np.concatenate([np.ones(len(members)), np.zeros(len(non_members))])
    svm = SVC(C=SVM_C, gamma=SVM_GAMMA, kernel="rbf").fit(features, labels)
    predicted = svm.predict(np.asarray(forget, np.float64).reshape(-1, 1))
    return float(np.mean(predicted == 0))


def unlearning_metrics(retain: Predictions, forget: Predictions, test: Predictions) -> UnlearningMetrics:
    """All four metrics from per-sample predictions on Dr (index order), Df and Dtest."""
    shadow_members = retain.head(len(test))
    return UnlearningMetrics(accuracy(retain), accuracy(forget), accuracy(test),
                             mia_efficacy(shadow_members.confidence, test.confidence, forget.confidence))


def avg_gap(metrics: UnlearningMetrics, reference: UnlearningMetrics) -> float:
    """Mean |metric - reference's| over the four metrics, in percentage points."""
    return float(np.mean([abs(100 * a - 100 * b) for a, b in zip(metrics.values(), reference.values())]))
