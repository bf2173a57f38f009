"""Reader of Flickr8k, as distributed on Kaggle or in its original form.

Captions come from `captions.txt` (CSV with header `image,caption`, as on Kaggle)
or the original `Flickr8k.token.txt` (`<image>#<n><TAB><caption>`); the splits
from the original split files when present. Bad rows and images are handled as
in every caption reader (see `caption_formats`).
"""

import os

from mmkeras.data.caption_groups import ImageGroup
from mmkeras.data.caption_groups import describe_rows
from mmkeras.data.caption_groups import records_from_groups
from mmkeras.data.manifest_io import check_exists
from mmkeras.data.manifest_io import read_csv_rows
from mmkeras.data.records import LoadReport
from mmkeras.data.records import reject_example
from mmkeras.data.splits import SPLITS

_IMAGE_DIRS = ("images", "Images", "Flicker8k_Dataset", "Flickr8k_Dataset")
_TEXT_DIRS = ("", "Flickr8k_text")
_SPLIT_FILES = {
    "train": "Flickr_8k.trainImages.txt",
    "validation": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}


def _find_text_file(directory, name):
    for sub in _TEXT_DIRS:
        candidate = os.path.join(directory, sub, name)
        if os.path.isfile(candidate):
            return candidate
    return None


def _add_row(groups, image, image_dir, caption, number, report):
    group = groups.get(image)
    if group is None:
        group = groups[image] = ImageGroup(key=image, path=os.path.join(image_dir, image))
    group.numbers.append(number)
    group.add_caption(caption, report)


def _read_token_file(path, image_dir, groups, skip_bad_examples, report):
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
            _add_row(groups, image.strip(), image_dir, caption, number, report)


def _read_captions_csv(path, image_dir, groups, skip_bad_examples, report):
    rows = read_csv_rows(path, ("image", "caption"), skip_bad_examples, report)
    for number, row in rows:
        image = row["image"].strip()
        if not image:
            reject_example(
                f"{path} row {number}", "missing image file name",
                skip_bad_examples, report,
            )
            continue
        _add_row(groups, image, image_dir, row["caption"], number, report)


def _split_of(directory, names):
    """`{image file name: split}` from the split files, or 80/10/10 of sorted `names`."""
    split_files = {
        split: _find_text_file(directory, name) for split, name in _SPLIT_FILES.items()
    }
    present = [split for split, path in split_files.items() if path is not None]
    if present and len(present) < len(SPLITS):
        missing = [_SPLIT_FILES[s] for s in SPLITS if s not in present]
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
        return split_of
    names = sorted(names)
    num_train = len(names) * 8 // 10
    num_train_validation = len(names) * 9 // 10
    return {
        name: "train" if i < num_train
        else "validation" if i < num_train_validation
        else "test"
        for i, name in enumerate(names)
    }


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
    report = LoadReport() if report is None else report
    directory = os.path.normpath(os.fspath(directory))
    check_exists(directory, "Flickr8k folder")
    image_dir = next(
        (
            os.path.join(directory, name)
            for name in _IMAGE_DIRS
            if os.path.isdir(os.path.join(directory, name))
        ),
        None,
    )
    if image_dir is None:
        raise FileNotFoundError(
            f"{directory} has no image folder: expected one of "
            f"{', '.join(name + '/' for name in _IMAGE_DIRS)}."
        )
    groups = {}
    captions_csv = os.path.join(directory, "captions.txt")
    token_file = _find_text_file(directory, "Flickr8k.token.txt")
    if os.path.isfile(captions_csv):
        captions_path, unit = captions_csv, "row"
        _read_captions_csv(captions_csv, image_dir, groups, skip_bad_examples, report)
    elif token_file is not None:
        captions_path, unit = token_file, "line"
        _read_token_file(token_file, image_dir, groups, skip_bad_examples, report)
    else:
        raise FileNotFoundError(
            f"{directory} has no captions: expected captions.txt (CSV with header "
            "image,caption) or Flickr8k.token.txt."
        )
    split_of = _split_of(directory, groups)
    return records_from_groups(
        [groups[key] for key in sorted(groups)],
        assign=lambda group: split_of.get(group.key),
        describe=lambda group: describe_rows(captions_path, unit, group.numbers),
        skip_bad_examples=skip_bad_examples,
        report=report,
    )
