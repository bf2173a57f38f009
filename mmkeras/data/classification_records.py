"""Records of image+text classification data (classification, VQA, matching).

Every classification reader in `mmkeras.data` returns `ClassificationRecord`s
grouped by split in a `ClassificationData`, and fills a `LoadReport` (shared
with the caption readers) with what it kept and skipped.
"""

import dataclasses
import typing

from mmkeras.data.records import LoadReport


@dataclasses.dataclass(frozen=True)
class ClassificationRecord:
    """One image, one text and its label(s).

    Args:
        image: path of the image file, or `"synthetic:<split>:<index>"` for
            the built-in synthetic shapes.
        text: the question, report or caption paired with the image.
        labels: the label names; exactly one for single-label data.
        origin: where the record came from, for error messages, e.g.
            `"/x/manifest.csv row 7"`.
    """

    image: str
    text: str
    labels: tuple[str, ...]
    origin: str


@dataclasses.dataclass
class ClassificationData:
    """A loaded classification data set.

    Args:
        splits: `{"train": [...], "validation": [...], "test": [...]}` of
            `ClassificationRecord`s (validation may be empty).
        label_names: every label, in class-id order (sorted unless the source
            defines an order, like easy-vqa's answer list).
        multi_label: whether an example may carry several labels (sigmoid
            head) rather than exactly one (softmax head).
        report: the `LoadReport` of what was kept and skipped.
        synthetic: the `SyntheticCaptions` that renders `synthetic:` images,
            or None for file data.
    """

    splits: dict
    label_names: list
    multi_label: bool = False
    report: LoadReport = dataclasses.field(default_factory=LoadReport)
    synthetic: typing.Any = None
