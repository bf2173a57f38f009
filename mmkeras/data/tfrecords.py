"""Sharded TFRecords of captioned images: streaming writer, parallel reader.

`python -m training.prepare_data` writes a data set as

    DIR/train-00000-of-00008.tfrecord ... (round-robin over --num_shards)
    DIR/validation-00000-of-00001.tfrecord
    DIR/test-00000-of-00001.tfrecord
    DIR/dataset_info.json                   (written last: files, counts)

Each record is a `tf.train.Example` with `image` (the encoded JPEG/PNG bytes,
as read from the source file), `image_id` (the source path or synthetic id),
`captions` (one or more UTF-8 captions) and `split`.

Manifests (CSV / JSONL) are read as a stream: rows of one image are merged
while they are consecutive, so memory does not grow with the number of rows
(only a set of 8-byte keys of the images already written, to catch an image
whose rows are not together).

Training reads the shards with a deterministic parallel interleave. Under a
distribution strategy each worker (input pipeline) reads its own files
(file-based sharding), or, with fewer files than workers, every worker reads
all files and keeps every n-th record. The stream of a worker is a fixed
function of the seed and the epoch, so it can start at any example position
by skipping at most one epoch of *serialized* records (no image decoding).
"""

import hashlib
import json
import os

import tensorflow as tf

from mmkeras.data.caption_choice import choose_caption
from mmkeras.data.caption_groups import ImageGroup, describe_rows, group_record
from mmkeras.data.caption_manifest import caption_manifest_rows, image_path
from mmkeras.data.caption_pipeline import build_augmenter, decode_image, teacher_forcing_inputs
from mmkeras.data.manifest_io import ROW_UNITS, check_exists, manifest_format
from mmkeras.data.records import CaptionRecord, LoadReport, reject_example, validate_image_file
from mmkeras.data.splits import SPLITS, hash_split

INFO_FILE = "dataset_info.json"
FORMAT = "mmkeras-captions-tfrecord-v1"

_FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "image_id": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "captions": tf.io.VarLenFeature(tf.string),
    "split": tf.io.FixedLenFeature([], tf.string, default_value=""),
}


def _key_digest(key):
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big")


def iter_caption_manifest(path, skip_bad_examples=False, report=None, file_format=None):
    """Streams the `CaptionRecord`s of a CSV or JSONL manifest.

    The same manifest format as `load_caption_manifest` (columns `image`,
    `caption` or `captions`, optional `split`; paths relative to the
    manifest's folder; split by a stable hash of the path when absent), but a
    generator: a record is yielded as soon as its image's rows end, so a
    manifest of any length is never held in memory. The rows of one image
    must be consecutive; an image that appears again later is a bad example
    (sort the manifest by image). Image files are not checked here (see
    `write_caption_shards`).

    Args:
        path: the manifest file.
        skip_bad_examples: count and leave out bad rows instead of raising
            `BadExampleError`.
        report: a `LoadReport` that counts skipped rows and dropped captions.
        file_format: `"csv"`, `"jsonl"` or None (by suffix, as
            `load_caption_manifest`).

    Yields:
        `(split, CaptionRecord)` pairs, in manifest order.
    """
    report = LoadReport() if report is None else report
    path = os.path.normpath(os.fspath(path))
    check_exists(path, "Caption manifest")
    file_format = manifest_format(path, file_format)
    unit = ROW_UNITS[file_format]
    done = set()
    current = None  # the ImageGroup of the image whose rows are being read

    def finish(group):
        origin = describe_rows(path, unit, group.numbers)
        record = group_record(group, origin, skip_bad_examples, report)
        if record is None:
            return None
        return group.split or hash_split(group.key), record

    for row in caption_manifest_rows(path, file_format, skip_bad_examples, report):
        if current is not None and current.key == row.key:
            if current.split != row.split:
                reject_example(
                    row.where,
                    f"image {row.key} is in split {row.split} here but in split {current.split} above",
                    skip_bad_examples, report,
                )
                continue
        else:
            if current is not None:
                finished = finish(current)
                if finished is not None:
                    yield finished
            digest = _key_digest(row.key)
            if digest in done:
                reject_example(
                    row.where,
                    f"image {row.key} already appeared in earlier rows; a streamed manifest "
                    "must keep the rows of one image together (sort it by image)",
                    skip_bad_examples, report,
                )
                current = None
                continue
            done.add(digest)
            current = ImageGroup(key=row.key, path=image_path(path, row), split=row.split)
        current.numbers.append(row.number)
        for caption in row.captions:
            current.add_caption(caption, report)
    if current is not None:
        finished = finish(current)
        if finished is not None:
            yield finished


def caption_example(image_bytes, captions, image_id="", split=""):
    """A serialized `tf.train.Example` of one image and its captions."""
    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_bytes])),
        "image_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_id.encode("utf-8")])),
        "captions": tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[c.encode("utf-8") for c in captions])
        ),
        "split": tf.train.Feature(bytes_list=tf.train.BytesList(value=[split.encode("utf-8")])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_caption_shards(
    examples, output_dir, num_shards, read_image=None, skip_bad_examples=False, report=None, source=""
):
    """Writes `(split, CaptionRecord)` pairs as sharded TFRecords.

    Training examples go round-robin into `num_shards` files; validation and
    test examples (read whole by every worker) into one file each. Image files
    are checked with `validate_image_file` as they are read. `dataset_info.json`
    is written last, so a folder without it is an interrupted write.

    Args:
        examples: an iterable of `(split, CaptionRecord)`, consumed once.
        output_dir: the folder to write; must not already hold a data set.
        num_shards: number of training shards (at least the number of workers
            that will read them, ideally a multiple of it).
        read_image: `CaptionRecord -> bytes`; defaults to reading the file.
        skip_bad_examples: count and leave out unreadable images instead of
            raising `BadExampleError`.
        report: a `LoadReport` for skipped examples.
        source: the data spec, recorded in `dataset_info.json`.

    Returns:
        The `dataset_info.json` content as a dict.
    """
    if num_shards < 1:
        raise ValueError(f"`num_shards` must be >= 1. Received: num_shards={num_shards}")
    report = LoadReport() if report is None else report
    os.makedirs(output_dir, exist_ok=True)
    if os.path.exists(os.path.join(output_dir, INFO_FILE)):
        raise FileExistsError(f"{output_dir} already holds a data set ({INFO_FILE}); pick another --output.")

    def read_file(record):
        reason = validate_image_file(record.image)
        if reason is not None:
            reject_example(record.origin, reason, skip_bad_examples, report)
            return None
        with open(record.image, "rb") as f:
            return f.read()

    read_image = read_image or read_file
    shards = {"train": num_shards, "validation": 1, "test": 1}
    names = {
        split: [f"{split}-{i:05d}-of-{n:05d}.tfrecord" for i in range(n)] for split, n in shards.items()
    }
    writers = {}
    counts = {split: [0] * n for split, n in shards.items()}
    captions = {split: 0 for split in SPLITS}
    positions = {split: 0 for split in SPLITS}
    try:
        for split, record in examples:
            image_bytes = read_image(record)
            if image_bytes is None:
                continue
            shard = positions[split] % shards[split]
            positions[split] += 1
            if (split, shard) not in writers:
                writers[split, shard] = tf.io.TFRecordWriter(os.path.join(output_dir, names[split][shard]))
            writers[split, shard].write(caption_example(image_bytes, record.captions, record.image, split))
            counts[split][shard] += 1
            captions[split] += len(record.captions)
    finally:
        for writer in writers.values():
            writer.close()
    info = {"format": FORMAT, "source": source, "splits": {}}
    for split in SPLITS:
        files = [
            {"path": names[split][i], "num_examples": n} for i, n in enumerate(counts[split]) if n
        ]
        info["splits"][split] = {
            "files": files,
            "num_examples": sum(counts[split]),
            "num_captions": captions[split],
        }
    info["skipped_bad_examples"] = report.skipped_bad_examples
    info["dropped_empty_captions"] = report.dropped_empty_captions
    with open(os.path.join(output_dir, INFO_FILE), "w") as f:
        json.dump(info, f, indent=2)
    return info


def read_dataset_info(directory):
    """The `dataset_info.json` of a folder written by `write_caption_shards`."""
    path = os.path.join(directory, INFO_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{directory} has no {INFO_FILE}: not a data set written by "
            "`python -m training.prepare_data`, or its writing was interrupted."
        )
    with open(path) as f:
        info = json.load(f)
    if info.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown format {info.get('format')!r}; expected {FORMAT!r}.")
    return info


def split_files(directory, split, info=None):
    """`[(path, num_examples)]` of a split's shards, in shard order."""
    info = info or read_dataset_info(directory)
    return [(os.path.join(directory, f["path"]), f["num_examples"]) for f in info["splits"][split]["files"]]


def parse_caption_example(serialized):
    """Parses one serialized example into `image`, `image_id`, `captions`, `split`."""
    parsed = tf.io.parse_single_example(serialized, _FEATURES)
    parsed["captions"] = tf.sparse.to_dense(parsed["captions"], default_value="")
    return parsed


def _split_dataset(directory, split, info=None):
    files = [path for path, _ in split_files(directory, split, info)]
    return tf.data.TFRecordDataset(files).map(parse_caption_example, num_parallel_calls=tf.data.AUTOTUNE)


def iter_records(directory, split, info=None):
    """Streams a split's `CaptionRecord`s (image ids and captions, no pixels)."""
    for i, example in enumerate(_split_dataset(directory, split, info).as_numpy_iterator()):
        yield CaptionRecord(
            example["image_id"].decode("utf-8"),
            tuple(c.decode("utf-8") for c in example["captions"]),
            f"{directory} {split} record {i}",
        )


def extract_images(directory, split, output_dir, max_images=0, info=None):
    """Writes a split's images to `output_dir` and returns their `CaptionRecord`s.

    For evaluation code that reads images by path; meant for the (small)
    validation and test splits.
    """
    os.makedirs(output_dir, exist_ok=True)
    records = []
    for i, example in enumerate(_split_dataset(directory, split, info).as_numpy_iterator()):
        if max_images and i >= max_images:
            break
        image = example["image"]
        suffix = ".png" if image.startswith(b"\x89PNG") else ".jpg"
        path = os.path.join(output_dir, f"{i:06d}{suffix}")
        with open(path, "wb") as f:
            f.write(image)
        records.append(
            CaptionRecord(path, tuple(c.decode("utf-8") for c in example["captions"]),
                          f"{directory} {split} record {i} ({example['image_id'].decode('utf-8')})")
        )
    return records


def pipeline_files(directory, num_input_pipelines=1, input_pipeline_id=0, info=None):
    """The shards one input pipeline reads and how it shards them.

    Returns `(files, epoch_size, by_data)`: with at least as many training
    files as pipelines, pipeline `i` reads files `i, i + n, ...` (file-based
    sharding, `by_data=False`); otherwise it reads every file and keeps every
    n-th record (`by_data=True`). `epoch_size` is the number of examples the
    pipeline sees per epoch.
    """
    files = split_files(directory, "train", info)
    if not files:
        raise ValueError(f"{directory} has no training examples.")
    n, i = num_input_pipelines, input_pipeline_id
    if len(files) >= n:
        mine = files[i::n]
        return [p for p, _ in mine], sum(c for _, c in mine), False
    total = sum(c for _, c in files)
    return [p for p, _ in files], len(range(i, total, n)), True


def caption_train_dataset(
    directory,
    tokenizer,
    image_size,
    sequence_length,
    batch_size,
    seed=0,
    augment=False,
    num_input_pipelines=1,
    input_pipeline_id=0,
    start_example=0,
    shuffle_buffer=1024,
    cycle_length=8,
    model_inputs=None,
):
    """The infinite training stream of one input pipeline, from TFRecords.

    Yields the same `(x, y, sample_weight)` batches as
    `caption_pipeline.caption_dataset(training=True)`: each visit of an image
    takes one of its captions, chosen statelessly from the seed and the
    example's position in this pipeline's stream.

    Args:
        directory: a folder written by `write_caption_shards`.
        tokenizer: the captioner's `WordPieceTokenizer`.
        image_size: images are resized to `(image_size, image_size)`.
        sequence_length: model input length (targets are shifted by one).
        batch_size: examples per batch of this pipeline (the per-replica
            batch size under `distribute_datasets_from_function`).
        seed: shuffling and caption-choice seed.
        augment: apply `build_augmenter(seed)`.
        num_input_pipelines: number of pipelines (workers) sharing the data.
        input_pipeline_id: this pipeline's index.
        start_example: examples of this pipeline's stream already trained on;
            the stream starts after them (skipping serialized records only).
        shuffle_buffer: records in the shuffle buffer.
        cycle_length: shards read in parallel.
        model_inputs: as for `caption_pipeline.caption_dataset`: replaces the
            teacher-forcing map (e.g. the dual encoder's inputs).
    """
    files, epoch_size, by_data = pipeline_files(directory, num_input_pipelines, input_pipeline_id)
    if epoch_size == 0:
        raise ValueError(
            f"Input pipeline {input_pipeline_id} of {num_input_pipelines} gets no training "
            f"examples from {directory}."
        )
    start_epoch, offset = divmod(int(start_example), epoch_size)
    files_ds = tf.constant(files)

    # Shuffles are stateless functions of (seed, epoch): `Dataset.shuffle`
    # cannot take a per-epoch tensor seed when the global seed is 0.
    def epoch_stream(epoch):
        epoch_seed = tf.stack([tf.cast(seed, tf.int64), epoch])
        order = tf.data.Dataset.from_tensor_slices(
            tf.random.experimental.stateless_shuffle(files_ds, seed=epoch_seed)
        )
        records = order.interleave(
            tf.data.TFRecordDataset,
            cycle_length=min(cycle_length, len(files)),
            block_length=1,
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        if by_data:
            records = records.shard(num_input_pipelines, input_pipeline_id)
        # Shuffle within windows of `shuffle_buffer` records (the interleave
        # already mixes `cycle_length` shards).
        records = records.batch(shuffle_buffer).enumerate().map(
            lambda window, batch: tf.random.experimental.stateless_shuffle(
                batch, seed=tf.stack([tf.cast(seed, tf.int64) + 1, epoch * 1_000_003 + window])
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
        ).unbatch()
        positions = tf.data.Dataset.range(epoch * epoch_size, (epoch + 1) * epoch_size)
        return tf.data.Dataset.zip((positions, records))

    ds = tf.data.Dataset.range(start_epoch, tf.int64.max).flat_map(epoch_stream)
    ds = ds.skip(offset)

    def decode(position, serialized):
        example = parse_caption_example(serialized)
        image = decode_image(example["image"], image_size)
        return tf.cast(tf.round(image), tf.uint8), choose_caption(seed, position, example["captions"])

    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=True)
    augmenter = build_augmenter(seed) if augment else None
    if model_inputs is None:
        to_model_inputs = teacher_forcing_inputs(tokenizer, sequence_length, augmenter)
    else:
        to_model_inputs = model_inputs(augmenter, "images")
    ds = ds.map(to_model_inputs, num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    # Sharding is done above; the strategy must not shard again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)
