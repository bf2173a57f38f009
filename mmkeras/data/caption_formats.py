"""Readers for image-caption data sets on disk.

Each reader returns `{"train": [...], "validation": [...], "test": [...]}` of
`CaptionRecord`s and fills a `LoadReport`:

- `load_flickr8k(directory)`: Flickr8k as distributed on Kaggle (`captions.txt`) or
  in its original form (`Flickr8k.token.txt` and the split files).
- `load_coco_captions(captions_json, image_dir)`: a COCO captions JSON, or a
  Karpathy-split JSON (`dataset_coco.json`, `dataset_flickr8k.json`).
- `load_caption_manifest(path)`: a generic CSV or JSONL manifest.
- `load_caption_data(spec)`: parses the `--data` flag of `training.train`.

Rows of one image are grouped into one record. Empty captions are dropped and
counted; a row without an image or a caption, or an image file that is missing or
corrupt, raises `BadExampleError` naming the file and the row unless
`skip_bad_examples=True`, which counts it and leaves it out. Splits are assigned
before bad images are left out, so skipping one never moves another image to a
different split.
"""

import csv
import dataclasses
import hashlib
import json
import os
import posixpath

from mmkeras.data.data_spec import DataSpec
from mmkeras.data.data_spec import parse_data_spec
from mmkeras.data.records import CaptionRecord
from mmkeras.data.records import LoadReport
from mmkeras.data.records import read_jsonl_objects
from mmkeras.data.records import reject_example
from mmkeras.data.records import validate_records

SPLITS = ("train", "validation", "test")

# Split names found in the wild; Karpathy's "restval" images are training images.
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "restval": "train",
    "val": "validation",
    "valid": "validation",
    "validation": "validation",
    "dev": "validation",
    "test": "test",
    "testing": "test",
}

_FLICKR8K_IMAGE_DIRS = ("images", "Images", "Flicker8k_Dataset", "Flickr8k_Dataset")
_FLICKR8K_TEXT_DIRS = ("", "Flickr8k_text")
_FLICKR8K_SPLIT_FILES = {
    "train": "Flickr_8k.trainImages.txt",
    "validation": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}
_JSONL_SUFFIXES = (".jsonl", ".ndjson")


@dataclasses.dataclass
class _Group:
    """The rows of one image while a file is read."""

    key: str
    path: str
    captions: list = dataclasses.field(default_factory=list)
    numbers: list = dataclasses.field(default_factory=list)
    split: str | None = None


def hash_split(key):
    """Assigns `key` (an image file name) to a split by a stable hash: 80/10/10.

    The hash is SHA-256, not Python's `hash()`, so the split is the same in every
    process and on every machine.
    """
    bucket = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")
    bucket %= 100
    if bucket < 80:
        return "train"
    if bucket < 90:
        return "validation"
    return "test"


def _normalize_split(value):
    return _SPLIT_ALIASES.get(str(value).strip().lower())


def checked_split(split, where, skip_bad_examples, report):
    """A row's split name normalised, or None after rejecting an unknown one."""
    name = _normalize_split(split)
    if name is None:
        reject_example(
            where, f"unknown split {split!r} (expected train, validation/val/dev or test)",
            skip_bad_examples, report,
        )
    return name


def _clean_caption(caption):
    return " ".join(caption.split())


def _describe_rows(path, unit, numbers):
    """`"/x/a.csv rows 2-6"`, `"/x/a.jsonl line 7"` or `"/x/a.csv rows 2, 9"`."""
    numbers = sorted(set(numbers))
    if len(numbers) == 1:
        return f"{path} {unit} {numbers[0]}"
    if numbers == list(range(numbers[0], numbers[-1] + 1)):
        return f"{path} {unit}s {numbers[0]}-{numbers[-1]}"
    shown = ", ".join(str(n) for n in numbers[:10])
    more = ", ..." if len(numbers) > 10 else ""
    return f"{path} {unit}s {shown}{more}"


def _resolve(base_dir, image):
    image = os.path.expanduser(image)
    if os.path.isabs(image):
        return os.path.normpath(image)
    return os.path.normpath(os.path.join(base_dir, image))


def _add_row(groups, key, path, caption, number, report):
    group = groups.get(key)
    if group is None:
        group = groups[key] = _Group(key=key, path=path)
    group.numbers.append(number)
    _add_caption(group, caption, report)


def _add_caption(group, caption, report):
    caption = _clean_caption(caption)
    if caption:
        group.captions.append(caption)
    else:
        report.dropped_empty_captions += 1


def _records_from_groups(groups, assign, describe, skip_bad_examples, report):
    """Splits grouped rows, drops images without captions and checks image files.

    Args:
        groups: `_Group`s in file order.
        assign: `_Group -> split name`, or None to leave the group out silently.
        describe: `_Group -> origin string`.
    """
    splits = {name: [] for name in SPLITS}
    for group in groups:
        split = assign(group)
        if split is None:
            continue
        origin = describe(group)
        if not group.captions:
            reject_example(
                origin,
                f"image {group.key} has no non-empty caption",
                skip_bad_examples,
                report,
            )
            continue
        splits[split].append(CaptionRecord(group.path, tuple(group.captions), origin))
    for name in SPLITS:
        splits[name] = validate_records(splits[name], skip_bad_examples, report)
    report.count(splits)
    return splits


def _read_csv(path, required, skip_bad_examples, report):
    """Yields `(row_number, {column: value})` for the rows of a CSV with a header.

    Row numbers are file line numbers (the header is row 1). Rows whose number of
    fields differs from the header's are bad examples.
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


def _new_report(report):
    return LoadReport() if report is None else report


def _check_exists(path, what):
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} {path} does not exist.")


def _find_flickr8k_file(directory, name):
    for sub in _FLICKR8K_TEXT_DIRS:
        candidate = os.path.join(directory, sub, name)
        if os.path.isfile(candidate):
            return candidate
    return None


def _read_flickr8k_token_file(path, image_dir, groups, skip_bad_examples, report):
    with open(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            name, tab, caption = line.partition("\t")
            image = name.rpartition("#")[0] if "#" in name else name
            if not tab:
                reject_example(
                    f"{path} line {number}",
                    "expected '<image>#<n><TAB><caption>', found no tab",
                    skip_bad_examples,
                    report,
                )
                continue
            if not image.strip():
                reject_example(
                    f"{path} line {number}", "missing image file name",
                    skip_bad_examples, report,
                )
                continue
            image = image.strip()
            _add_row(groups, image, os.path.join(image_dir, image), caption, number,
                     report)


def _read_flickr8k_captions_csv(path, image_dir, groups, skip_bad_examples, report):
    rows = _read_csv(path, ("image", "caption"), skip_bad_examples, report)
    for number, row in rows:
        image = row["image"].strip()
        if not image:
            reject_example(
                f"{path} row {number}", "missing image file name",
                skip_bad_examples, report,
            )
            continue
        _add_row(groups, image, os.path.join(image_dir, image), row["caption"],
                 number, report)


def load_flickr8k(directory, skip_bad_examples=False, report=None):
    """Loads Flickr8k from `directory`.

    Captions come from `captions.txt` (CSV with header `image,caption`, as on
    Kaggle) or the original `Flickr8k.token.txt` (`<image>#<n><TAB><caption>`);
    images from `images/`, `Images/` or `Flicker8k_Dataset/`. If the original split
    files (`Flickr_8k.trainImages.txt`, `Flickr_8k.devImages.txt`,
    `Flickr_8k.testImages.txt`) are present, they define the splits and images
    listed in none of them are left out; otherwise images sorted by file name are
    split 80/10/10 (for 1,000 images: 800/100/100).

    Args:
        directory: the Flickr8k folder.
        skip_bad_examples: count and leave out bad rows and images instead of
            raising `BadExampleError`.
        report: a `LoadReport` to fill; a new one if None.

    Returns:
        `{"train": [...], "validation": [...], "test": [...]}` of `CaptionRecord`s,
        each split sorted by file name.
    """
    report = _new_report(report)
    directory = os.path.normpath(os.fspath(directory))
    _check_exists(directory, "Flickr8k folder")
    image_dir = next(
        (
            os.path.join(directory, name)
            for name in _FLICKR8K_IMAGE_DIRS
            if os.path.isdir(os.path.join(directory, name))
        ),
        None,
    )
    if image_dir is None:
        raise FileNotFoundError(
            f"{directory} has no image folder: expected one of "
            f"{', '.join(name + '/' for name in _FLICKR8K_IMAGE_DIRS)}."
        )
    groups = {}
    captions_csv = os.path.join(directory, "captions.txt")
    token_file = _find_flickr8k_file(directory, "Flickr8k.token.txt")
    if os.path.isfile(captions_csv):
        captions_path = captions_csv
        _read_flickr8k_captions_csv(
            captions_csv, image_dir, groups, skip_bad_examples, report
        )
    elif token_file is not None:
        captions_path = token_file
        _read_flickr8k_token_file(
            token_file, image_dir, groups, skip_bad_examples, report
        )
    else:
        raise FileNotFoundError(
            f"{directory} has no captions: expected captions.txt (CSV with header "
            "image,caption) or Flickr8k.token.txt."
        )
    unit = "row" if captions_path == captions_csv else "line"

    split_files = {
        split: _find_flickr8k_file(directory, name)
        for split, name in _FLICKR8K_SPLIT_FILES.items()
    }
    present = [split for split, path in split_files.items() if path is not None]
    if present and len(present) < len(SPLITS):
        missing = [_FLICKR8K_SPLIT_FILES[s] for s in SPLITS if s not in present]
        raise FileNotFoundError(
            f"{directory} has only some of the Flickr8k split files; missing "
            f"{', '.join(missing)}. Provide all three or none (then images sorted by "
            "file name are split 80/10/10)."
        )
    if present:
        split_of = {}
        for split, path in split_files.items():
            with open(path, encoding="utf-8-sig") as f:
                for line in f:
                    if line.strip():
                        split_of.setdefault(line.strip(), split)
    else:
        names = sorted(groups)
        num_train = len(names) * 8 // 10
        num_train_validation = len(names) * 9 // 10
        split_of = {
            name: "train" if i < num_train
            else "validation" if i < num_train_validation
            else "test"
            for i, name in enumerate(names)
        }

    ordered = [groups[key] for key in sorted(groups)]
    return _records_from_groups(
        ordered,
        assign=lambda group: split_of.get(group.key),
        describe=lambda group: _describe_rows(captions_path, unit, group.numbers),
        skip_bad_examples=skip_bad_examples,
        report=report,
    )


def load_coco_captions(captions_json, image_dir, skip_bad_examples=False, report=None):
    """Loads a COCO captions JSON, or a Karpathy-split JSON.

    COCO format: `images` (`id`, `file_name`) and `annotations` (`image_id`,
    `caption`). Karpathy format (`dataset_coco.json`): `images` with `filename`,
    optional `filepath`, `sentences` (`raw`) and `split`. If images carry a `split`
    field (`train`, `restval`, `val`, `test`) it is used, otherwise images are split
    80/10/10 by a stable hash of their file name.

    Args:
        captions_json: the JSON file.
        image_dir: the folder that image file names are relative to.
        skip_bad_examples: count and leave out bad entries and images instead of
            raising `BadExampleError`.
        report: a `LoadReport` to fill; a new one if None.

    Returns:
        `{"train": [...], "validation": [...], "test": [...]}` of `CaptionRecord`s in
        the order of `images`.
    """
    report = _new_report(report)
    captions_json = os.path.normpath(os.fspath(captions_json))
    image_dir = os.path.normpath(os.fspath(image_dir))
    _check_exists(captions_json, "COCO captions file")
    _check_exists(image_dir, "COCO image folder")
    with open(captions_json, encoding="utf-8-sig") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{captions_json} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(
            f"{captions_json} is not a COCO captions file: expected an object with "
            "an 'images' list."
        )
    annotations = data.get("annotations", [])
    if not isinstance(annotations, list):
        raise ValueError(f"{captions_json}: 'annotations' must be a list.")

    groups = {}
    by_id = {}
    has_split = any(
        isinstance(image, dict) and "split" in image for image in data["images"]
    )
    for index, image in enumerate(data["images"]):
        where = f"{captions_json} images[{index}]"
        if not isinstance(image, dict):
            reject_example(where, "is not an object", skip_bad_examples, report)
            continue
        file_name = image.get("file_name", image.get("filename"))
        if not isinstance(file_name, str) or not file_name.strip():
            reject_example(where, "missing 'file_name'", skip_bad_examples, report)
            continue
        sentences = image.get("sentences")
        if "id" not in image and sentences is None:
            reject_example(where, "missing 'id'", skip_bad_examples, report)
            continue
        split = None
        if has_split:
            split = _normalize_split(image.get("split", ""))
            if split is None:
                reject_example(
                    where,
                    f"unknown or missing split {image.get('split')!r} (expected one "
                    f"of {', '.join(sorted(_SPLIT_ALIASES))})",
                    skip_bad_examples,
                    report,
                )
                continue
        relative = os.path.join(image.get("filepath", ""), file_name.strip())
        group = _Group(
            key=relative, path=_resolve(image_dir, relative), numbers=[index],
            split=split,
        )
        groups[index] = group
        if "id" in image:
            by_id[image["id"]] = group
        for sentence in sentences or []:
            raw = sentence.get("raw") if isinstance(sentence, dict) else sentence
            if not isinstance(raw, str):
                reject_example(
                    where, "has a sentence without a 'raw' string",
                    skip_bad_examples, report,
                )
                continue
            _add_caption(group, raw, report)

    for index, annotation in enumerate(annotations):
        where = f"{captions_json} annotations[{index}]"
        if not isinstance(annotation, dict):
            reject_example(where, "is not an object", skip_bad_examples, report)
            continue
        if "image_id" not in annotation:
            reject_example(where, "missing 'image_id'", skip_bad_examples, report)
            continue
        caption = annotation.get("caption")
        if not isinstance(caption, str):
            reject_example(where, "missing 'caption'", skip_bad_examples, report)
            continue
        group = by_id.get(annotation["image_id"])
        if group is None:
            reject_example(
                where,
                f"image_id {annotation['image_id']!r} is not in 'images'",
                skip_bad_examples,
                report,
            )
            continue
        _add_caption(group, caption, report)

    return _records_from_groups(
        list(groups.values()),
        assign=lambda group: group.split or hash_split(group.key.replace(os.sep, "/")),
        describe=lambda group: f"{captions_json} images[{group.numbers[0]}]",
        skip_bad_examples=skip_bad_examples,
        report=report,
    )


def _manifest_rows_csv(path, skip_bad_examples, report):
    """Yields `(row_number, image, [captions], split or None)` from a CSV manifest."""
    for number, row in _read_csv(path, ("image", "caption"), skip_bad_examples,
                                 report):
        yield number, row["image"], [row["caption"]], row.get("split")


def _manifest_rows_jsonl(path, skip_bad_examples, report):
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
    report = _new_report(report)
    path = os.path.normpath(os.fspath(path))
    _check_exists(path, "Caption manifest")
    if file_format is None:
        file_format = "jsonl" if path.lower().endswith(_JSONL_SUFFIXES) else "csv"
    if file_format == "csv":
        rows, unit = _manifest_rows_csv(path, skip_bad_examples, report), "row"
    elif file_format == "jsonl":
        rows, unit = _manifest_rows_jsonl(path, skip_bad_examples, report), "line"
    else:
        raise ValueError(
            f"`file_format` must be 'csv', 'jsonl' or None. Received: "
            f"file_format={file_format!r}"
        )
    base_dir = os.path.dirname(path)
    groups = {}
    for number, image, captions, split in rows:
        where = f"{path} {unit} {number}"
        if image is None or not image.strip():
            reject_example(where, "missing image path", skip_bad_examples, report)
            continue
        image = image.strip()
        if split is not None:
            split = checked_split(split, where, skip_bad_examples, report)
            if split is None:
                continue
        key = posixpath.normpath(image.replace("\\", "/"))
        group = groups.get(key)
        if group is not None and group.split != split:
            reject_example(
                where,
                f"image {image} is in split {split} here but in split {group.split} "
                f"in {_describe_rows(path, unit, group.numbers)}",
                skip_bad_examples,
                report,
            )
            continue
        if group is None:
            group = groups[key] = _Group(
                key=key, path=_resolve(base_dir, image), split=split
            )
        group.numbers.append(number)
        for caption in captions:
            _add_caption(group, caption, report)

    return _records_from_groups(
        list(groups.values()),
        assign=lambda group: group.split or hash_split(group.key),
        describe=lambda group: _describe_rows(path, unit, group.numbers),
        skip_bad_examples=skip_bad_examples,
        report=report,
    )


# The file-based caption kinds `load_caption_data` reads.
CAPTION_FILE_KINDS = ("flickr8k", "coco", "csv", "jsonl")


def load_caption_data(spec, skip_bad_examples=False):
    """Loads the caption data named by a `--data` spec.

    Args:
        spec: `flickr8k:DIR`, `coco:CAPTIONS_JSON:IMAGE_DIR`, `csv:FILE` (a CSV or,
            by its `.jsonl` suffix, a JSONL manifest) or `jsonl:FILE`, as a
            string or a parsed `mmkeras.data.data_spec.DataSpec`.
        skip_bad_examples: count and leave out bad rows and images instead of
            raising `BadExampleError`.

    Returns:
        `(splits, report)`: `{"train": [...], "validation": [...], "test": [...]}`
        of `CaptionRecord`s and the `LoadReport`.
    """
    if not isinstance(spec, DataSpec):
        spec = parse_data_spec(spec, CAPTION_FILE_KINDS)
    report = LoadReport()
    if spec.kind == "flickr8k":
        splits = load_flickr8k(spec.path, skip_bad_examples, report)
    elif spec.kind == "coco":
        splits = load_coco_captions(*spec.args, skip_bad_examples, report)
    elif spec.kind == "csv":
        splits = load_caption_manifest(spec.path, skip_bad_examples, report)
    elif spec.kind == "jsonl":
        splits = load_caption_manifest(spec.path, skip_bad_examples, report, file_format="jsonl")
    else:
        raise ValueError(
            f"{spec.kind!r} is not a caption file format ({', '.join(CAPTION_FILE_KINDS)}). "
            f"Received: data={spec.text!r}"
        )
    return splits, report
