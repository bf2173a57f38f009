"""Writes a caption data set as sharded TFRecords for large-scale training.

    python -m training.prepare_data --data=csv:manifest.csv --output=data/tfr --num_shards=64
    python -m training.train --data=tfrecord:data/tfr ...

`--data` takes the same specs as `training.train` (`csv:FILE`, `jsonl:FILE`,
`flickr8k:DIR`, `coco:CAPTIONS_JSON:IMAGE_DIR`, `synthetic`). CSV and JSONL
manifests are streamed row by row, so their size is not limited by memory
(the rows of one image must be consecutive); Flickr8k and COCO files are read
whole, as their fixed sizes allow. Images are stored as their original encoded
bytes; training decodes and resizes them. Training examples are spread
round-robin over `--num_shards` files: use at least as many shards as training
workers (a multiple of it balances them), and enough that each shard is
~100-200 MB for real data sets.
"""

import json
import os

from absl import app, flags, logging

FLAGS = flags.FLAGS


def define_flags():
    # Defined only when run as a program, so that one process can import every CLI module.
    flags.DEFINE_string(
        "data", "synthetic",
        "Data to convert: `synthetic`, `csv:FILE`, `jsonl:FILE`, `flickr8k:DIR` or "
        "`coco:CAPTIONS_JSON:IMAGE_DIR`.",
    )
    flags.DEFINE_string("output", None, "Folder to write the shards and dataset_info.json into.")
    flags.DEFINE_integer("num_shards", 16, "Number of training shards.")
    flags.DEFINE_bool(
        "skip_bad_examples", False,
        "Skip (and count) unreadable images and malformed rows instead of stopping.",
    )
    flags.DEFINE_string(
        "experiment", "caption_synthetic",
        "For --data=synthetic: the experiment whose data section (image size, split "
        "sizes) and seed define the images.",
    )
    flags.mark_flag_as_required("output")


def _examples(spec, skip_bad_examples, report):
    """`(split, CaptionRecord)` pairs and an image reader for a data spec."""
    from mmkeras.data import caption_formats
    from mmkeras.data import tfrecords
    from mmkeras.data.data_spec import parse_data_spec
    from mmkeras.data.splits import SPLITS

    spec = parse_data_spec(spec, ("synthetic",) + caption_formats.CAPTION_FILE_KINDS)
    if spec.kind == "synthetic":
        from mmkeras.data.synthetic_captions import SyntheticCaptions, encode_png
        from training import named_experiments

        cfg = named_experiments.get_experiment(FLAGS.experiment)
        synthetic = SyntheticCaptions(
            seed=cfg.train.seed,
            image_size=cfg.data.image_size,
            num_train=cfg.data.synthetic_num_train,
            num_validation=cfg.data.synthetic_num_validation,
            num_test=cfg.data.synthetic_num_test,
        )
        pairs = ((split, r) for split in SPLITS for r in synthetic.records(split))
        # PNG keeps the rendered pixels exactly.
        return pairs, lambda record: encode_png(synthetic.render_image(record.image))
    if spec.kind in ("csv", "jsonl"):
        pairs = tfrecords.iter_caption_manifest(
            spec.path, skip_bad_examples, report, file_format=None if spec.kind == "csv" else "jsonl"
        )
        return pairs, None
    splits, loaded = caption_formats.load_caption_data(spec, skip_bad_examples)
    report.skipped_bad_examples += loaded.skipped_bad_examples
    report.skipped_reasons.extend(loaded.skipped_reasons)
    report.dropped_empty_captions += loaded.dropped_empty_captions
    return ((split, r) for split in SPLITS for r in splits.get(split, [])), None


def main(argv):
    del argv
    from mmkeras.data import tfrecords
    from mmkeras.data.records import LoadReport

    report = LoadReport()
    try:
        pairs, read_image = _examples(FLAGS.data, FLAGS.skip_bad_examples, report)
        info = tfrecords.write_caption_shards(
            pairs, FLAGS.output, FLAGS.num_shards, read_image=read_image,
            skip_bad_examples=FLAGS.skip_bad_examples, report=report, source=FLAGS.data,
        )
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        raise app.UsageError(str(e))
    for reason in report.skipped_reasons[:5]:
        logging.warning("skipped: %s", reason)
    summary = {split: s["num_examples"] for split, s in info["splits"].items()}
    train_files = len(info["splits"]["train"]["files"])
    if train_files < FLAGS.num_shards:
        logging.warning(
            "Only %d of %d training shards hold examples (fewer training images than shards).",
            train_files, FLAGS.num_shards,
        )
    print(json.dumps({"output": os.path.abspath(FLAGS.output), "examples": summary,
                      "train_shards": train_files,
                      "skipped_bad_examples": info["skipped_bad_examples"]}, sort_keys=True))


if __name__ == "__main__":
    define_flags()
    app.run(main)
