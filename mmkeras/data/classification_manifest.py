"""Reader of generic image+text classification manifests (CSV or JSONL).

One row per example: an image, a text (a question, a report, a caption) and
its label, or its labels for multi-label data. The format follows the caption
manifests of `mmkeras.data.caption_manifest` (the same CSV rules, split names
and hash split, from `manifest_io` and `splits`), so a data set can be described
once for both kinds of task.
"""

import csv
import os

from mmkeras.data.classification_records import ClassificationData
from mmkeras.data.classification_records import ClassificationRecord
from mmkeras.data.manifest_io import check_exists
from mmkeras.data.manifest_io import clean_text
from mmkeras.data.manifest_io import manifest_format
from mmkeras.data.manifest_io import manifest_key
from mmkeras.data.manifest_io import read_csv_rows
from mmkeras.data.manifest_io import read_jsonl_objects
from mmkeras.data.manifest_io import resolve_path
from mmkeras.data.records import LoadReport
from mmkeras.data.records import image_file_checker
from mmkeras.data.records import reject_example
from mmkeras.data.splits import SPLITS
from mmkeras.data.splits import checked_split
from mmkeras.data.splits import hash_split

# In a CSV `labels` cell, labels are separated by this character.
LABEL_SEPARATOR = "|"


def _csv_label_column(path):
    with open(path, newline="", encoding="utf-8-sig") as f:
        header = next(csv.reader(f), None) or []
    columns = {column.strip().lower() for column in header}
    if "label" in columns and "labels" in columns:
        raise ValueError(
            f"{path} row 1: the CSV header has both 'label' (single-label) and "
            f"'labels' (multi-label); keep one. Received header: {header}"
        )
    if "labels" in columns:
        return "labels"
    if "label" in columns:
        return "label"
    raise ValueError(
        f"{path} row 1: the CSV header must have the columns image, text and "
        f"label (or labels for multi-label data). Received header: {header}"
    )


def _rows_csv(path, skip_bad_examples, report):
    """Yields `(where, image, text, labels, split, multi_label)` of a CSV."""
    label_column = _csv_label_column(path)
    required = ("image", "text", label_column)
    for number, row in read_csv_rows(path, required, skip_bad_examples, report):
        cell = row[label_column]
        if label_column == "labels":
            labels = cell.split(LABEL_SEPARATOR)
        else:
            labels = [cell]
        yield (f"{path} row {number}", row["image"], row["text"], labels,
               row.get("split"), label_column == "labels")


def _rows_jsonl(path, skip_bad_examples, report):
    """Yields `(where, image, text, labels, split, multi_label)` of a JSONL."""
    for _, where, row in read_jsonl_objects(path, skip_bad_examples, report):
        missing = [key for key in ("image", "text") if key not in row]
        if "label" not in row and "labels" not in row:
            missing.append("label (or labels)")
        if missing:
            reject_example(where, f"missing {', '.join(missing)}",
                           skip_bad_examples, report)
            continue
        if "label" in row and "labels" in row:
            reject_example(where, "has both 'label' and 'labels'; keep one",
                           skip_bad_examples, report)
            continue
        multi_label = "labels" in row
        labels = row["labels"] if multi_label else [row["label"]]
        if not isinstance(labels, list) or not all(
            isinstance(label, str) for label in labels
        ):
            reject_example(
                where, "'label' must be a string and 'labels' a list of strings",
                skip_bad_examples, report,
            )
            continue
        if not isinstance(row["image"], str) or not isinstance(row["text"], str):
            reject_example(where, "'image' and 'text' must be strings",
                           skip_bad_examples, report)
            continue
        split = row.get("split")
        yield (where, row["image"], row["text"], labels,
               None if split is None else str(split), multi_label)


def load_classification_manifest(path, skip_bad_examples=False, label_names=None):
    """Loads an image+text classification manifest.

    CSV: a header with columns `image`, `text` and `label` (single-label) or
    `labels` (multi-label, separated by `|`), optionally `split`. JSONL: one
    object per line with `image`, `text` and `label` (a string) or `labels` (a
    list of strings), optionally `split`; the data is multi-label if any line
    has `labels`. Image paths are relative to the manifest's folder. Splits come
    from the `split` column (`train`, `val`/`validation`/`dev`, `test`);
    without one, an image goes to train/validation/test (80/10/10) by a stable
    hash of its path as written, so all rows of an image share a split.

    Bad rows raise `BadExampleError` naming the file and the row, or with
    `skip_bad_examples=True` are counted and left out: a missing field, an
    empty text, a missing, empty or corrupt image, no label, a label outside
    `label_names` (when given) or, when `label_names` is None, a validation or
    test label that no training row has.

    Args:
        path: the manifest file; `.jsonl` and `.ndjson` are JSONL, others CSV.
        skip_bad_examples: count and leave out bad rows instead of raising.
        label_names: every label in class-id order; None uses the sorted labels
            of the training rows.

    Returns:
        A `ClassificationData`; records in file order.
    """
    path = os.path.normpath(os.fspath(path))
    check_exists(path, "Classification manifest")
    if label_names is not None:
        label_names = list(label_names)
        if len(set(label_names)) != len(label_names) or not label_names:
            raise ValueError(
                "`label_names` must be non-empty and without duplicates. "
                f"Received: label_names={label_names}"
            )
    report = LoadReport()
    if manifest_format(path) == "jsonl":
        rows = _rows_jsonl(path, skip_bad_examples, report)
    else:
        rows = _rows_csv(path, skip_bad_examples, report)

    base_dir = os.path.dirname(path)
    parsed = []
    multi_label = False
    image_is_fine = image_file_checker(skip_bad_examples, report)
    for where, image, text, labels, split, row_multi_label in rows:
        multi_label = multi_label or row_multi_label
        image = image.strip()
        if not image:
            reject_example(where, "missing image path", skip_bad_examples, report)
            continue
        text = clean_text(text)
        if not text:
            reject_example(where, "empty text", skip_bad_examples, report)
            continue
        labels = tuple(dict.fromkeys(l.strip() for l in labels if l.strip()))
        if not labels:
            reject_example(where, "no label", skip_bad_examples, report)
            continue
        if split is not None:
            split = checked_split(split, where, skip_bad_examples, report)
            if split is None:
                continue
        else:
            split = hash_split(manifest_key(image))
        image_path = resolve_path(base_dir, image)
        if not image_is_fine(image_path, where):
            continue
        parsed.append((split, ClassificationRecord(image_path, text, labels, where)))

    train_labels = {l for split, r in parsed if split == "train" for l in r.labels}
    if label_names is None:
        if not train_labels:
            raise ValueError(
                f"{path} has no usable training rows, so it defines no labels. "
                "Give `label_names` to read a manifest without training rows."
            )
        known, source = train_labels, "no training row has it"
        names = sorted(train_labels)
    else:
        known, source = set(label_names), f"not in label_names {label_names}"
        names = label_names
    splits = {name: [] for name in SPLITS}
    for split, record in parsed:
        unknown = [l for l in record.labels if l not in known]
        if unknown:
            reject_example(
                record.origin,
                f"label {', '.join(repr(l) for l in unknown)} is unknown ({source})",
                skip_bad_examples,
                report,
            )
            continue
        splits[split].append(record)

    report.count_examples(splits)
    return ClassificationData(
        splits=splits, label_names=names, multi_label=multi_label, report=report
    )
