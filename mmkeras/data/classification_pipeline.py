"""tf.data pipelines for image+text classification and VQA.

Many examples share an image (easy-vqa has about nine questions per image), so
with `cache=True` every distinct image is decoded once, into one uint8 array,
and batches gather their images from it by index: memory and decoding scale
with the images, not with the examples, and shuffling moves small indices
rather than images.
"""

import numpy as np
import tensorflow as tf

from mmkeras.data.caption_pipeline import build_augmenter
from mmkeras.data.caption_pipeline import image_loader
from mmkeras.data.image_table import cached_feature_views
from mmkeras.data.image_table import checked_image_table
from mmkeras.data.image_table import pick_view
from mmkeras.data.image_table import table_gather
from mmkeras.data.image_table import view_feature_table


def classification_texts(records):
    """The texts of `ClassificationRecord`s, in order (e.g. to learn a vocabulary)."""
    return [record.text for record in records]


def label_ids(records, label_names, multi_label=False):
    """The targets of `records`, in order, as the pipeline yields them.

    Args:
        records: `ClassificationRecord`s.
        label_names: every label, in class-id order.
        multi_label: multi-hot targets instead of class ids.

    Returns:
        int32 `(num_records,)` class ids, or float32 `(num_records,
        num_labels)` multi-hot rows when `multi_label`.
    """
    index = {name: i for i, name in enumerate(label_names)}
    if multi_label:
        targets = np.zeros((len(records), len(label_names)), dtype=np.float32)
    else:
        targets = np.zeros((len(records),), dtype=np.int32)
    for row, record in enumerate(records):
        if not multi_label and len(record.labels) != 1:
            raise ValueError(
                f"{record.origin}: a single-label example needs exactly one label. "
                f"Received: labels={record.labels}"
            )
        for label in record.labels:
            if label not in index:
                raise ValueError(
                    f"{record.origin}: label {label!r} is not in label_names. "
                    f"Received: label_names={list(label_names)}"
                )
            if multi_label:
                targets[row, index[label]] = 1.0
            else:
                targets[row] = index[label]
    return targets


def classification_dataset(
    records,
    label_names,
    text_preprocessor,
    image_size,
    batch_size,
    training,
    multi_label=False,
    seed=0,
    synthetic=None,
    augment=False,
    cache=True,
    skip_bad_examples=False,
    feature_extractor=None,
    text_features=None,
    feature_views=1,
):
    """Builds the dataset of `FusionClassifier`-style image+text models.

    Yields `(x, y)` with `x = {"images": float32 (batch, image_size, image_size,
    3) in [0, 255], "token_ids": int32 (batch, length), "padding_mask": bool
    (batch, length)}` and `y` int32 `(batch,)` class ids, or float32 `(batch,
    num_labels)` multi-hot rows when `multi_label` (as `label_ids`).

    Training: shuffled with `seed` (every epoch anew), repeated forever, full
    batches only. Evaluation: every record once, in order, the last batch
    possibly smaller, so outputs line up with `label_ids(records, ...)`.

    Args:
        records: `ClassificationRecord`s of one split.
        label_names: every label, in class-id order.
        text_preprocessor: a callable (a Keras layer) mapping a rank-1
            `tf.string` batch to `{"token_ids", "padding_mask"}`; applied to
            whole batches.
        image_size: int, side of the images.
        batch_size: int, examples per batch.
        training: shuffle, repeat and drop the remainder.
        multi_label: multi-hot targets instead of class ids.
        seed: int, the seed of shuffling and augmentation.
        synthetic: the `SyntheticCaptions` that renders `synthetic:` images.
        augment: apply `caption_pipeline.build_augmenter` (training only).
        cache: decode each distinct image once into memory before the first
            batch; False decodes an example's image every time it is visited
            (for image sets too large for memory).
        skip_bad_examples: drop the examples of images that fail to decode
            instead of raising (`BadExampleError` naming the image and a row
            when `cache`; TensorFlow's decode error mid-epoch otherwise).
        feature_extractor: optional frozen image feature extractor (see
            `image_table.feature_table`): each distinct image is encoded once
            and `x` holds `"image_features"` instead of `"images"`. Needs
            `cache`, and `augment` only with `feature_views` > 1.
        feature_views: with `feature_extractor` and `augment`, the number of
            versions of each image whose features are cached (the image and
            `feature_views - 1` augmented ones); each visit takes one
            (`image_table.view_feature_table`).
        text_features: optional `text_features.feature_lookup` of a frozen
            text encoder over (at least) the records' texts: `x` also holds
            their `"text_features"`.
    """
    if not records:
        raise ValueError("Cannot build a classification dataset from zero records.")
    targets = label_ids(records, label_names, multi_label)
    texts = np.array(classification_texts(records), dtype=object)
    augmenter = build_augmenter(seed) if (training and augment) else None
    views = 1
    if feature_extractor is not None:
        views = cached_feature_views(cache, augment, training, feature_views)
    image_key = "images" if feature_extractor is None else "image_features"

    if cache:
        image_index = {}
        owners = []
        for record in records:
            if record.image not in image_index:
                image_index[record.image] = len(owners)
                owners.append(record)
        table, decoded = checked_image_table(
            owners, image_loader(owners, image_size, synthetic), image_size, skip_bad_examples
        )
        indices = np.array([image_index[r.image] for r in records], dtype=np.int64)
        keep = decoded[indices]
        indices, texts, targets = indices[keep], texts[keep], targets[keep]
        if feature_extractor is not None:
            table = view_feature_table(table, feature_extractor, augmenter if views > 1 else None, views)
            augmenter = None  # the cached views are augmented already
        load_images = table_gather(table, tf.as_dtype(table.dtype))
        ds = tf.data.Dataset.from_tensor_slices((indices, texts, targets))
    else:
        load = image_loader(records, image_size, synthetic)
        image_ids = np.array([r.image for r in records], dtype=object)
        ds = tf.data.Dataset.from_tensor_slices((image_ids, texts, targets))

    if training:
        # The elements are indices or ids, text and label: a full shuffle is cheap.
        ds = ds.shuffle(len(targets), seed=seed, reshuffle_each_iteration=True).repeat()
        if views > 1:  # only ever with cached features
            ds = ds.enumerate().map(
                lambda position, element: (pick_view(element[0], views, seed, position), *element[1:]),
                num_parallel_calls=tf.data.AUTOTUNE,
            )
    if not cache:
        ds = ds.map(lambda image_id, text, target: (load(image_id), text, target),
                    num_parallel_calls=tf.data.AUTOTUNE)
        if skip_bad_examples:
            ds = ds.ignore_errors(log_warning=True)
        load_images = tf.identity
    ds = ds.batch(batch_size, drop_remainder=training)

    def to_model_inputs(images, batch_texts, batch_targets):
        images = tf.cast(load_images(images), tf.float32)
        if augmenter is not None:
            images = augmenter(images, training=True)
        features = text_preprocessor(batch_texts)
        x = {
            image_key: images,
            "token_ids": tf.cast(features["token_ids"], tf.int32),
            "padding_mask": tf.cast(features["padding_mask"], tf.bool),
        }
        if text_features is not None:
            x["text_features"] = text_features(batch_texts)
        return x, batch_targets

    ds = ds.map(to_model_inputs, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
