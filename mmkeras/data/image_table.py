"""Decode every distinct image once into memory, optionally through a frozen encoder.

Many examples share an image (easy-vqa: about nine questions per image; a
caption dataset: one image per five captions, visited every epoch), so the
pipelines decode each image once into one uint8 table and batches gather rows
from it by index: memory and decoding scale with the images, not with the
examples, and shuffling moves small indices rather than images.

With a frozen image encoder the table can hold its features instead of pixels
(`feature_table`): the encoder's feature extractor then runs once per image
instead of once per visit, so a CPU budget buys many more steps of the layers
that do train (a frozen EfficientNet-Lite0 costs ~0.4 GFLOPs an image, far more
than a caption decoder step).
"""

import numpy as np
import tensorflow as tf

from mmkeras.data.caption_choice import stateless_index
from mmkeras.data.records import BadExampleError
from mmkeras.data.records import SKIP_HINT

# Images decoded (or encoded) per step while a table is filled.
_DECODE_BATCH = 256
# Small, because TensorFlow keeps the memory of the encoder's activations at
# the largest batch it ran: `benchmarks/feature_cache_memory.py` (800 Flickr8k
# photos, EfficientNet-Lite0 at 224 px, 191 MiB of features) measured peak
# memory +387 MiB at 16 and +1,201 MiB at 64, in 9.7 s and 12.1 s.
_FEATURE_BATCH = 16


def image_table(images, load, image_size):
    """Decodes each distinct image once.

    Args:
        images: distinct image ids (paths or `synthetic:` ids).
        load: graph function, image id -> uint8 `(image_size, image_size, 3)`
            (`caption_pipeline.image_loader`).
        image_size: int, side of the decoded images.

    Returns:
        `(table, decoded)`: uint8 `(len(images), image_size, image_size, 3)` and
        a bool mask of the images that decoded (the others stay zero).
    """
    ds = tf.data.Dataset.from_tensor_slices(
        (tf.range(len(images), dtype=tf.int64), tf.constant(images, dtype=tf.string))
    )
    ds = ds.map(lambda i, image: (i, load(image)), num_parallel_calls=tf.data.AUTOTUNE)
    # Files were checked cheaply when loaded (magic bytes, end markers); an image
    # that still fails to decode is found here, before training starts.
    ds = ds.ignore_errors(log_warning=True)
    ds = ds.batch(_DECODE_BATCH).prefetch(tf.data.AUTOTUNE)
    table = np.zeros((len(images), image_size, image_size, 3), dtype=np.uint8)
    decoded = np.zeros((len(images),), dtype=bool)
    for indices, batch in ds.as_numpy_iterator():
        table[indices] = batch
        decoded[indices] = True
    return table, decoded


def checked_image_table(owners, load, image_size, skip_bad_examples=False):
    """`image_table` of the images of `owners` (one record per distinct image).

    Raises `BadExampleError` naming the first undecodable image and its
    record's origin; with `skip_bad_examples` such images stay marked False in
    the returned mask instead, for the caller to drop their examples.
    """
    table, decoded = image_table([r.image for r in owners], load, image_size)
    if not decoded.all() and not skip_bad_examples:
        bad = owners[int(np.argmin(decoded))]
        raise BadExampleError(f"{bad.origin}: image file {bad.image} cannot be decoded. {SKIP_HINT}")
    if not decoded.any():
        raise ValueError("No image of the records could be decoded.")
    return table, decoded


def feature_table(table, feature_extractor, out=None):
    """Runs `feature_extractor` over a uint8 image table, in batches.

    Args:
        table: uint8 `(num_images, size, size, 3)`.
        feature_extractor: callable, float32 `(batch, size, size, 3)` pixels in
            `[0, 255]` -> features `(batch, ...)` (e.g. a frozen
            `ImageEncoder.features` in inference mode).
        out: optional float32 array `(num_images, ...)` (a view may be
            strided) that the features are written into, batch by batch.

    Returns:
        float32 numpy `(num_images, ...)`: `out` when given. Batches go
        straight into it, so the peak is the table plus one batch (collecting
        the batches and concatenating them held the features twice).
    """
    extract = tf.function(lambda images: feature_extractor(tf.cast(images, tf.float32)))
    for start in range(0, len(table), _FEATURE_BATCH):
        batch = np.asarray(extract(table[start : start + _FEATURE_BATCH]), dtype=np.float32)
        if out is None:
            out = np.empty((len(table),) + batch.shape[1:], np.float32)
        out[start : start + len(batch)] = batch
    if out is None:
        raise ValueError("Cannot build a feature table of zero images.")
    return out


def view_feature_table(table, feature_extractor, augmenter=None, views=1):
    """`feature_table` of `views` versions of every image, to augment frozen features.

    A frozen encoder's cached features are the same at every visit of an
    image, so a decoder trained on them overfits small data sooner than one
    that sees augmented pixels. This caches several augmented views instead:
    view 0 is the image itself, views 1.. pass it through `augmenter`
    (`training=True`, its own random draws) before the encoder, and training
    picks one view per visit (`pick_view`). Memory grows `views`-fold: the
    views are written into their places of the one result (only the first
    is copied there, once its shape is known).

    Returns:
        float32 numpy `(num_images * views, ...)`: image i's view v at row
        `i * views + v`.
    """
    if views < 1:
        raise ValueError(f"`views` must be >= 1. Received: views={views}")
    if views > 1 and augmenter is None:
        raise ValueError("More than one view needs an `augmenter`.")
    first = feature_table(table, feature_extractor)
    if views == 1:
        return first
    stacked = np.empty((len(table), views) + first.shape[1:], np.float32)
    stacked[:, 0] = first
    del first
    for view in range(1, views):
        feature_table(
            table, lambda images: feature_extractor(augmenter(images, training=True)), out=stacked[:, view]
        )
    return stacked.reshape((-1,) + stacked.shape[2:])


def cached_feature_views(cache, augment, training, feature_views):
    """How many views per image a pipeline's frozen-feature cache holds.

    1 without training-time augmentation, else `feature_views`. Raises
    `ValueError` when the features cannot be cached: without `cache`, or
    when training augments with fewer than 2 views (an augmented image has
    no fixed features).
    """
    augmented = augment and training
    if not cache or (augmented and feature_views < 2):
        raise ValueError(
            "Cached image features need `cache=True`, and augmentation needs `feature_views` >= 2 "
            "(an augmented image has no fixed features; views cache several). "
            f"Received: cache={cache}, augment={augment}, feature_views={feature_views}"
        )
    return feature_views if augmented else 1


def pick_view(rows, views, seed, position):
    """The `view_feature_table` row of one visit: a view of image `rows` chosen statelessly from `(seed, position)`."""
    if views == 1:
        return rows
    # Offset from the caption choice's draw of the same position.
    return rows * views + stateless_index(seed, tf.cast(position, tf.int64) + 7919, views)


def table_gather(table, dtype):
    """A graph function: int64 indices `(batch,)` -> `table[indices]` of `dtype`."""

    def gather(indices):
        return table[indices]

    def load(indices):
        rows = tf.numpy_function(gather, [indices], dtype, stateful=False)
        return tf.ensure_shape(rows, (None,) + table.shape[1:])

    return load
