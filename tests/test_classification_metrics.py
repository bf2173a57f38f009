import json
import sys

import matplotlib
import numpy as np
import pytest
from PIL import Image
from sklearn import metrics as sk

from mmkeras.metrics.classification import best_thresholds
from mmkeras.metrics.classification import classification_report
from mmkeras.metrics.classification import confusion_matrix
from mmkeras.metrics.classification import format_report
from mmkeras.metrics.classification import multilabel_report
from mmkeras.metrics.classification import top_confusions
from mmkeras.metrics.plots import plot_confusion_matrix

TOLERANCE = 1e-9


def _names(num_classes):
    return [f"class_{index}" for index in range(num_classes)]


def _single_label_case(seed, num_classes, num_examples, true_classes, pred_classes):
    rng = np.random.default_rng(seed)
    y_true = rng.choice(true_classes, size=num_examples)
    # About half right, so that scores are far from 0; the rest and every class
    # outside `pred_classes` are replaced by a random class of `pred_classes`.
    y_pred = np.where(
        (rng.random(num_examples) < 0.5) & np.isin(y_true, pred_classes),
        y_true,
        rng.choice(pred_classes, size=num_examples),
    )
    return y_true, y_pred


SINGLE_LABEL_CASES = {
    # 13 classes: 11 never predicted, 12 never present, 10 neither.
    **{
        f"13_classes_seed_{seed}": (seed, 13, 200, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11],
                                    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12])
        for seed in range(4)
    },
    "13_classes_all_present": (7, 13, 300, list(range(13)), list(range(13))),
    "binary": (1, 2, 50, [0, 1], [0, 1]),
    "binary_only_one_class_predicted": (2, 2, 30, [0, 1], [1]),
    "single_true_class": (3, 4, 20, [2], [0, 1, 2, 3]),
    "tiny": (4, 3, 3, [0, 1, 2], [0, 1, 2]),
}


def _assert_close(actual, expected, what):
    assert type(actual) is float, what
    assert actual == pytest.approx(expected, rel=0, abs=TOLERANCE), what


@pytest.mark.parametrize(
    "case", SINGLE_LABEL_CASES.values(), ids=SINGLE_LABEL_CASES.keys()
)
def test_classification_report_matches_sklearn(case):
    _, num_classes, num_examples, _, _ = case
    y_true, y_pred = _single_label_case(*case)
    names = _names(num_classes)
    labels = list(range(num_classes))
    report = classification_report(y_true, y_pred, names)
    expected = sk.classification_report(
        y_true, y_pred, labels=labels, target_names=names, output_dict=True,
        zero_division=0,
    )

    assert list(report["per_class"]) == names
    for name in names:
        for key, sk_key in (("precision", "precision"), ("recall", "recall"),
                            ("f1", "f1-score")):
            _assert_close(report["per_class"][name][key], expected[name][sk_key],
                          f"{name} {key}")
        assert report["per_class"][name]["support"] == expected[name]["support"]
        assert type(report["per_class"][name]["support"]) is int
    _assert_close(report["accuracy"], expected["accuracy"], "accuracy")
    _assert_close(report["accuracy"], sk.accuracy_score(y_true, y_pred), "accuracy")
    for average in ("macro", "weighted"):
        for key, sk_key in (("precision", "precision"), ("recall", "recall"),
                            ("f1", "f1-score")):
            _assert_close(report[f"{average}_{key}"],
                          expected[f"{average} avg"][sk_key], f"{average} {key}")
        _assert_close(
            report[f"{average}_f1"],
            sk.f1_score(y_true, y_pred, labels=labels, average=average,
                        zero_division=0),
            f"{average} f1_score",
        )
    assert report["confusion_matrix"] == sk.confusion_matrix(
        y_true, y_pred, labels=labels).tolist()
    assert report["num_examples"] == num_examples
    json.dumps(report)


def test_absent_classes_score_zero_and_lower_the_macro_average():
    names = ["a", "b", "c", "d"]
    report = classification_report([0, 0, 1, 1], [0, 0, 1, 1], names)
    assert report["accuracy"] == 1.0
    assert report["per_class"]["d"] == {
        "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0
    }
    # Macro averages run over all 4 labels; weighted ones ignore empty labels.
    assert report["macro_f1"] == 0.5
    assert report["weighted_f1"] == 1.0


def test_confusion_matrix_matches_sklearn():
    y_true, y_pred = _single_label_case(5, 13, 400, list(range(12)), list(range(1, 13)))
    matrix = confusion_matrix(y_true, y_pred, num_classes=13)
    assert matrix.dtype == np.int64
    assert matrix.shape == (13, 13)
    np.testing.assert_array_equal(
        matrix, sk.confusion_matrix(y_true, y_pred, labels=range(13)))
    assert matrix.sum() == 400


def _multilabel_case(seed, num_examples=60, num_labels=7):
    rng = np.random.default_rng(seed)
    y_true = rng.random((num_examples, num_labels)) < 0.4
    y_pred = np.where(rng.random((num_examples, num_labels)) < 0.7, y_true,
                      rng.random((num_examples, num_labels)) < 0.5)
    y_true[:, 0] = False  # never present
    y_pred[:, 1] = False  # never predicted
    y_true[:, 2] = y_pred[:, 2] = False  # neither
    y_pred[:5] = y_true[:5]  # some exact matches
    return y_true.astype(np.int64), y_pred.astype(np.int64)


@pytest.mark.parametrize("seed", range(4))
def test_multilabel_report_matches_sklearn(seed):
    y_true, y_pred = _multilabel_case(seed)
    names = _names(y_true.shape[1])
    labels = list(range(len(names)))
    report = multilabel_report(y_true, y_pred, names)
    expected = sk.classification_report(
        y_true, y_pred, labels=labels, target_names=names, output_dict=True,
        zero_division=0,
    )
    for name in names:
        for key, sk_key in (("precision", "precision"), ("recall", "recall"),
                            ("f1", "f1-score")):
            _assert_close(report["per_class"][name][key], expected[name][sk_key],
                          f"{name} {key}")
        assert report["per_class"][name]["support"] == expected[name]["support"]
    for average in ("micro", "macro", "weighted"):
        for key, sk_key in (("precision", "precision"), ("recall", "recall"),
                            ("f1", "f1-score")):
            _assert_close(report[f"{average}_{key}"],
                          expected[f"{average} avg"][sk_key], f"{average} {key}")
        _assert_close(report[f"{average}_f1"],
                      sk.f1_score(y_true, y_pred, average=average, zero_division=0),
                      f"{average} f1_score")
    _assert_close(report["accuracy"], sk.accuracy_score(y_true, y_pred), "accuracy")
    _assert_close(report["hamming_accuracy"], 1 - sk.hamming_loss(y_true, y_pred),
                  "hamming")
    assert report["num_examples"] == len(y_true)
    assert 0 < report["accuracy"] < report["hamming_accuracy"] < 1
    json.dumps(report)


def test_multilabel_report_without_any_label_matches_sklearn():
    y_true = np.zeros((4, 3), dtype=bool)
    y_pred = y_true.copy()
    y_pred[0, 1] = True
    report = multilabel_report(y_true, y_pred, ["a", "b", "c"])
    for average in ("micro", "macro", "weighted"):
        assert report[f"{average}_f1"] == sk.f1_score(
            y_true, y_pred, average=average, zero_division=0) == 0.0
    assert report["accuracy"] == 0.75


def _f1_at(y_true, probabilities, thresholds):
    return sk.f1_score(y_true, probabilities > thresholds, average=None,
                       zero_division=0)


def test_best_thresholds_beat_half_where_a_label_needs_a_high_threshold():
    rng = np.random.default_rng(0)
    num_examples = 200
    y_true = rng.random((num_examples, 3)) < 0.3
    probabilities = np.empty((num_examples, 3))
    # Label 0 is over-confident: negatives reach 0.55..0.75, positives 0.8..0.95.
    probabilities[:, 0] = np.where(y_true[:, 0], rng.uniform(0.8, 0.95, num_examples),
                                   rng.uniform(0.55, 0.75, num_examples))
    # Label 1 separates anywhere in (0.3, 0.7): the tie goes to 0.5.
    probabilities[:, 1] = np.where(y_true[:, 1], 0.7, 0.3)
    # Label 2 never occurs: every threshold scores 0, so it keeps 0.5.
    y_true[:, 2] = False
    probabilities[:, 2] = rng.random(num_examples)

    thresholds = best_thresholds(y_true, probabilities)
    assert thresholds.dtype == np.float64 and thresholds.shape == (3,)
    assert 0.75 <= thresholds[0] < 0.8
    assert thresholds[1] == 0.5
    assert thresholds[2] == 0.5
    tuned = _f1_at(y_true, probabilities, thresholds)
    at_half = _f1_at(y_true, probabilities, 0.5)
    assert tuned[0] == 1.0 > at_half[0] + 0.2
    # No grid point does better on any label.
    grid = np.round(np.arange(1, 20) * 0.05, 2)
    best = np.max([_f1_at(y_true, probabilities, t) for t in grid], axis=0)
    np.testing.assert_allclose(tuned, best, rtol=0, atol=TOLERANCE)


def test_best_thresholds_ties_prefer_closest_to_half_then_smaller():
    y_true = [[1, 1], [0, 0]]
    probabilities = [[0.9, 0.65], [0.1, 0.35]]
    # Label 0 is perfect anywhere in [0.1, 0.9); label 1 in [0.35, 0.65) and
    # scores 2/3 at 0.2 and 0.3, 0 at 0.8.
    assert best_thresholds(y_true, probabilities, grid=[0.2, 0.3, 0.8]).tolist() == [
        0.3, 0.3]
    # 0.4 and 0.6 are equally close to 0.5: the smaller wins, in any grid order.
    for grid in ([0.4, 0.6], [0.6, 0.4]):
        assert best_thresholds(y_true, probabilities, grid=grid).tolist() == [0.4, 0.4]
    # Strictly greater: a probability equal to the threshold is not predicted.
    assert best_thresholds([[1], [0]], [[0.5], [0.2]], grid=[0.2, 0.5]).tolist() == [
        0.2]


def test_format_report_equals_sklearn_text():
    for case in SINGLE_LABEL_CASES.values():
        y_true, y_pred = _single_label_case(*case)
        names = _names(case[1])
        report = classification_report(y_true, y_pred, names)
        for digits in (2, 4):
            expected = sk.classification_report(
                y_true, y_pred, labels=range(len(names)), target_names=names,
                digits=digits, zero_division=0)
            assert format_report(report, digits=digits) == expected


def test_format_report_long_names_widen_the_table():
    names = ["a very long label name", "b"]
    text = format_report(classification_report([0, 1, 1], [0, 1, 0], names))
    assert text == sk.classification_report(
        [0, 1, 1], [0, 1, 0], target_names=names, digits=4, zero_division=0)


def _table_rows(text):
    return [line.split() for line in text.splitlines() if line.strip()]


def test_format_report_of_multilabel_report():
    y_true, y_pred = _multilabel_case(0)
    names = _names(y_true.shape[1])
    report = multilabel_report(y_true, y_pred, names)
    rows = _table_rows(format_report(report, digits=3))
    expected = _table_rows(sk.classification_report(
        y_true, y_pred, target_names=names, digits=3, zero_division=0))
    # Header, one row per label, then micro, macro and weighted avg as sklearn
    # (whose name column is narrower: it has no accuracy lines).
    num_rows = 1 + len(names) + 3
    assert rows[:num_rows] == expected[:num_rows]
    assert expected[num_rows][:2] == ["samples", "avg"]
    assert rows[num_rows:] == [
        ["subset", "accuracy", f"{report['accuracy']:.3f}", str(len(y_true))],
        ["hamming", "accuracy", f"{report['hamming_accuracy']:.3f}", str(len(y_true))],
    ]


def test_top_confusions_orders_by_count_then_row_major():
    matrix = [[9, 3, 0, 1],
              [5, 8, 3, 0],
              [0, 0, 7, 0],
              [1, 3, 0, 2]]
    names = ["a", "b", "c", "d"]
    assert top_confusions(matrix, names, k=4) == [
        ("b", "a", 5), ("a", "b", 3), ("b", "c", 3), ("d", "b", 3)]
    # Diagonal and zero cells never appear, however large k is.
    assert top_confusions(matrix, names, k=100) == [
        ("b", "a", 5), ("a", "b", 3), ("b", "c", 3), ("d", "b", 3),
        ("a", "d", 1), ("d", "a", 1)]
    assert top_confusions(np.eye(4, dtype=int) * 5, names) == []
    assert top_confusions(matrix, names, k=0) == []
    assert all(type(count) is int for _, _, count in top_confusions(matrix, names))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: confusion_matrix([0, 1], [0], 2), r"len\(y_true\)=2, len\(y_pred\)=1"),
        (lambda: confusion_matrix([0, 3], [0, 1], 3), r"y_true\[1\]=3"),
        (lambda: confusion_matrix([0, 1], [-1, 1], 3), r"y_pred\[0\]=-1"),
        (lambda: confusion_matrix([0.0, 1.0], [0, 1], 2), "y_true of dtype float64"),
        (lambda: confusion_matrix([[0, 1]], [0, 1], 2), r"y_true with shape \(1, 2\)"),
        (lambda: confusion_matrix([], [], 2), "empty `y_true`"),
        (lambda: confusion_matrix([0], [0], 0), "num_classes=0"),
        (lambda: confusion_matrix([0], [0], True), "num_classes=True"),
        (lambda: classification_report([0, 1], [0, 1], ["a"]), r"y_true\[1\]=1"),
        (lambda: classification_report([0], [0], "ab"), "label_names='ab'"),
        (lambda: classification_report([0], [0], ["a", "a"]), r"duplicates: \['a'\]"),
        (lambda: classification_report([0], [0], [1]), r"label_names\[0\]=1"),
        (lambda: classification_report([0], [0], []), "at least one class"),
        (lambda: multilabel_report([[1, 0]], [[0.7, 0]], ["a", "b"]),
         r"y_pred\[0, 0\]=0.7"),
        (lambda: multilabel_report([[1, 0]], [[1, 0, 1]], ["a", "b"]),
         r"y_pred with shape \(1, 3\)"),
        (lambda: multilabel_report([[1, 0]], [[1, 0], [0, 0]], ["a", "b"]),
         r"len\(y_true\)=1, len\(y_pred\)=2"),
        (lambda: multilabel_report([1, 0], [1, 0], ["a", "b"]),
         r"y_true with shape \(2,\)"),
        (lambda: best_thresholds([[1, 0]], [[0.5, 0.5, 0.5]]),
         r"probabilities with shape \(1, 3\)"),
        (lambda: best_thresholds([[1, 0]], [[np.nan, 0.5]]), "finite"),
        (lambda: best_thresholds([[1, 0]], [[0.5, 0.5]], grid=[]), r"grid=\[\]"),
        (lambda: best_thresholds([[2, 0]], [[0.5, 0.5]]), r"y_true\[0, 0\]=2"),
        (lambda: top_confusions([[1, 0], [0, 1]], ["a"]), r"matrix with shape \(2, 2\)"),
        (lambda: top_confusions([[1, -1], [0, 1]], ["a", "b"]), r"matrix\[0, 1\]=-1"),
        (lambda: top_confusions([[1.5, 0], [0, 1]], ["a", "b"]), "dtype float64"),
        (lambda: top_confusions([[1, 0], [0, 1]], ["a", "b"], k=-1), "k=-1"),
        (lambda: format_report({"accuracy": 1.0}), "report="),
        (lambda: format_report(classification_report([0], [0], ["a"]), digits=-1),
         "digits=-1"),
        (lambda: plot_confusion_matrix([[1, 0]], ["a", "b"], "x.png"),
         r"matrix with shape \(1, 2\)"),
    ],
)
def test_invalid_inputs_name_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def _plot_and_read(tmp_path, matrix, names, **kwargs):
    path = tmp_path / f"confusion_{len(names)}.png"
    assert plot_confusion_matrix(matrix, names, path, **kwargs) == path
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


@pytest.mark.parametrize("num_classes", [3, 40])
def test_plot_confusion_matrix_writes_a_png(tmp_path, num_classes, monkeypatch):
    rng = np.random.default_rng(num_classes)
    y_true = rng.integers(0, num_classes, 500)
    y_pred = np.where(rng.random(500) < 0.6, y_true, rng.integers(0, num_classes, 500))
    matrix = confusion_matrix(y_true, y_pred, num_classes)
    names = [f"label {index}" for index in range(num_classes)]

    # pyplot may not even be importable, and the global backend must stay put.
    monkeypatch.setitem(matplotlib.rcParams, "backend", "svg")
    with monkeypatch.context() as blocked:
        blocked.setitem(sys.modules, "matplotlib.pyplot", None)
        pixels = _plot_and_read(tmp_path, matrix, names, title="Validation")
    assert matplotlib.get_backend() == "svg"

    height, width, _ = pixels.shape
    minimum = 300 if num_classes == 3 else 1200
    assert minimum <= min(height, width) and max(height, width) <= 3000
    rgb = pixels.reshape(-1, 3).astype(np.int64)
    assert len(np.unique(rgb[:, 0] << 16 | rgb[:, 1] << 8 | rgb[:, 2])) > 50


def _dark_blue_pixels(pixels):
    red, blue = pixels[..., 0].astype(int), pixels[..., 2].astype(int)
    return int(np.sum((red < 80) & (blue > 100)))


def test_plot_normalize_colours_rows_by_rate(tmp_path):
    # Both diagonal cells hold 90% of their row, but one row has 100x the
    # examples: by rate two cells are dark, by raw count only one is.
    matrix = [[900, 100], [1, 9]]
    (tmp_path / "rates").mkdir()
    (tmp_path / "counts").mkdir()
    rates = _plot_and_read(tmp_path / "rates", matrix, ["a", "b"])
    counts = _plot_and_read(tmp_path / "counts", matrix, ["a", "b"], normalize=False)
    assert rates.shape == counts.shape
    assert _dark_blue_pixels(rates) > 1.5 * _dark_blue_pixels(counts) > 0


def test_correct_examples_is_the_rule_accuracy_averages():
    from mmkeras.metrics import correct_examples

    rng = np.random.default_rng(0)
    ids_true, ids_pred = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    assert correct_examples(ids_true, ids_pred).mean() == pytest.approx(
        classification_report(ids_true, ids_pred, ["a", "b", "c", "d"])["accuracy"])
    hot_true, hot_pred = rng.integers(0, 2, (200, 3)), rng.integers(0, 2, (200, 3))
    assert correct_examples(hot_true, hot_pred).mean() == pytest.approx(
        multilabel_report(hot_true, hot_pred, ["a", "b", "c"])["accuracy"])
    with pytest.raises(ValueError, match=r"Received shapes \(3,\) and \(3, 1\)"):
        correct_examples([0, 1, 2], [[0], [1], [2]])
