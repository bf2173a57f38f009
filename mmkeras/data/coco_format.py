"""Reader of COCO captions JSON files and Karpathy-split JSON files.

COCO format: `images` (`id`, `file_name`) and `annotations` (`image_id`,
`caption`). Karpathy format (`dataset_coco.json`, `dataset_flickr8k.json`):
`images` with `filename`, optional `filepath`, `sentences` (`raw`) and `split`.
Bad entries and images are handled as in every caption reader (see
`caption_formats`).
"""

import json
import os

from mmkeras.data.caption_groups import ImageGroup
from mmkeras.data.caption_groups import records_from_groups
from mmkeras.data.manifest_io import check_exists
from mmkeras.data.manifest_io import resolve_path
from mmkeras.data.records import LoadReport
from mmkeras.data.records import reject_example
from mmkeras.data.splits import SPLIT_ALIASES
from mmkeras.data.splits import hash_split
from mmkeras.data.splits import normalize_split


def _read_json(captions_json):
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
    if not isinstance(data.get("annotations", []), list):
        raise ValueError(f"{captions_json}: 'annotations' must be a list.")
    return data


def _image_groups(captions_json, image_dir, images, skip_bad_examples, report):
    """`({index: ImageGroup}, {image id: ImageGroup})` of the `images` entries."""
    groups = {}
    by_id = {}
    has_split = any(isinstance(image, dict) and "split" in image for image in images)
    for index, image in enumerate(images):
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
            split = normalize_split(image.get("split", ""))
            if split is None:
                reject_example(
                    where,
                    f"unknown or missing split {image.get('split')!r} (expected one "
                    f"of {', '.join(sorted(SPLIT_ALIASES))})",
                    skip_bad_examples,
                    report,
                )
                continue
        relative = os.path.join(image.get("filepath", ""), file_name.strip())
        group = ImageGroup(
            key=relative, path=resolve_path(image_dir, relative), numbers=[index],
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
            group.add_caption(raw, report)
    return groups, by_id


def _add_annotations(captions_json, annotations, by_id, skip_bad_examples, report):
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
        group.add_caption(caption, report)


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
    report = LoadReport() if report is None else report
    captions_json = os.path.normpath(os.fspath(captions_json))
    image_dir = os.path.normpath(os.fspath(image_dir))
    check_exists(captions_json, "COCO captions file")
    check_exists(image_dir, "COCO image folder")
    data = _read_json(captions_json)
    groups, by_id = _image_groups(
        captions_json, image_dir, data["images"], skip_bad_examples, report
    )
    _add_annotations(
        captions_json, data.get("annotations", []), by_id, skip_bad_examples, report
    )
    return records_from_groups(
        list(groups.values()),
        assign=lambda group: group.split or hash_split(group.key.replace(os.sep, "/")),
        describe=lambda group: f"{captions_json} images[{group.numbers[0]}]",
        skip_bad_examples=skip_bad_examples,
        report=report,
    )
