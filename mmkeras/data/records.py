"""Caption records, load reports and cheap image-file validation.

Every caption reader in `mmkeras.data` returns `CaptionRecord`s and fills a
`LoadReport`. Bad examples (a row without a caption, an image file that is missing,
empty, not JPEG/PNG or truncated) either stop loading with a `BadExampleError` that
names the file and the row, or, with `skip_bad_examples=True`, are counted in the
report and left out. Images are checked here, before training starts, because a
corrupt file found by `tf.io.decode_image` in the middle of an epoch kills the run
with an error that names neither the file nor the row.
"""

import dataclasses
import os

SKIP_HINT = "Pass --skip_bad_examples to skip such rows."

_JPEG_MAGIC = b"\xff\xd8\xff"
_JPEG_END = b"\xff\xd9"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# The IEND chunk is always the same 12 bytes: zero length, type, CRC.
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
# Some tools pad files with zero bytes or end them with a newline; tolerate that much.
_PADDING = b"\x00\r\n\t "
_MAX_PADDING = 16


@dataclasses.dataclass(frozen=True)
class CaptionRecord:
    """One image and its reference captions.

    Args:
        image: path of the image file, or `"synthetic:<split>:<index>"` for the
            built-in synthetic data.
        captions: the reference captions of that image, at least one.
        origin: where the record came from, for error messages, e.g.
            `"/x/captions.txt rows 2-6"` or `"/x/manifest.jsonl line 7"`.
    """

    image: str
    captions: tuple[str, ...]
    origin: str


class BadExampleError(ValueError):
    """A row or image of a caption data set is unusable.

    The message names the file and the row; `--skip_bad_examples` skips such rows.
    """


@dataclasses.dataclass
class LoadReport:
    """What loading a caption data set kept and left out.

    Args:
        num_images: images kept, over all splits.
        num_captions: captions kept, over all splits.
        skipped_bad_examples: rows or images left out as bad examples (only with
            `skip_bad_examples=True`; otherwise the first one raises).
        skipped_reasons: one message per skipped example, naming file and row.
        dropped_empty_captions: empty or whitespace-only captions dropped.
        split_sizes: images kept per split (examples, for classification
            data: see `count_examples`).
        classification: counts are of image+text examples (`count_examples`):
            `num_captions` counts their texts.
    """

    num_images: int = 0
    num_captions: int = 0
    skipped_bad_examples: int = 0
    skipped_reasons: list[str] = dataclasses.field(default_factory=list)
    dropped_empty_captions: int = 0
    split_sizes: dict[str, int] = dataclasses.field(default_factory=dict)
    classification: bool = False

    def skip(self, reason):
        """Counts one skipped bad example."""
        self.skipped_bad_examples += 1
        self.skipped_reasons.append(reason)

    def count(self, splits):
        """Sets the image and caption counts from `{split: [CaptionRecord]}`."""
        self.split_sizes = {name: len(records) for name, records in splits.items()}
        self.num_images = sum(self.split_sizes.values())
        self.num_captions = sum(
            len(record.captions) for records in splits.values() for record in records
        )

    def count_examples(self, splits, num_images=None):
        """Sets the counts from `{split: [ClassificationRecord]}`: one text an example.

        `num_images` defaults to the number of distinct images.
        """
        self.classification = True
        self.split_sizes = {name: len(records) for name, records in splits.items()}
        if num_images is None:
            num_images = len({r.image for records in splits.values() for r in records})
        self.num_images = num_images
        self.num_captions = sum(self.split_sizes.values())

    def summary(self, max_reasons=5):
        """A human-readable summary, with the first `max_reasons` skip reasons."""
        splits = ", ".join(f"{name} {size}" for name, size in self.split_sizes.items())
        if splits and self.classification:
            splits = "examples: " + splits
        texts = "texts" if self.classification else "captions"
        lines = [
            f"Loaded {self.num_images} images with {self.num_captions} {texts}"
            + (f" ({splits})" if splits else "")
            + f"; skipped {self.skipped_bad_examples} bad examples"
            + f"; dropped {self.dropped_empty_captions} empty {texts}."
        ]
        for reason in self.skipped_reasons[:max_reasons]:
            lines.append(f"  skipped: {reason}")
        hidden = len(self.skipped_reasons) - max_reasons
        if hidden > 0:
            lines.append(f"  ... and {hidden} more skipped.")
        return "\n".join(lines)


def reject_example(where, reason, skip_bad_examples, report):
    """Raises `BadExampleError` for a bad example, or counts it in `report`.

    Args:
        where: the file and row, e.g. `"/x/captions.txt row 7"`.
        reason: what is wrong with it.
        skip_bad_examples: count and continue instead of raising.
        report: the `LoadReport` that counts skipped examples.
    """
    message = f"{where}: {reason}"
    if not skip_bad_examples:
        raise BadExampleError(f"{message}. {SKIP_HINT}")
    report.skip(message)


def _strip_padding(data):
    stripped = data.rstrip(_PADDING)
    if len(data) - len(stripped) > _MAX_PADDING:
        return data
    return stripped


def validate_image_file(path):
    """Checks that `path` looks like a complete JPEG or PNG file, without decoding it.

    Reads only the first and last bytes of the file: a JPEG must start with FFD8FF
    and end with the FFD9 end-of-image marker, a PNG must start with the PNG
    signature and end with the IEND chunk; up to 16 trailing zero bytes, spaces or
    newlines are tolerated.

    Args:
        path: the image file.

    Returns:
        None if the file looks fine, else a reason that names the file.
    """
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        if not os.path.isfile(path):
            return f"image file {path} is not a regular file"
        with open(path, "rb") as f:
            head = f.read(len(_PNG_MAGIC))
            f.seek(max(0, size - len(_PNG_END) - _MAX_PADDING))
            tail = f.read()
    except FileNotFoundError:
        return f"image file {path} does not exist"
    except OSError as e:
        return f"image file {path} cannot be read ({e.strerror or e})"
    if size == 0:
        return f"image file {path} is empty (0 bytes)"
    tail = _strip_padding(tail)
    if head.startswith(_JPEG_MAGIC):
        if not tail.endswith(_JPEG_END):
            return (
                f"image file {path} is a truncated JPEG "
                "(no FFD9 end-of-image marker at its end)"
            )
        return None
    if head.startswith(_PNG_MAGIC):
        if not tail.endswith(_PNG_END):
            return f"image file {path} is a truncated PNG (no IEND chunk at its end)"
        return None
    return f"image file {path} is neither JPEG nor PNG (starts with {head[:4].hex()})"


def validate_records(records, skip_bad_examples, report):
    """Checks every record's image file with `validate_image_file`.

    Args:
        records: an iterable of `CaptionRecord`s whose `image` is a file path.
        skip_bad_examples: leave records with bad images out (counted in `report`)
            instead of raising `BadExampleError`.
        report: the `LoadReport` that counts skipped records.

    Returns:
        The records whose image files are fine, in their original order.
    """
    kept = []
    for record in records:
        reason = validate_image_file(record.image)
        if reason is None:
            kept.append(record)
        else:
            reject_example(record.origin, reason, skip_bad_examples, report)
    return kept



def image_file_checker(skip_bad_examples, report):
    """Returns `check(path, where) -> bool`: is the image file of an example fine?

    For data with several examples an image (questions, texts): each file is
    checked once with `validate_image_file`, however many examples share it, and
    every example of a bad file is a bad example (`reject_example` at `where`).

    Args:
        skip_bad_examples: count examples of bad files in `report` instead of
            raising `BadExampleError`.
        report: the `LoadReport` that counts skipped examples.
    """
    problems = {}

    def check(path, where):
        if path not in problems:
            problems[path] = validate_image_file(path)
        if problems[path] is not None:
            reject_example(where, problems[path], skip_bad_examples, report)
            return False
        return True

    return check
