"""The classifier scenario's metrics against direct computations, and the lambda rules on
hand-made curves (no files, no models beyond one small linear layer)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.svm import SVC

from negmerge_cli.classifier import metrics
from negmerge_cli.classifier.search import check_select, select, select_gap, select_retain_bar
from negmerge_cli.core.errors import UsageError
from negmerge_cli.results import ClassifierSearchPoint, UnlearningMetrics
from negmerge_cli.results.files import read_back


def test_predictions_are_true_label_softmax_and_argmax():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0], [1.0, 1.0, 5.0], [0.5, 0.2, 0.1]])
    labels = torch.tensor([0, 2, 2, 1])
    predictions = metrics.predictions_from_logits(logits, labels)
    expected = [np.exp(row[label]) / np.exp(row).sum() for row, label in zip(logits.double().numpy(), labels)]
    np.testing.assert_allclose(predictions.confidence, expected, rtol=1e-6)
    assert predictions.correct.tolist() == [True, False, True, False]
    assert metrics.accuracy(predictions) == 0.5


def _fixed_model_predictions(count: int, seed: int, shift: float) -> metrics.Predictions:
    """A fixed linear model on seeded random inputs: a real (non-hand-picked) confidence spread."""
    generator = torch.Generator().manual_seed(seed)
    layer = torch.nn.Linear(6, 4)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(4, 6, generator=torch.Generator().manual_seed(99)))
        layer.bias.zero_()
    inputs = torch.randn(count, 6, generator=generator) + shift
    labels = torch.randint(0, 4, (count,), generator=generator)
    with torch.no_grad():
        return metrics.predictions_from_logits(layer(inputs), labels)


def test_mia_efficacy_matches_an_svc_fitted_here():
    retain = _fixed_model_predictions(300, 1, 0.5)
    test = _fixed_model_predictions(120, 2, 0.0)
    forget = _fixed_model_predictions(80, 3, 0.2)
    found = metrics.unlearning_metrics(retain, forget, test)

    members = retain.confidence[:120]  # the first |Dtest| samples of Dr
    svm = SVC(C=3, gamma="auto", kernel="rbf")
    svm.fit(np.concatenate([members, test.confidence]).reshape(-1, 1), np.r_[np.ones(120), np.zeros(120)])
    expected = float((svm.predict(forget.confidence.reshape(-1, 1)) == 0).mean())
    assert found.mia_efficacy == expected
    assert found.dr_acc == retain.correct.mean() and found.df_acc == forget.correct.mean()
    assert found.dtest_acc == test.correct.mean()
    assert 0 < expected < 1  # the check means something: neither all nor none


def test_mia_efficacy_on_separable_confidences():
    members = np.full(50, 0.99)
    non_members = np.full(50, 0.30)
    forget = np.r_[np.full(7, 0.98), np.full(3, 0.31)]  # 3 of 10 look like non-members
    assert metrics.mia_efficacy(members, non_members, forget) == 0.3


def test_mia_uses_only_the_first_dtest_samples_of_dr():
    """Dr samples beyond |Dtest| must not change the result."""
    retain = _fixed_model_predictions(200, 1, 0.5)
    test = _fixed_model_predictions(60, 2, 0.0)
    forget = _fixed_model_predictions(40, 3, 0.2)
    tail = metrics.Predictions(np.r_[retain.confidence[:60], np.zeros(140)], retain.correct)
    assert (metrics.unlearning_metrics(retain, forget, test).mia_efficacy
            == metrics.unlearning_metrics(tail, forget, test).mia_efficacy)


def test_avg_gap_by_hand():
    ours = UnlearningMetrics(0.99, 0.90, 0.93, 0.15)
    retrained = UnlearningMetrics(1.00, 0.9476, 0.9426, 0.1288)
    by_hand = (abs(99 - 100) + abs(90 - 94.76) + abs(93 - 94.26) + abs(15 - 12.88)) / 4
    assert metrics.avg_gap(ours, retrained) == pytest.approx(by_hand, abs=1e-9)
    assert metrics.avg_gap(retrained, retrained) == 0


def test_empty_sets_are_refused():
    empty = metrics.Predictions(np.zeros(0), np.zeros(0, bool))
    with pytest.raises(Exception, match="empty"):
        metrics.accuracy(empty)
    with pytest.raises(Exception, match="MIA"):
        metrics.mia_efficacy(np.ones(3), np.zeros(3), np.zeros(0))


def _point(coef, dr, df, gap=None):
    return ClassifierSearchPoint(coef, UnlearningMetrics(dr, df, 0.9, 0.1), gap)


CURVE = [_point(0.0, 1.00, 0.99, 9.0), _point(0.25, 0.99, 0.90, 3.0), _point(0.5, 0.97, 0.80, 1.0),
         _point(0.75, 0.96, 0.80, 1.0), _point(1.0, 0.90, 0.30, 2.0)]


def test_retain_bar_takes_lowest_df_above_the_bar_ties_to_smallest():
    assert select_retain_bar(list(reversed(CURVE)), 0.95).coef == 0.5  # 0.75 ties at 0.80: smallest wins
    assert select_retain_bar(CURVE, 0.96).coef == 0.5  # bar 0.96: 0.97 passes, 0.96 passes (>=)
    assert select_retain_bar(CURVE, 0.965).coef == 0.5
    assert select_retain_bar(CURVE, 0.98).coef == 0.25
    assert select_retain_bar(CURVE, 0.90).coef == 1.0


def test_retain_bar_needs_lambda_zero():
    with pytest.raises(UsageError, match="lambda 0"):
        select_retain_bar(CURVE[1:], 0.95)


def test_gap_takes_smallest_gap_ties_to_smallest():
    assert select_gap(CURVE).coef == 0.5
    assert select(CURVE, "gap", 0.95).coef == 0.5
    with pytest.raises(UsageError, match="no Avg. Gap"):
        select_gap([_point(0.0, 1, 1)])


def test_select_rules_are_checked():
    with pytest.raises(UsageError, match="retain-bar or gap"):
        check_select("lowest", True)
    with pytest.raises(UsageError, match="reference"):
        check_select("gap", False)
    check_select("retain-bar", False)


def test_points_without_metrics_are_never_chosen_and_round_trip():
    broken = ClassifierSearchPoint(1.0, None, None, "the model's outputs on Dr hold NaN or Inf")
    curve = CURVE[:-1] + [broken]
    assert select_retain_bar(curve, 0.90).coef == 0.5
    assert select_gap(curve).coef == 0.5
    assert read_back(ClassifierSearchPoint, broken.to_json()) == broken
    assert read_back(ClassifierSearchPoint, CURVE[2].to_json()) == CURVE[2]
