"""Reader of generic CSV and JSONL caption manifests.

CSV: a header with columns `image` and `caption`, optionally `split`; one row per
caption. JSONL: one object per line with `image` and `caption` (a string) or
`captions` (a list of strings), optionally `split`. Image paths are relative to
the manifest's folder. `caption_manifest_rows` reads the rows of either;
`load_caption_manifest` groups them by image in memory, and the streaming reader
`tfrecords.iter_caption_manifest` groups consecutive rows. Bad rows and images
are handled as in every caption reader (see `caption_formats`).
"""

import os
import typing

from mmkeras.data.caption_groups import ImageGroup
from mmkeras.data.caption_groups import describe_rows
from mmkeras.data.caption_groups import records_from_groups
from mmkeras.data.manifest_io import ROW_UNITS
from mmkeras.data.manifest_io import check_exists
from mmkeras.data.manifest_io import manifest_format
from mmkeras.data.manifest_io import manifest_key
from mmkeras.data.manifest_io import read_csv_rows
from mmkeras.data.manifest_io import read_jsonl_objects
from mmkeras.data.manifest_io import resolve_path
from mmkeras.data.records import LoadReport
from mmkeras.data.records import reject_example
from mmkeras.data.splits import checked_split
from mmkeras.data.splits import hash_split


class ManifestRow(typing.NamedTuple):
    """One usable row of a caption manifest (a tuple: a manifest has millions).

    Args:
        number: its CSV row or JSONL line number.
        where: the file and row, for messages (`"/x/a.csv row 7"`).
        key: the image path as written, normalised (`manifest_io.manifest_key`):
            rows with one key are one image, and the hash split hashes it.
        image: the image path as written, stripped (`image_path` resolves it;
            a reader resolves it once per image, not per row).
        captions: the row's captions as written (one for CSV).
        split: the normalised split name, or None if the row names none.
    """

    number: int
    where: str
    key: str
    image: str
    captions: list
    split: str | None


def _rows_csv(path, skip_bad_examples, report):
    """Yields `(row_number, image, [captions], split or None)` from a CSV manifest."""
    for number, row in read_csv_rows(path, ("image", "caption"), skip_bad_examples, report):
        yield number, row["image"], [row["caption"]], row.get("split")


def _rows_jsonl(path, skip_bad_examples, report):
    """Yields `(line_number, image, [captions], split or None)` from JSONL."""
    for number, where, row in read_jsonl_objects(path, skip_bad_examples, report):
        if "caption" in row:
            captions = [row["caption"]]
        elif "captions" in row:
            captions = row["captions"]
            if not isinstance(captions, list):
                captions = None
        else:
            reject_example(where, "missing 'caption' or 'captions'",
                           skip_bad_examples, report)
            continue
        if captions is None or not all(isinstance(c, str) for c in captions):
            reject_example(
                where, "'caption' must be a string and 'captions' a list of "
                "strings", skip_bad_examples, report,
            )
            continue
        image = row.get("image")
        if image is not None and not isinstance(image, str):
            image = None
        split = row.get("split")
        yield number, image, captions, None if split is None else str(split)


def caption_manifest_rows(path, file_format, skip_bad_examples, report):
    """Yields the `ManifestRow`s of a caption manifest, in file order.

    Rows without an image path or with an unknown split name are rejected
    (`records.reject_example`); captions are passed on as written (empty ones
    too: grouping drops and counts them).

    Args:
        path: the manifest file (normalised).
        file_format: `"csv"` or `"jsonl"` (see `manifest_io.manifest_format`).
        skip_bad_examples: count bad rows in `report` instead of raising
            `BadExampleError`.
        report: the `LoadReport` that counts skipped rows.
    """
    read = _rows_jsonl if file_format == "jsonl" else _rows_csv
    unit = ROW_UNITS[file_format]
    for number, image, captions, split in read(path, skip_bad_examples, report):
        where = f"{path} {unit} {number}"
        if image is None or not image.strip():
            reject_example(where, "missing image path", skip_bad_examples, report)
            continue
        if split is not None:
            split = checked_split(split, where, skip_bad_examples, report)
            if split is None:
                continue
        yield ManifestRow(
            number=number,
            where=where,
            key=manifest_key(image),
            image=image.strip(),
            captions=captions,
            split=split,
        )


def image_path(manifest, row):
    """The path of a `ManifestRow`'s image file: relative paths are under the manifest's folder."""
    return resolve_path(os.path.dirname(manifest), row.image)


def load_caption_manifest(path, skip_bad_examples=False, report=None,
                          file_format=None):
    """Loads a generic CSV or JSONL caption manifest.

    CSV: a header with columns `image` and `caption`, optionally `split`; one row
    per caption. JSONL: one object per line with `image` and `caption` (a string)
    or `captions` (a list of strings), optionally `split`. Image paths are relative
    to the manifest's folder. Rows of the same image are grouped into one record.
    Splits come from the `split` column/field (`train`, `val`/`validation`/`dev`,
    `test`); without one, images are split 80/10/10 by a stable hash of their path
    as written in the manifest.

    Args:
        path: the manifest file.
        skip_bad_examples: count and leave out bad rows and images instead of
            raising `BadExampleError`.
        report: a `LoadReport` to fill; a new one if None.
        file_format: `"csv"` or `"jsonl"`; None picks JSONL for `.jsonl` and
            `.ndjson` files and CSV otherwise.

    Returns:
        `{"train": [...], "validation": [...], "test": [...]}` of `CaptionRecord`s in
        the order of their first row.
    """
    report = LoadReport() if report is None else report
    path = os.path.normpath(os.fspath(path))
    check_exists(path, "Caption manifest")
    file_format = manifest_format(path, file_format)
    unit = ROW_UNITS[file_format]
    groups = {}
    for row in caption_manifest_rows(path, file_format, skip_bad_examples, report):
        group = groups.get(row.key)
        if group is not None and group.split != row.split:
            reject_example(
                row.where,
                f"image {row.key} is in split {row.split} here but in split "
                f"{group.split} in {describe_rows(path, unit, group.numbers)}",
                skip_bad_examples,
                report,
            )
            continue
        if group is None:
            group = groups[row.key] = ImageGroup(
                key=row.key, path=image_path(path, row), split=row.split
            )
        group.numbers.append(row.number)
        for caption in row.captions:
            group.add_caption(caption, report)

    return records_from_groups(
        list(groups.values()),
        assign=lambda group: group.split or hash_split(group.key),
        describe=lambda group: describe_rows(path, unit, group.numbers),
        skip_bad_examples=skip_bad_examples,
        report=report,
    )
