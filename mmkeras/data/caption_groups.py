"""The rows of one image grouped into a `CaptionRecord`.

Shared by the caption file formats (`flickr8k_format`, `coco_format`,
`caption_manifest`): a reader collects each image's captions and row numbers in
an `ImageGroup`, then `records_from_groups` splits the groups, rejects images
without captions and checks the image files. Splits are assigned before bad
images are left out, so skipping one never moves another image to a different
split.
"""

import dataclasses

from mmkeras.data.manifest_io import clean_text
from mmkeras.data.records import CaptionRecord
from mmkeras.data.records import reject_example
from mmkeras.data.records import validate_records
from mmkeras.data.splits import SPLITS


@dataclasses.dataclass
class ImageGroup:
    """The rows of one image while a file is read.

    Args:
        key: the image as the file names it (grouping and hash-split key).
        path: the image file's path.
        captions: its non-empty captions so far, white space folded.
        numbers: the row or line numbers it came from.
        split: its split, if the file names one.
    """

    key: str
    path: str
    captions: list = dataclasses.field(default_factory=list)
    numbers: list = dataclasses.field(default_factory=list)
    split: str | None = None

    def add_caption(self, caption, report):
        """Adds a caption; an empty one is counted in `report` and dropped."""
        caption = clean_text(caption)
        if caption:
            self.captions.append(caption)
        else:
            report.dropped_empty_captions += 1


def describe_rows(path, unit, numbers):
    """`"/x/a.csv rows 2-6"`, `"/x/a.jsonl line 7"` or `"/x/a.csv rows 2, 9"`."""
    numbers = sorted(set(numbers))
    if len(numbers) == 1:
        return f"{path} {unit} {numbers[0]}"
    if numbers == list(range(numbers[0], numbers[-1] + 1)):
        return f"{path} {unit}s {numbers[0]}-{numbers[-1]}"
    shown = ", ".join(str(n) for n in numbers[:10])
    more = ", ..." if len(numbers) > 10 else ""
    return f"{path} {unit}s {shown}{more}"


def group_record(group, origin, skip_bad_examples, report):
    """The `CaptionRecord` of a group, or None after rejecting one without captions."""
    if not group.captions:
        reject_example(
            origin, f"image {group.key} has no non-empty caption", skip_bad_examples, report
        )
        return None
    return CaptionRecord(group.path, tuple(group.captions), origin)


def records_from_groups(groups, assign, describe, skip_bad_examples, report):
    """Splits grouped rows, drops images without captions and checks image files.

    Args:
        groups: `ImageGroup`s in file order.
        assign: `ImageGroup -> split name`, or None to leave the group out silently.
        describe: `ImageGroup -> origin string`.
        skip_bad_examples: count and leave out bad images instead of raising
            `BadExampleError`.
        report: the `LoadReport` to fill; its counts are set from the result.

    Returns:
        `{"train": [...], "validation": [...], "test": [...]}` of `CaptionRecord`s.
    """
    splits = {name: [] for name in SPLITS}
    for group in groups:
        split = assign(group)
        if split is None:
            continue
        record = group_record(group, describe(group), skip_bad_examples, report)
        if record is not None:
            splits[split].append(record)
    for name in SPLITS:
        splits[name] = validate_records(splits[name], skip_bad_examples, report)
    report.count(splits)
    return splits
