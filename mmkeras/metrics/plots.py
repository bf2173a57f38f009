"""Confusion-matrix plot written straight to a PNG file.

Uses matplotlib's object-oriented API (`Figure` + the Agg canvas) and never
`pyplot`: pyplot keeps global figure state and may switch the process-wide
backend, which the training CLI and the notebooks that import mmkeras must
not have changed under them.
"""

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mmkeras.metrics.classification import _as_confusion_matrix
from mmkeras.metrics.classification import _validate_label_names

# Above this many classes the count in each cell is unreadable and is left out.
_MAX_ANNOTATED_CLASSES = 30
# Inches per class: at 100 dpi a cell stays ~30 px, enough for a 4-digit count.
_INCHES_PER_CLASS = 0.3
_DPI = 100


def plot_confusion_matrix(matrix, label_names, path, title=None, normalize=True):
    """Writes a confusion matrix as a PNG heat map.

    The figure grows with the number of classes so that up to ~50 stay
    readable; x tick labels are rotated when there are many classes or long
    names, and above 30 classes the per-cell counts are omitted.

    Args:
        matrix: integer array-like of shape `(num_classes, num_classes)`, rows
            are true classes (e.g. `classification_report(...)["confusion_matrix"]`).
        label_names: list of unique str, one per row.
        path: str or path-like of the PNG to write; its folder must exist.
        title: str, the title. Defaults to `"Confusion matrix"`.
        normalize: bool. If True (default), colour each cell by its share of
            the true class (its row); a row without examples stays 0. If
            False, colour by the raw count. Cells are annotated with counts
            either way.

    Returns:
        `path`, unchanged.

    Example:

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "confusion.png")
    >>> plot_confusion_matrix([[5, 1], [2, 7]], ["cat", "dog"], path) == path
    True
    """
    label_names = _validate_label_names(label_names)
    counts = _as_confusion_matrix(matrix, label_names)
    if title is not None and not isinstance(title, str):
        raise ValueError(f"`title` must be a string or None. Received: title={title!r}")
    num_classes = len(label_names)
    row_totals = counts.sum(axis=1, keepdims=True)
    if normalize:
        colours = np.divide(
            counts, row_totals, out=np.zeros(counts.shape), where=row_totals > 0
        )
        vmax = 1.0
    else:
        colours = counts.astype(np.float64)
        vmax = max(1.0, float(counts.max()))

    side = max(4.0, _INCHES_PER_CLASS * num_classes + 2.0)
    # Extra width for the colour bar and the y tick labels.
    figure = Figure(figsize=(side + 1.5, side), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(colours, cmap="Blues", vmin=0.0, vmax=vmax)
    figure.colorbar(
        image,
        ax=axes,
        shrink=0.8,
        label="fraction of the true class" if normalize else "count",
    )

    tick_size = 10 if num_classes <= 20 else 8
    positions = np.arange(num_classes)
    axes.set_xticks(positions)
    axes.set_yticks(positions)
    longest_name = max(len(name) for name in label_names)
    if num_classes > 20:
        axes.set_xticklabels(label_names, rotation=90, fontsize=tick_size)
    elif longest_name > 4 or num_classes > 10:
        axes.set_xticklabels(
            label_names,
            rotation=45,
            ha="right",
            rotation_mode="anchor",
            fontsize=tick_size,
        )
    else:
        axes.set_xticklabels(label_names, fontsize=tick_size)
    axes.set_yticklabels(label_names, fontsize=tick_size)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title if title is not None else "Confusion matrix")

    if num_classes <= _MAX_ANNOTATED_CLASSES:
        annotation_size = 10 if num_classes <= 10 else 7
        for row in range(num_classes):
            for column in range(num_classes):
                # Light text on the dark half of the colour map stays legible.
                dark = colours[row, column] > 0.5 * vmax
                axes.text(
                    column,
                    row,
                    str(counts[row, column]),
                    ha="center",
                    va="center",
                    fontsize=annotation_size,
                    color="white" if dark else "black",
                )
    figure.savefig(path, format="png")
    return path
