"""Image-caption matching on Flickr8k: does this caption describe this image?

A binary image+text classification task built from a caption data set: every
image of a split is paired once with one of its own captions (`match`) and once
with a caption of another image of the same split (`no_match`), so the classes
are balanced (majority-class accuracy 0.5) and no caption crosses splits.
"""

import numpy as np

from mmkeras.data.classification_records import ClassificationData
from mmkeras.data.classification_records import ClassificationRecord
from mmkeras.data.flickr8k_format import load_flickr8k
from mmkeras.data.records import LoadReport
from mmkeras.data.splits import SPLITS

MATCH_LABELS = ("match", "no_match")
# Redraws of a negative whose caption is, word for word, one of the image's own.
_MAX_REDRAWS = 20


def match_records(records, split, seed=0):
    """Positive and negative `ClassificationRecord`s of one split's `CaptionRecord`s.

    For each image, in order: its positive (a seeded choice among its captions),
    then its negative (a seeded caption of a different image of `records`).

    Args:
        records: the `CaptionRecord`s of one split, at least two if any.
        split: the split's name, part of the seed so splits draw independently.
        seed: int, the seed of the choices.
    """
    if not records:
        return []
    if len(records) < 2:
        raise ValueError(
            f"The {split} split has a single image, so it has no caption of another "
            "image to pair it with as a negative. Received: 1 image "
            f"({records[0].origin})"
        )
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    examples = []
    for i, record in enumerate(records):
        caption = record.captions[rng.integers(len(record.captions))]
        examples.append(ClassificationRecord(
            record.image, caption, ("match",), f"{record.origin} (match)"
        ))
        own = set(record.captions)
        for _ in range(_MAX_REDRAWS):
            # Uniform over the other images: draw from n - 1, skip over `i`.
            j = int(rng.integers(len(records) - 1))
            if j >= i:
                j += 1
            other = records[j]
            negative = other.captions[rng.integers(len(other.captions))]
            if negative not in own:
                break
        examples.append(ClassificationRecord(
            record.image, negative, ("no_match",),
            f"{record.origin} (no_match: caption of {other.origin})",
        ))
    return examples


def load_flickr8k_match(directory, seed=0, skip_bad_examples=False):
    """Loads Flickr8k as image-caption matching.

    Splits are those of `flickr8k_format.load_flickr8k` (the original split
    files, or 80/10/10 by file name); each image gives two examples, the
    positive first. Deterministic for a seed.

    Args:
        directory: the Flickr8k folder.
        seed: int, the seed of the positive and negative captions.
        skip_bad_examples: count and leave out bad rows and images instead of
            raising `BadExampleError`.

    Returns:
        A `ClassificationData` with `label_names` `["match", "no_match"]`.
    """
    report = LoadReport()
    caption_splits = load_flickr8k(directory, skip_bad_examples, report)
    splits = {
        split: match_records(caption_splits[split], split, seed) for split in SPLITS
    }
    report.count_examples(splits, num_images=sum(len(records) for records in caption_splits.values()))
    return ClassificationData(
        splits=splits, label_names=list(MATCH_LABELS), report=report
    )
