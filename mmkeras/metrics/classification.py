"""Single-label and multi-label classification metrics, in numpy.

Every number equals scikit-learn's (`classification_report`, `f1_score`,
`accuracy_score`, `hamming_loss` with `zero_division=0`); the tests check this.
scikit-learn is only a test dependency: this module needs numpy alone.

Conventions shared by every function:

- A ratio whose denominator is 0 is 0.0 (sklearn's `zero_division=0`):
  precision of a label never predicted, recall of a label never present, F1
  of a label neither present nor predicted.
- F1 is `2 * tp / (support + predicted)`, as sklearn computes it.
- Macro averages are unweighted means over *all* labels, including labels
  with no support and no predictions, which score 0 and so pull the macro
  averages down. This is sklearn's `classification_report(...,
  labels=range(num_classes), zero_division=0)`. Weighted averages weight each
  label by its support and are unaffected by such labels.
- Reports hold Python `int`s, `float`s, lists and dicts only, so they can be
  written with `json.dump`.
"""

import numpy as np

# Column headings of `format_report`, as sklearn's `classification_report` prints them.
_HEADERS = ("precision", "recall", "f1-score", "support")


def _validate_label_names(label_names):
    if isinstance(label_names, str) or not hasattr(label_names, "__len__"):
        raise ValueError(
            "`label_names` must be a list of strings, one per class. Received: "
            f"label_names={label_names!r}"
        )
    label_names = list(label_names)
    if not label_names:
        raise ValueError("`label_names` must name at least one class. Received: []")
    for index, name in enumerate(label_names):
        if not isinstance(name, str):
            raise ValueError(
                "Every label name must be a string. Received: "
                f"label_names[{index}]={name!r}"
            )
    if len(set(label_names)) != len(label_names):
        duplicates = sorted({name for name in label_names if label_names.count(name) > 1})
        raise ValueError(
            f"`label_names` must be unique. Received duplicates: {duplicates}"
        )
    return label_names


def _validate_num_classes(num_classes):
    if (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, (int, np.integer))
        or num_classes < 1
    ):
        raise ValueError(
            "`num_classes` must be a positive integer. Received: "
            f"num_classes={num_classes!r}"
        )
    return int(num_classes)


def _as_class_ids(name, values, num_classes):
    """Checks 1-D integer class ids in [0, num_classes) and returns an int64 array."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(
            f"`{name}` must be a 1-D sequence of class ids. Received: {name} with "
            f"shape {array.shape}"
        )
    if array.size == 0:
        raise ValueError(
            f"Classification metrics need at least one example. Received: empty `{name}`"
        )
    if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"`{name}` must hold integer class ids (take the argmax of "
            f"probabilities first). Received: {name} of dtype {array.dtype}"
        )
    outside = np.flatnonzero((array < 0) | (array >= num_classes))
    if outside.size:
        index = outside[0]
        raise ValueError(
            f"Class ids must lie in [0, {num_classes}). Received: "
            f"{name}[{index}]={array[index]}"
        )
    return array.astype(np.int64)


def _as_multi_hot(name, values, num_labels=None):
    """Checks an (n, num_labels) array of 0/1 and returns it as bool.

    `num_labels=None` accepts any number of columns.
    """
    array = np.asarray(values)
    if array.ndim != 2 or (num_labels is not None and array.shape[1] != num_labels):
        expected = "num_labels" if num_labels is None else num_labels
        raise ValueError(
            f"`{name}` must be a multi-hot array of shape (num_examples, "
            f"{expected}). Received: {name} with shape {array.shape}"
        )
    if array.shape[0] == 0:
        raise ValueError(
            f"Classification metrics need at least one example. Received: empty `{name}`"
        )
    if array.dtype != bool:
        if not np.issubdtype(array.dtype, np.number):
            raise ValueError(
                f"`{name}` must hold 0 and 1. Received: {name} of dtype {array.dtype}"
            )
        not_binary = np.argwhere((array != 0) & (array != 1))
        if not_binary.size:
            row, column = not_binary[0]
            raise ValueError(
                f"`{name}` must hold only 0 and 1 (threshold probabilities first, "
                f"see `best_thresholds`). Received: {name}[{row}, {column}]="
                f"{array[row, column]}"
            )
    return array.astype(bool)


def _check_same_length(y_true, y_pred):
    if len(y_true) != len(y_pred):
        raise ValueError(
            "`y_true` and `y_pred` must have one entry per example. Received: "
            f"len(y_true)={len(y_true)}, len(y_pred)={len(y_pred)}"
        )


def _as_confusion_matrix(matrix, label_names):
    """Checks a square non-negative integer matrix with one row per label."""
    array = np.asarray(matrix)
    num_classes = len(label_names)
    if array.shape != (num_classes, num_classes):
        raise ValueError(
            f"`matrix` must have shape ({num_classes}, {num_classes}), one row and "
            f"column per label name. Received: matrix with shape {array.shape}"
        )
    if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"`matrix` must hold integer counts. Received: matrix of dtype {array.dtype}"
        )
    negative = np.argwhere(array < 0)
    if negative.size:
        row, column = negative[0]
        raise ValueError(
            f"`matrix` must hold non-negative counts. Received: "
            f"matrix[{row}, {column}]={array[row, column]}"
        )
    return array.astype(np.int64)


def _divide(numerator, denominator):
    """Elementwise ratio, 0.0 where the denominator is 0 (zero_division=0)."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    return np.divide(
        numerator, denominator, out=np.zeros_like(numerator), where=denominator != 0
    )


def _per_class_and_averages(true_positives, support, predicted, label_names):
    """Per-label precision/recall/F1 and their macro and weighted averages."""
    precision = _divide(true_positives, predicted)
    recall = _divide(true_positives, support)
    f1 = _divide(2 * true_positives, support + predicted)
    per_class = {
        name: {
            "precision": float(precision[index]),
            "recall": float(recall[index]),
            "f1": float(f1[index]),
            "support": int(support[index]),
        }
        for index, name in enumerate(label_names)
    }
    total_support = support.sum()
    scores = {}
    for key, values in (("precision", precision), ("recall", recall), ("f1", f1)):
        scores[f"macro_{key}"] = float(values.mean())
        # sklearn's weighted average is 0.0 when no label has support.
        scores[f"weighted_{key}"] = (
            float(np.dot(values, support) / total_support) if total_support else 0.0
        )
    return per_class, scores


def confusion_matrix(y_true, y_pred, num_classes):
    """Counts of (true class, predicted class) pairs.

    Args:
        y_true: 1-D integer array-like, the true class id of each example.
        y_pred: 1-D integer array-like of the same length, the predicted ids.
        num_classes: int, the number of classes; ids lie in `[0, num_classes)`.

    Returns:
        An int64 array of shape `(num_classes, num_classes)`; entry `[i, j]`
        counts examples of true class `i` predicted as `j` (rows are true).

    Example:

    >>> confusion_matrix([0, 1, 1, 2], [0, 2, 1, 2], num_classes=3).tolist()
    [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    """
    num_classes = _validate_num_classes(num_classes)
    y_true = _as_class_ids("y_true", y_true, num_classes)
    y_pred = _as_class_ids("y_pred", y_pred, num_classes)
    _check_same_length(y_true, y_pred)
    flat = np.bincount(y_true * num_classes + y_pred, minlength=num_classes**2)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def classification_report(y_true, y_pred, label_names):
    """Accuracy, per-class and averaged precision/recall/F1 of class ids.

    Equals `sklearn.metrics.classification_report(y_true, y_pred,
    labels=range(len(label_names)), zero_division=0, output_dict=True)`: every
    label appears in `per_class`, also one absent from both `y_true` and
    `y_pred` (support 0, scores 0.0), and macro averages run over all labels
    (see the module docstring).

    Args:
        y_true: 1-D integer array-like, the true class id of each example.
        y_pred: 1-D integer array-like of the same length, the predicted ids.
        label_names: list of unique str; class `i` is `label_names[i]`.

    Returns:
        A dict with `"accuracy"`, `"macro_precision"`, `"macro_recall"`,
        `"macro_f1"`, `"weighted_precision"`, `"weighted_recall"`,
        `"weighted_f1"` (floats), `"per_class"` (`{label: {"precision",
        "recall", "f1", "support"}}` in class-id order), `"confusion_matrix"`
        (list of lists of int, rows are true classes) and `"num_examples"`.

    Example:

    >>> report = classification_report([0, 0, 1, 2], [0, 1, 1, 1],
    ...                                ["cat", "dog", "bird"])
    >>> report["accuracy"], report["per_class"]["dog"]["precision"]
    (0.5, 0.3333333333333333)
    >>> round(report["macro_f1"], 4), report["per_class"]["bird"]["support"]
    (0.3889, 1)
    """
    label_names = _validate_label_names(label_names)
    matrix = confusion_matrix(y_true, y_pred, num_classes=len(label_names))
    true_positives = np.diag(matrix)
    per_class, scores = _per_class_and_averages(
        true_positives, matrix.sum(axis=1), matrix.sum(axis=0), label_names
    )
    num_examples = int(matrix.sum())
    return {
        "accuracy": float(true_positives.sum() / num_examples),
        **scores,
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
        "num_examples": num_examples,
    }


def multilabel_report(y_true, y_pred, label_names):
    """Subset and Hamming accuracy, per-label and averaged F1 of multi-hot labels.

    Per-label scores and the macro / weighted averages follow
    `classification_report` (and equal sklearn's on multi-hot input); the
    micro average pools true positives, supports and predictions over labels
    before dividing.

    Args:
        y_true: array-like of 0/1 (or bool), shape `(num_examples, num_labels)`.
        y_pred: array-like of 0/1 (or bool) of the same shape, e.g.
            `probabilities > best_thresholds(...)`.
        label_names: list of unique str; column `j` is `label_names[j]`.

    Returns:
        A dict with `"accuracy"` (the fraction of examples whose whole label
        set is right, sklearn's `accuracy_score`), `"hamming_accuracy"` (the
        fraction of right (example, label) entries, `1 - hamming_loss`),
        `"micro_precision"`, `"micro_recall"`, `"micro_f1"`, the macro and
        weighted precision/recall/F1 as in `classification_report`,
        `"per_class"` and `"num_examples"`.

    Example:

    >>> report = multilabel_report([[1, 0], [1, 1], [0, 1]],
    ...                            [[1, 0], [1, 0], [0, 1]], ["sky", "sea"])
    >>> round(report["accuracy"], 4), round(report["hamming_accuracy"], 4)
    (0.6667, 0.8333)
    >>> report["micro_f1"], report["per_class"]["sea"]["recall"]
    (0.8571428571428571, 0.5)
    """
    label_names = _validate_label_names(label_names)
    y_true = _as_multi_hot("y_true", y_true, len(label_names))
    y_pred = _as_multi_hot("y_pred", y_pred, len(label_names))
    _check_same_length(y_true, y_pred)
    true_positives = np.sum(y_true & y_pred, axis=0)
    support = y_true.sum(axis=0)
    predicted = y_pred.sum(axis=0)
    per_class, scores = _per_class_and_averages(
        true_positives, support, predicted, label_names
    )
    micro_tp, micro_support, micro_predicted = (
        true_positives.sum(),
        support.sum(),
        predicted.sum(),
    )
    return {
        "accuracy": float(np.all(y_true == y_pred, axis=1).mean()),
        "hamming_accuracy": float((y_true == y_pred).mean()),
        "micro_precision": float(_divide(micro_tp, micro_predicted)),
        "micro_recall": float(_divide(micro_tp, micro_support)),
        "micro_f1": float(_divide(2 * micro_tp, micro_support + micro_predicted)),
        **scores,
        "per_class": per_class,
        "num_examples": int(y_true.shape[0]),
    }


def correct_examples(y_true, y_pred):
    """Whether each example is right: the per-example rule `accuracy` averages.

    1-D class ids: the predicted class is the true one. 2-D multi-hot rows:
    the whole predicted label set is the true one (subset accuracy, as
    `multilabel_report`'s `"accuracy"`). Its mean is the reported accuracy;
    `bootstrap_interval` of it, the accuracy's confidence interval.

    Args:
        y_true: class ids `(n,)` or multi-hot `(n, num_labels)`.
        y_pred: the same shape.

    Returns:
        A bool array `(n,)`.

    Example:
    >>> correct_examples([0, 2, 1], [0, 1, 1]).tolist()
    [True, False, True]
    >>> correct_examples([[1, 0], [1, 1]], [[1, 0], [0, 1]]).tolist()
    [True, False]
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim not in (1, 2):
        raise ValueError("`y_true` and `y_pred` must both be class ids (n,) or multi-hot rows (n, labels). "
                         f"Received shapes {y_true.shape} and {y_pred.shape}")
    return np.all(y_true == y_pred, axis=1) if y_true.ndim == 2 else y_true == y_pred


def best_thresholds(y_true, probabilities, grid=None):
    """The per-label threshold that maximises each label's F1 on the given data.

    A label is predicted where `probabilities > threshold` (strictly, like
    `keras.metrics.F1Score`), so apply the result as
    `y_pred = probabilities > thresholds`. Tune on validation data, not on the
    data you report. Among thresholds with the same F1 the one closest to 0.5
    wins, then the smaller one; a label with no positive example thus keeps 0.5
    (every threshold scores 0).

    Args:
        y_true: array-like of 0/1 (or bool), shape `(num_examples, num_labels)`.
        probabilities: float array-like of the same shape, e.g. sigmoid outputs.
        grid: 1-D array-like of candidate thresholds. Defaults to
            0.05, 0.10, ..., 0.95.

    Returns:
        A float64 array of shape `(num_labels,)`.

    Example:

    >>> best_thresholds([[1, 1], [0, 1], [0, 0]],
    ...                 [[0.9, 0.6], [0.7, 0.4], [0.2, 0.1]]).tolist()
    [0.7, 0.35]
    """
    y_true = _as_multi_hot("y_true", y_true)
    probabilities = np.asarray(probabilities)
    if probabilities.shape != y_true.shape:
        raise ValueError(
            "`probabilities` must have the shape of `y_true`. Received: "
            f"probabilities with shape {probabilities.shape}, y_true with shape "
            f"{y_true.shape}"
        )
    if not np.issubdtype(probabilities.dtype, np.number) or not np.all(
        np.isfinite(probabilities)
    ):
        raise ValueError(
            "`probabilities` must hold finite numbers. Received: probabilities of "
            f"dtype {probabilities.dtype} with non-finite or non-numeric values"
        )
    if grid is None:
        grid = np.round(np.arange(1, 20) * 0.05, 2)
    grid = np.asarray(grid, dtype=np.float64)
    if grid.ndim != 1 or grid.size == 0 or not np.all(np.isfinite(grid)):
        raise ValueError(
            "`grid` must be a non-empty 1-D array of finite thresholds. Received: "
            f"grid={grid.tolist()}"
        )
    support = y_true.sum(axis=0)
    f1 = np.empty((grid.size, y_true.shape[1]))
    for row, threshold in enumerate(grid):
        y_pred = probabilities > threshold
        true_positives = np.sum(y_true & y_pred, axis=0)
        f1[row] = _divide(2 * true_positives, support + y_pred.sum(axis=0))
    # Equal counts give bit-identical F1, so `==` finds every tie. Rounding the
    # distance keeps 0.45 and 0.55 equally close to 0.5 despite float error.
    distance = np.round(np.abs(grid - 0.5), 12)
    preference = np.lexsort((grid, distance))
    is_best = f1[preference] == f1.max(axis=0)
    return grid[preference][np.argmax(is_best, axis=0)]


def top_confusions(matrix, label_names, k=5):
    """The `k` most frequent mistakes of a confusion matrix.

    Args:
        matrix: integer array-like of shape `(num_classes, num_classes)`, rows
            are true classes (e.g. `report["confusion_matrix"]`).
        label_names: list of unique str, one per row.
        k: int >= 0, the number of mistakes to return.

    Returns:
        A list of at most `k` tuples `(true_label, predicted_label, count)` for
        the non-zero off-diagonal cells, largest count first; equal counts keep
        row-major order.

    Example:

    >>> top_confusions([[5, 2, 0], [4, 6, 1], [0, 2, 9]], ["a", "b", "c"], k=3)
    [('b', 'a', 4), ('a', 'b', 2), ('c', 'b', 2)]
    """
    label_names = _validate_label_names(label_names)
    matrix = _as_confusion_matrix(matrix, label_names)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"`k` must be a non-negative integer. Received: k={k!r}")
    mistakes = matrix.copy()
    np.fill_diagonal(mistakes, 0)
    flat = mistakes.ravel()
    # A stable sort on -count keeps row-major order among equal counts.
    order = np.argsort(-flat, kind="stable")[: int(k)]
    num_classes = len(label_names)
    return [
        (label_names[index // num_classes], label_names[index % num_classes], int(flat[index]))
        for index in order
        if flat[index] > 0
    ]


def flat_report_metrics(report):
    """The optional and per-class entries of a report as flat `eval_metrics.json` keys.

    Returns `micro_f1` / `hamming_accuracy` when present (multi-label) and
    `precision/<label>`, `recall/<label>`, `f1/<label>`, `support/<label>`.

    Example:
    >>> report = classification_report([0, 1], [0, 0], ["cat", "dog"])
    >>> flat_report_metrics(report)["support/dog"]
    1
    """
    flat = {key: report[key] for key in ("micro_f1", "hamming_accuracy") if key in report}
    for label, row in report["per_class"].items():
        for key in ("precision", "recall", "f1", "support"):
            flat[f"{key}/{label}"] = row[key]
    return flat


def format_report(report, digits=4):
    """A text table of a report, laid out like sklearn's `classification_report`.

    For a `classification_report` the text equals sklearn's
    `classification_report(..., labels=range(n), target_names=label_names,
    digits=digits, zero_division=0)`: one row per class, then accuracy, macro
    avg and weighted avg. For a `multilabel_report` the per-label rows are
    followed by micro, macro and weighted avg (as sklearn, without its samples
    avg), then subset accuracy and Hamming accuracy over `num_examples`.

    Args:
        report: dict returned by `classification_report` or `multilabel_report`.
        digits: int >= 0, the digits after the decimal point.

    Returns:
        The table as a str ending in a newline.

    Example:

    >>> report = classification_report([0, 1, 1], [0, 1, 0], ["cat", "dog"])
    >>> print(format_report(report, digits=2))
                  precision    recall  f1-score   support
    <BLANKLINE>
             cat       0.50      1.00      0.67         1
             dog       1.00      0.50      0.67         2
    <BLANKLINE>
        accuracy                           0.67         3
       macro avg       0.75      0.75      0.67         3
    weighted avg       0.83      0.67      0.67         3
    <BLANKLINE>
    """
    if not isinstance(report, dict) or "per_class" not in report:
        raise ValueError(
            "`report` must be a dict from `classification_report` or "
            f"`multilabel_report`. Received: report={report!r:.80}"
        )
    if isinstance(digits, bool) or not isinstance(digits, int) or digits < 0:
        raise ValueError(
            f"`digits` must be a non-negative integer. Received: digits={digits!r}"
        )
    multilabel = "hamming_accuracy" in report
    per_class = report["per_class"]
    total_support = sum(scores["support"] for scores in per_class.values())
    averages = ("micro", "macro", "weighted") if multilabel else ("macro", "weighted")
    accuracy_lines = (
        [("subset accuracy", "accuracy"), ("hamming accuracy", "hamming_accuracy")]
        if multilabel
        else [("accuracy", "accuracy")]
    )
    headings = [f"{average} avg" for average in averages]
    headings += [heading for heading, _ in accuracy_lines]
    width = max(max(len(name) for name in per_class), *map(len, headings), digits)

    row = "{:>{width}s} " + " {:>9.{digits}f}" * 3 + " {:>9}\n"
    accuracy_row = "{:>{width}s} " + " {:>9}" * 2 + " {:>9.{digits}f} {:>9}\n"
    header = "{:>{width}s} " + " {:>9}" * len(_HEADERS) + "\n\n"
    lines = [header.format("", *_HEADERS, width=width)]
    for name, scores in per_class.items():
        values = (scores["precision"], scores["recall"], scores["f1"], scores["support"])
        lines.append(row.format(name, *values, width=width, digits=digits))
    lines.append("\n")

    def average_line(average):
        values = [report[f"{average}_{key}"] for key in ("precision", "recall", "f1")]
        return row.format(f"{average} avg", *values, total_support, width=width, digits=digits)

    def accuracy_line(heading, key):
        return accuracy_row.format(
            heading, "", "", report[key], report["num_examples"], width=width, digits=digits
        )

    # sklearn puts accuracy first for single-label data; multi-label data has no
    # accuracy line there, so subset and Hamming accuracy follow the averages.
    if multilabel:
        lines.extend(average_line(average) for average in averages)
        lines.append("\n")
        lines.extend(accuracy_line(heading, key) for heading, key in accuracy_lines)
    else:
        lines.extend(accuracy_line(heading, key) for heading, key in accuracy_lines)
        lines.extend(average_line(average) for average in averages)
    return "".join(lines)
