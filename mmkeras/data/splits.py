"""The names of data splits, the names found in the wild, and the hash split.

Every reader in `mmkeras.data` returns `{"train": ..., "validation": ...,
"test": ...}`; data sets on disk name their splits in other ways ("val", "dev",
Karpathy's "restval"), and data without split names is split by a stable hash.
"""

import hashlib

from mmkeras.data.records import reject_example

SPLITS = ("train", "validation", "test")

# Split names found in the wild; Karpathy's "restval" images are training images.
SPLIT_ALIASES = {
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


def normalize_split(value):
    """The `SPLITS` name of a split name as found in a file, or None if unknown.

    Example:
    >>> normalize_split(" Val ")
    'validation'
    """
    return SPLIT_ALIASES.get(str(value).strip().lower())


def checked_split(split, where, skip_bad_examples, report):
    """A row's split name normalised, or None after rejecting an unknown one.

    Args:
        split: the split name as written in the row.
        where: the file and row, for the error message.
        skip_bad_examples: count an unknown name in `report` instead of raising
            `BadExampleError`.
        report: the `LoadReport` that counts skipped rows.
    """
    name = normalize_split(split)
    if name is None:
        reject_example(
            where, f"unknown split {split!r} (expected train, validation/val/dev or test)",
            skip_bad_examples, report,
        )
    return name


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
