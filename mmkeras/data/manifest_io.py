"""Reading manifest files: CSV and JSONL rows, image paths, texts.

The low-level reading shared by the caption manifests (`caption_manifest`, and
its streaming reader in `tfrecords`), the classification manifests
(`classification_manifest`) and the Flickr8k `captions.txt`, so that all of them
read CSV, resolve image paths and clean texts alike. A bad row is rejected with
`records.reject_example`, naming the file and the row.
"""

import csv
import json
import os
import posixpath

from mmkeras.data.records import reject_example

# A manifest with one of these suffixes is JSONL, any other CSV.
JSONL_SUFFIXES = (".jsonl", ".ndjson")
MANIFEST_FORMATS = ("csv", "jsonl")
# What a row is called in messages: CSV rows (the header is row 1), JSONL lines.
ROW_UNITS = {"csv": "row", "jsonl": "line"}


def manifest_format(path, file_format=None):
    """`"csv"` or `"jsonl"`: `file_format` checked, or picked by the suffix of `path`."""
    if file_format is None:
        return "jsonl" if os.fspath(path).lower().endswith(JSONL_SUFFIXES) else "csv"
    if file_format not in MANIFEST_FORMATS:
        raise ValueError(
            f"`file_format` must be 'csv', 'jsonl' or None. Received: "
            f"file_format={file_format!r}"
        )
    return file_format


def check_exists(path, what):
    """Raises `FileNotFoundError` naming `what` (e.g. "Caption manifest") if `path` is absent."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} {path} does not exist.")


def clean_text(text):
    """`text` with runs of white space folded to one space and the ends stripped."""
    return " ".join(text.split())


def resolve_path(base_dir, image):
    """The normalised path of `image`: as is when absolute, else under `base_dir`."""
    image = os.path.expanduser(image)
    if os.path.isabs(image):
        return os.path.normpath(image)
    return os.path.normpath(os.path.join(base_dir, image))


def manifest_key(image):
    """An image path as written in a manifest, normalised with `/` separators.

    The key that groups the rows of one image and that `splits.hash_split` hashes,
    so the same image written `a/./b.jpg` or `a\\b.jpg` is one image in one split.
    """
    return posixpath.normpath(image.strip().replace("\\", "/"))


def read_csv_rows(path, required, skip_bad_examples, report):
    """Yields `(row_number, {column: value})` for the rows of a CSV with a header.

    Column names are lowercased. Row numbers are file line numbers (the header is
    row 1); blank rows are passed over. Rows whose number of fields differs from
    the header's are bad examples.

    Args:
        path: the CSV file.
        required: column names the header must have.
        skip_bad_examples: count bad rows in `report` instead of raising
            `BadExampleError`.
        report: the `LoadReport` that counts skipped rows.
    """
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path} is empty: expected a CSV header with columns "
                             f"{', '.join(required)}.")
        columns = [column.strip().lower() for column in header]
        missing = [column for column in required if column not in columns]
        if missing:
            raise ValueError(
                f"{path} row 1: the CSV header must have the columns "
                f"{', '.join(required)}; missing {', '.join(missing)}. "
                f"Received header: {header}"
            )
        while True:
            number = reader.line_num + 1
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                reject_example(
                    f"{path} row {number}", f"malformed CSV ({e})",
                    skip_bad_examples, report,
                )
                continue
            if not fields or not any(field.strip() for field in fields):
                continue
            if len(fields) < len(columns):
                reject_example(
                    f"{path} row {number}",
                    f"missing {', '.join(columns[len(fields):])} (the row has "
                    f"{len(fields)} fields, the header {len(columns)})",
                    skip_bad_examples,
                    report,
                )
                continue
            if len(fields) > len(columns):
                reject_example(
                    f"{path} row {number}",
                    f"has {len(fields)} fields but the header has {len(columns)} "
                    "(quote fields that contain commas)",
                    skip_bad_examples,
                    report,
                )
                continue
            yield number, dict(zip(columns, fields))


def read_jsonl_objects(path, skip_bad_examples, report):
    """Yields `(line_number, where, row)` for each JSON object line of a JSONL manifest.

    Blank lines are passed over; a line that is not valid JSON or not an
    object is rejected (`reject_example`), naming the file and line.
    """
    with open(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path} line {number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                reject_example(where, f"bad JSON ({e.msg})", skip_bad_examples, report)
                continue
            if not isinstance(row, dict):
                reject_example(where, "expected a JSON object", skip_bad_examples, report)
                continue
            yield number, where, row
