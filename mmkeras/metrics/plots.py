"""Plots written straight to PNG files: confusion matrices, attention maps, training curves.

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


# Attention panels: inches per panel side (its title included), of a panel's
# title and of the grid's title, and panels per row of the grid.
_PANEL_INCHES = 1.7
_PANEL_TITLE_INCHES = 0.25
_TITLE_INCHES = 0.35
_MAX_COLUMNS = 6


def _check_image(image):
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"`image` must be an array (height, width, 3). Received shape {image.shape}")
    return np.clip(image, 0, 255).astype(np.uint8)


def plot_attention_grid(image, words, maps, path, title=None, max_columns=_MAX_COLUMNS):
    """Writes the image, then one heat-map panel per word, as a PNG grid.

    Each map is drawn over the image, stretched to its size with bilinear
    interpolation, and coloured from 0 to its own maximum, so that a sharp
    and a diffuse map are both visible; a map that is uniform (no preference)
    shows as one flat colour.

    Args:
        image: uint8 array-like `(height, width, 3)`.
        words: list of str, the panel titles, one per map.
        maps: float array-like `(len(words), grid_height, grid_width)`, e.g.
            attention over an image token grid.
        path: str, path-like or binary file object to write the PNG to.
        title: optional str above the grid.
        max_columns: int, panels per row.

    Returns:
        `path`, unchanged.

    Example:

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "attention.png")
    >>> image = np.zeros((32, 32, 3), "uint8")
    >>> plot_attention_grid(image, ["a", "dog"], np.ones((2, 4, 4)) / 16, path) == path
    True
    """
    image = _check_image(image)
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim != 3 or maps.shape[0] != len(words):
        raise ValueError(
            "`maps` must be (len(words), grid_height, grid_width). "
            f"Received: {len(words)} words and maps of shape {maps.shape}"
        )
    if not isinstance(max_columns, int) or max_columns < 1:
        raise ValueError(f"`max_columns` must be a positive int. Received: max_columns={max_columns}")
    panels = 1 + len(words)
    columns = min(panels, max_columns)
    rows = -(-panels // columns)
    title_inches = _TITLE_INCHES if title else 0.0
    height_inches = _PANEL_INCHES * rows + title_inches
    figure = Figure(figsize=(_PANEL_INCHES * columns, height_inches), dpi=_DPI)
    FigureCanvasAgg(figure)
    # Fixed margins, not a constrained layout: the panels are all alike, and
    # layout solving took half the time of a 20-word grid.
    figure.subplots_adjust(
        left=0.02 / columns, right=1 - 0.02 / columns, bottom=0.02 / rows,
        top=1 - (title_inches + _PANEL_TITLE_INCHES) / height_inches,
        wspace=0.08, hspace=_PANEL_TITLE_INCHES / (_PANEL_INCHES - _PANEL_TITLE_INCHES),
    )
    height, width = image.shape[:2]
    extent = (-0.5, width - 0.5, height - 0.5, -0.5)
    for i in range(rows * columns):
        axes = figure.add_subplot(rows, columns, i + 1)
        axes.set_axis_off()
        if i >= panels:
            continue
        axes.imshow(image, interpolation="nearest")
        if i == 0:
            axes.set_title("image", fontsize=9)
            continue
        heat = maps[i - 1]
        peak = float(heat.max())
        axes.imshow(
            heat, cmap="jet", alpha=0.5, extent=extent, interpolation="bilinear",
            vmin=0.0, vmax=peak if peak > 0 else 1.0,
        )
        axes.set_title(str(words[i - 1]), fontsize=9)
    if title:
        figure.suptitle(str(title), fontsize=10, y=1 - 0.08 / height_inches, va="top")
    figure.savefig(path, format="png")
    return path


# Curves of a training log and the keys they are read from, first found wins.
_CURVES = (
    ("loss", ("loss",), ("val_loss",)),
    ("accuracy", ("token_accuracy", "accuracy"), ("val_token_accuracy", "val_accuracy")),
    ("learning rate", ("learning_rate",), ()),
    ("self-critical reward (CIDEr-D)", ("reward",), ()),
)
# A captioner in self-critical training logs token accuracy only over its
# teacher-forcing steps and the reward only over its self-critical ones; an
# interval without such steps logs exactly 0, which the curves leave out.
_ZERO_IS_UNMEASURED = ("token_accuracy", "reward")


def plot_training_curves(records, path, title=None):
    """Writes loss, accuracy, learning rate (and a self-critical reward) against the step as a PNG.

    Args:
        records: iterable of dicts with a `"step"` and any of `"loss"`,
            `"token_accuracy"` or `"accuracy"`, `"learning_rate"`, `"reward"` (training)
            and `"val_loss"`, `"val_token_accuracy"` or `"val_accuracy"`
            (validation, drawn as points), e.g. the lines of a run's
            `logs/train_log.jsonl`. Records without a step are skipped.
        path: str, path-like or binary file object to write the PNG to.
        title: optional str above the panels.

    Returns:
        `path`, unchanged.

    Raises:
        ValueError: if no record has a step and one of those values.

    Example:

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "curves.png")
    >>> records = [{"step": s, "loss": 1 / s, "learning_rate": 1e-3} for s in (1, 2, 3)]
    >>> plot_training_curves(records, path) == path
    True
    """
    records = [r for r in records if isinstance(r, dict) and isinstance(r.get("step"), (int, float))]

    def series(keys):
        for key in keys:
            points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))
                      and not (key in _ZERO_IS_UNMEASURED and r[key] == 0)]
            if points:
                return key, points
        return None, []

    panels = []
    for name, train_keys, val_keys in _CURVES:
        train_key, train = series(train_keys)
        val_key, val = series(val_keys)
        if train or val:
            panels.append((name, train_key, train, val_key, val))
    if not panels:
        raise ValueError("No record has a step and a loss, accuracy or learning rate to plot.")
    figure = Figure(figsize=(4.0 * len(panels), 3.0), dpi=_DPI)
    FigureCanvasAgg(figure)
    # Fixed margins (0.6 in for the first panel's tick labels) rather than a
    # constrained layout, which costs as much as drawing.
    figure.subplots_adjust(left=0.6 / (4.0 * len(panels)), right=0.98, bottom=0.16,
                           top=0.82 if title else 0.9, wspace=0.3)
    for i, (name, train_key, train, val_key, val) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), i + 1)
        if train:
            steps, values = zip(*train)
            axes.plot(steps, values, label=train_key, color="tab:blue")
        if val:
            steps, values = zip(*val)
            axes.plot(steps, values, "o--", label=val_key, color="tab:orange")
        axes.set_xlabel("step")
        axes.set_title(name)
        axes.grid(True, alpha=0.3)
        if name == "learning rate":
            axes.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        if train and val:
            axes.legend(fontsize=8)
    if title:
        figure.suptitle(str(title))
    figure.savefig(path, format="png")
    return path
