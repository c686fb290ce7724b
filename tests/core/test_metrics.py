"""Classification metrics checked against values worked out by hand."""
import json
import math
from fractions import Fraction

import numpy as np
import pytest

from mamol.core import metrics

# Reference classes in rows, predictions in columns.
#            pred 0  pred 1  pred 2 | row total
# ref 0        5       1       0    |    6
# ref 1        2       3       1    |    6
# ref 2        0       0       4    |    4
# col total    7       4       5    |   16
MATRIX = np.array([[5, 1, 0], [2, 3, 1], [0, 0, 4]])


def test_overall_accuracy_by_hand():
    # trace 5 + 3 + 4 = 12 of 16 samples
    assert metrics.overall_accuracy(MATRIX) == pytest.approx(12 / 16)


def test_kappa_by_hand():
    # p_o = 12/16 = 192/256
    # p_e = (6*7 + 6*4 + 4*5) / 16**2 = (42 + 24 + 20) / 256 = 86/256
    # kappa = (192/256 - 86/256) / (1 - 86/256) = 106/170 = 53/85
    expected = Fraction(53, 85)
    assert metrics.cohen_kappa(MATRIX) == pytest.approx(float(expected), abs=1e-12)


def test_per_class_by_hand():
    # producer's = diagonal / row total, user's = diagonal / column total
    assert metrics.producers_accuracy(MATRIX) == pytest.approx([5 / 6, 3 / 6, 4 / 4])
    assert metrics.users_accuracy(MATRIX) == pytest.approx([5 / 7, 3 / 4, 4 / 5])
    # F1 = 2 TP / (row total + column total): 10/13, 6/10, 8/9
    assert metrics.f1_scores(MATRIX) == pytest.approx([10 / 13, 6 / 10, 8 / 9])


def test_f1_is_harmonic_mean_of_pa_and_ua():
    pa, ua = metrics.producers_accuracy(MATRIX), metrics.users_accuracy(MATRIX)
    assert metrics.f1_scores(MATRIX) == pytest.approx(2 * pa * ua / (pa + ua))


def test_confusion_matrix_rows_are_reference():
    reference = np.array([0, 0, 0, 1])
    predicted = np.array([0, 1, 1, 1])
    # two reference-0 samples predicted as 1: they sit in row 0, column 1
    expected = [[1, 2], [0, 1]]
    matrix = metrics.confusion_matrix(reference, predicted, 2)
    assert matrix.dtype == np.int64
    assert matrix.tolist() == expected


def test_confusion_matrix_rebuilds_the_hand_matrix():
    pairs = [(i, j) for i in range(3) for j in range(3) for _ in range(MATRIX[i, j])]
    rng = np.random.default_rng(0)
    rng.shuffle(pairs)
    reference, predicted = (np.array(column) for column in zip(*pairs))
    assert metrics.confusion_matrix(reference, predicted, 3).tolist() == MATRIX.tolist()


def test_confusion_matrix_accepts_whole_float_labels_and_2d_arrays():
    reference = np.array([[0.0, 1.0], [2.0, 2.0]])
    predicted = np.array([[0, 1], [2, 1]])
    assert metrics.confusion_matrix(reference, predicted, 3).tolist() == [
        [1, 0, 0], [0, 1, 0], [0, 1, 1]]


def test_confusion_matrix_keeps_unused_classes():
    matrix = metrics.confusion_matrix(np.array([1, 1]), np.array([1, 1]), 4)
    assert matrix.shape == (4, 4)
    assert matrix[1, 1] == 2 and matrix.sum() == 2


@pytest.mark.parametrize("reference, predicted", [
    ([0, 1, 3], [0, 1, 1]),          # 3 is outside 0..2
    ([0, 1, 2], [0, -1, 1]),         # negative
    ([0, 1.5, 2], [0, 1, 2]),        # not a whole number
    ([0, float("nan"), 2], [0, 1, 2]),
])
def test_invalid_labels_raise(reference, predicted):
    with pytest.raises(ValueError):
        metrics.confusion_matrix(np.array(reference), np.array(predicted), 3)


def test_different_lengths_raise():
    with pytest.raises(ValueError):
        metrics.confusion_matrix(np.array([0, 1, 2]), np.array([0, 1]), 3)


def test_non_square_matrix_raises():
    with pytest.raises(ValueError):
        metrics.overall_accuracy(np.zeros((2, 3), dtype=int))


def test_perfect_agreement_several_classes():
    matrix = np.diag([3, 5, 2])
    assert metrics.overall_accuracy(matrix) == 1.0
    assert metrics.cohen_kappa(matrix) == 1.0
    assert metrics.producers_accuracy(matrix).tolist() == [1.0, 1.0, 1.0]
    assert metrics.users_accuracy(matrix).tolist() == [1.0, 1.0, 1.0]
    assert metrics.f1_scores(matrix).tolist() == [1.0, 1.0, 1.0]


def test_one_class_only_perfect_agreement_has_no_kappa():
    # p_e = 1 makes the kappa formula 0/0: agreement cannot be told from chance
    matrix = metrics.confusion_matrix(np.zeros(7, int), np.zeros(7, int), 3)
    assert matrix[0, 0] == 7
    assert metrics.overall_accuracy(matrix) == 1.0
    assert math.isnan(metrics.cohen_kappa(matrix))
    summary = metrics.summarise(matrix, ["a", "b", "c"])
    assert summary["kappa"] is None and summary["reference_classes"] == 1
    assert metrics.one_class_flag(summary) == f" [{metrics.ONE_CLASS_NOTE}]"


def test_one_reference_class_with_varied_predictions_is_flagged():
    # reference all class 0, predictions 0,0,1: p_o = p_e = 2/3, kappa 0; still one class
    matrix = metrics.confusion_matrix(np.zeros(3, int), np.array([0, 0, 1]), 2)
    summary = metrics.summarise(matrix, ["a", "b"])
    assert summary["kappa"] == pytest.approx(0.0) and summary["reference_classes"] == 1
    assert metrics.one_class_flag(metrics.summarise(MATRIX, ["x"] * MATRIX.shape[0])) == ""


def test_completely_wrong_predictions():
    # rows 3, 2; columns 2, 3; n = 5
    # p_o = 0, p_e = (3*2 + 2*3) / 25 = 12/25, kappa = (0 - 12/25) / (13/25) = -12/13
    matrix = np.array([[0, 3], [2, 0]])
    assert metrics.overall_accuracy(matrix) == 0.0
    assert metrics.cohen_kappa(matrix) == pytest.approx(-12 / 13)
    assert metrics.producers_accuracy(matrix).tolist() == [0.0, 0.0]
    assert metrics.users_accuracy(matrix).tolist() == [0.0, 0.0]
    assert metrics.f1_scores(matrix).tolist() == [0.0, 0.0]


def test_chance_level_kappa_is_zero():
    # every cell 1: p_o = 2/4, p_e = (2*2 + 2*2)/16 = 1/2, kappa = 0
    assert metrics.cohen_kappa(np.ones((2, 2), int)) == pytest.approx(0.0)


def test_empty_input():
    matrix = metrics.confusion_matrix(np.array([]), np.array([]), 3)
    assert matrix.shape == (3, 3) and matrix.sum() == 0
    assert math.isnan(metrics.overall_accuracy(matrix))
    assert math.isnan(metrics.cohen_kappa(matrix))
    assert np.isnan(metrics.producers_accuracy(matrix)).all()
    assert np.isnan(metrics.users_accuracy(matrix)).all()
    assert np.isnan(metrics.f1_scores(matrix)).all()
    zero_classes = metrics.confusion_matrix(np.array([], int), np.array([], int), 0)
    assert zero_classes.shape == (0, 0)
    assert math.isnan(metrics.overall_accuracy(zero_classes))
    assert math.isnan(metrics.cohen_kappa(zero_classes))


def test_nan_only_where_denominator_is_zero():
    # class 2 is never in the reference and never predicted; class 1 is never predicted
    matrix = np.array([[4, 0, 0], [1, 0, 0], [0, 0, 0]])
    pa = metrics.producers_accuracy(matrix)
    ua = metrics.users_accuracy(matrix)
    f1 = metrics.f1_scores(matrix)
    assert pa[:2].tolist() == [1.0, 0.0] and math.isnan(pa[2])
    assert ua[0] == pytest.approx(4 / 5) and math.isnan(ua[1]) and math.isnan(ua[2])
    # class 1: 2*0 / (1 + 0) = 0; class 2: 0 / 0 = nan
    assert f1[0] == pytest.approx(8 / 9) and f1[1] == 0.0 and math.isnan(f1[2])


def test_summarise_values_and_json():
    summary = metrics.summarise(np.array([[4, 0, 0], [1, 0, 0], [0, 0, 0]]),
                                ["water", "forest", "urban"])
    text = json.dumps(summary, allow_nan=False)
    assert "NaN" not in text
    assert summary["samples"] == 5
    assert summary["oa"] == pytest.approx(4 / 5)
    # p_o = 4/5, p_e = (4*5 + 1*0 + 0*0) / 25 = 4/5 -> kappa 0
    assert summary["kappa"] == pytest.approx(0.0)
    assert summary["confusion_matrix"] == [[4, 0, 0], [1, 0, 0], [0, 0, 0]]
    urban = summary["per_class"][2]
    assert urban == {"name": "urban", "reference_samples": 0, "predicted_samples": 0,
                     "producers_accuracy": None, "users_accuracy": None, "f1": None}
    forest = summary["per_class"][1]
    assert forest["reference_samples"] == 1 and forest["predicted_samples"] == 0
    assert forest["producers_accuracy"] == 0.0 and forest["users_accuracy"] is None
    assert json.loads(text) == summary


def test_summarise_types_are_plain_python():
    summary = metrics.summarise(MATRIX, ["a", "b", "c"])
    assert type(summary["samples"]) is int
    assert type(summary["oa"]) is float and type(summary["kappa"]) is float
    assert all(type(v) is int for row in summary["confusion_matrix"] for v in row)
    assert summary["kappa"] == pytest.approx(53 / 85)


def test_summarise_empty_matrix_gives_none():
    summary = metrics.summarise(np.zeros((2, 2), int), ["a", "b"])
    assert summary["samples"] == 0 and summary["oa"] is None and summary["kappa"] is None
    json.dumps(summary, allow_nan=False)


def test_summarise_needs_one_name_per_class():
    with pytest.raises(ValueError):
        metrics.summarise(MATRIX, ["a", "b"])
