"""Caption data sets on disk, by the `--data` spec that names them.

Each format has its reader module, and each reader returns `{"train": [...],
"validation": [...], "test": [...]}` of `CaptionRecord`s and fills a `LoadReport`:

- `flickr8k_format.load_flickr8k(directory)`: Flickr8k as distributed on Kaggle
  (`captions.txt`) or in its original form (`Flickr8k.token.txt` and the split
  files).
- `coco_format.load_coco_captions(captions_json, image_dir)`: a COCO captions
  JSON, or a Karpathy-split JSON (`dataset_coco.json`, `dataset_flickr8k.json`).
- `caption_manifest.load_caption_manifest(path)`: a generic CSV or JSONL manifest.

`load_caption_data(spec)` picks the reader of a `--data` spec of `training.train`.

Rows of one image are grouped into one record. Empty captions are dropped and
counted; a row without an image or a caption, or an image file that is missing or
corrupt, raises `BadExampleError` naming the file and the row unless
`skip_bad_examples=True`, which counts it and leaves it out. Splits are assigned
before bad images are left out, so skipping one never moves another image to a
different split.
"""

from mmkeras.data.caption_manifest import load_caption_manifest
from mmkeras.data.coco_format import load_coco_captions
from mmkeras.data.data_spec import DataSpec
from mmkeras.data.data_spec import parse_data_spec
from mmkeras.data.flickr8k_format import load_flickr8k
from mmkeras.data.records import LoadReport

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
