"""tf.data pipelines for captioning: decode, resize, augment, tokenize, batch."""

import dataclasses

import keras
import keras_hub
import numpy as np
import tensorflow as tf

from mmkeras.data.caption_choice import choose_caption
from mmkeras.data.image_table import cached_feature_views
from mmkeras.data.image_table import checked_image_table
from mmkeras.data.image_table import pick_view
from mmkeras.data.image_table import table_gather
from mmkeras.data.image_table import view_feature_table
from mmkeras.data.synthetic_captions import SYNTHETIC_PREFIX
from mmkeras.data.tokenizer import END_TOKEN
from mmkeras.data.tokenizer import PAD_TOKEN
from mmkeras.data.tokenizer import START_TOKEN


def decode_image(image_bytes, image_size, max_pixels=None):
    """Decodes one encoded JPEG/PNG image and resizes it, in graph.

    The one image preprocessing of mmkeras: training, evaluation and every
    export call it, so a served model sees exactly what the trained one saw.
    Any size and aspect ratio is squashed to `image_size` x `image_size`;
    greyscale becomes RGB and alpha is dropped.

    Args:
        image_bytes: scalar `tf.string`, an encoded JPEG or PNG (GIF/BMP work
            too, first frame).
        image_size: int, output height and width.
        max_pixels: optional int. If set, the header must declare at most this
            many pixels (width * height, read without decoding by
            `image_header.check_image_size`), or the call fails with an
            `InvalidArgumentError` before anything is decoded; only JPEG, PNG,
            GIF and BMP pass then. None (default): no check.

    Returns:
        float32 `(image_size, image_size, 3)` with values in `[0, 255]`.
    """
    if max_pixels is not None:
        from mmkeras.data.image_header import check_image_size

        image_bytes = check_image_size(image_bytes, max_pixels)
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    image = tf.image.resize(
        image, (image_size, image_size), method="bilinear", antialias=True
    )
    image = tf.clip_by_value(image, 0.0, 255.0)
    return tf.ensure_shape(image, (image_size, image_size, 3))


def decode_images(images_bytes, image_size, max_pixels=None):
    """Batched `decode_image`: `(batch,)` strings -> `(batch, size, size, 3)` float32.

    With `max_pixels`, every header is checked before any image is decoded,
    and the error names the batch position (`Input images[3] declares ...`).
    """
    if max_pixels is not None:
        from mmkeras.data.image_header import check_image_sizes

        images_bytes = check_image_sizes(images_bytes, max_pixels)
    return tf.map_fn(
        lambda b: decode_image(b, image_size),
        images_bytes,
        fn_output_signature=tf.TensorSpec((image_size, image_size, 3), tf.float32),
    )


def image_loader(records, image_size, synthetic=None):
    """Returns a graph function: record image id -> uint8 `(size, size, 3)` image.

    Files are read and decoded; synthetic ids (`"synthetic:<split>:<index>"`)
    are rendered by `synthetic`, a `SyntheticCaptions`. Images are uint8 so an
    in-memory cache stays 4x smaller than float32.
    """
    if records and records[0].image.startswith(SYNTHETIC_PREFIX + ":"):
        if synthetic is None:
            raise ValueError("Synthetic records need the `synthetic` data set to render them.")

        def render(image_id):
            return synthetic.render_image(image_id.decode("utf-8"))

        def load(image_id):
            image = tf.numpy_function(render, [image_id], tf.uint8, stateful=False)
            image = tf.ensure_shape(image, (synthetic.image_size, synthetic.image_size, 3))
            if synthetic.image_size != image_size:
                image = tf.image.resize(image, (image_size, image_size), antialias=True)
                image = tf.cast(tf.round(image), tf.uint8)
            return image

        return load

    def load(path):
        image = decode_image(tf.io.read_file(path), image_size)
        return tf.cast(tf.round(image), tf.uint8)

    return load


def image_dataset(records, image_size, synthetic=None):
    """An ordered dataset of uint8 `(image_size, image_size, 3)` images of `records`."""
    ids = tf.constant([r.image for r in records], dtype=tf.string)
    load = image_loader(records, image_size, synthetic)
    return tf.data.Dataset.from_tensor_slices(ids).map(load, num_parallel_calls=tf.data.AUTOTUNE)


def image_bytes(records, synthetic=None, image_format="jpeg"):
    """Encoded bytes of each record's image, as a Python list (for exports)."""
    from mmkeras.data.synthetic_captions import encode_jpeg, encode_png

    encode = encode_jpeg if image_format == "jpeg" else encode_png
    out = []
    for record in records:
        if record.image.startswith(SYNTHETIC_PREFIX + ":"):
            out.append(encode(synthetic.render_image(record.image)))
        else:
            with open(record.image, "rb") as f:
                out.append(f.read())
    return out


@dataclasses.dataclass
class CaptionStats:
    """What tokenization did to the captions of a split."""

    num_captions: int = 0
    truncated_captions: int = 0
    max_tokens: int = 0

    def summary(self):
        return (
            f"{self.num_captions} captions, {self.truncated_captions} truncated to "
            f"the sequence length (longest had {self.max_tokens} tokens)"
        )


def caption_stats(records, tokenizer, sequence_length):
    """Counts captions too long for `sequence_length` (start and end included)."""
    captions = [c for r in records for c in r.captions]
    stats = CaptionStats(num_captions=len(captions))
    if not captions:
        return stats
    # Traced, the tokenizer takes its TensorFlow Text path (fast, ragged output).
    count_tokens = tf.function(lambda texts: tokenizer(texts).row_lengths())
    lengths = []
    for start in range(0, len(captions), 4096):
        lengths.append(count_tokens(tf.constant(captions[start : start + 4096])).numpy())
    lengths = np.concatenate(lengths)
    # +2 for the start and end tokens; the model sees sequence_length inputs.
    stats.truncated_captions = int(np.sum(lengths + 2 > sequence_length + 1))
    stats.max_tokens = int(lengths.max())
    return stats


def build_augmenter(seed=0):
    """Train-only augmentation with Keras layers.

    No horizontal flips: they would turn "left of" into a wrong caption.
    """
    return keras.Sequential(
        [
            keras.layers.RandomTranslation(0.06, 0.06, fill_mode="constant", seed=seed),
            keras.layers.RandomContrast(0.15, value_range=(0, 255), seed=seed + 1),
            keras.layers.RandomBrightness(0.1, value_range=(0, 255), seed=seed + 2),
        ],
        name="augmenter",
    )


def teacher_forcing_inputs(tokenizer, sequence_length, augmenter=None, image_key="images"):
    """Returns the batched map `(uint8 images, captions) -> (x, y, sample_weight)`.

    Shared by every captioning input pipeline (in-memory and TFRecord), so the
    model sees one format: `x = {"images": float32, "token_ids": int32,
    "padding_mask": int32}` (int32, not bool: Keras' distributed `fit` sums the
    first batch across replicas, which bool tensors cannot do), `y` the next
    tokens, `sample_weight` 1.0 on real targets. With `image_key="image_features"`
    the first input is cached image features, passed on as they are.
    """
    packer = keras_hub.layers.StartEndPacker(
        sequence_length=sequence_length + 1,
        start_value=tokenizer.token_to_id(START_TOKEN),
        end_value=tokenizer.token_to_id(END_TOKEN),
        pad_value=tokenizer.token_to_id(PAD_TOKEN),
        return_padding_mask=True,
    )

    def to_model_inputs(images, captions):
        images = tf.cast(images, tf.float32)
        if augmenter is not None:
            images = augmenter(images, training=True)
        token_ids, padding_mask = packer(tokenizer(captions))
        padding_mask = tf.cast(padding_mask, tf.int32)
        x = {
            image_key: images,
            "token_ids": token_ids[:, :-1],
            "padding_mask": padding_mask[:, :-1],
        }
        return x, token_ids[:, 1:], tf.cast(padding_mask[:, 1:], tf.float32)

    return to_model_inputs


def caption_dataset(
    records,
    tokenizer,
    image_size,
    sequence_length,
    batch_size,
    training,
    seed=0,
    synthetic=None,
    augment=False,
    cache=True,
    shuffle_buffer=None,
    skip_bad_examples=False,
    feature_extractor=None,
    model_inputs=None,
    with_image_index=False,
    feature_views=1,
):
    """Builds the teacher-forcing dataset of `ImageCaptioner` (or other image-caption pairs).

    Training: images are cached once decoded, shuffled every epoch, repeated,
    and each visit of an image takes one of its reference captions at random
    (a stateless choice from the seed and the element's position, so a run is
    reproducible). Evaluation: every (image, caption) pair once, in order.

    Yields `(x, y, sample_weight)` with `x = {"images", "token_ids",
    "padding_mask"}`, `y` the next-token targets and `sample_weight` 1.0 on real
    target tokens and 0.0 on padding.

    `feature_extractor` (a frozen image encoder's feature extractor, see
    `image_table.feature_table`) encodes each image once before the first
    batch; `x` then holds `"image_features"` instead of `"images"`. It needs
    `cache`, and `augment` only with `feature_views` > 1: then each training
    image is encoded as itself and `feature_views - 1` augmented versions,
    and every visit takes one of them (`image_table.view_feature_table`).

    `model_inputs(augmenter, image_key)` replaces the teacher-forcing map:
    it returns the batched map `(uint8 images or features, caption strings)
    -> model inputs` (e.g. `contrastive_pipeline.contrastive_inputs`); the
    image choice, shuffling, caching and caption choice stay the same.

    `with_image_index` adds `x["image_index"]`, int64: each example's
    position in `records` (what a self-critical reward looks references up
    by; `ImageCaptioner.enable_self_critical`).
    """
    if not records:
        raise ValueError("Cannot build a caption dataset from zero records.")
    load = image_loader(records, image_size, synthetic)
    gather_features = None
    positions = np.arange(len(records))
    views = 1
    if feature_extractor is not None:
        views = cached_feature_views(cache, augment, training, feature_views)
        table, decoded = checked_image_table(records, load, image_size, skip_bad_examples)
        positions = np.flatnonzero(decoded)
        features = view_feature_table(
            table[positions], feature_extractor, build_augmenter(seed) if views > 1 else None, views
        )
        gather_features = table_gather(features, tf.float32)
        records = [records[i] for i in positions]
    captions = tf.ragged.constant([list(r.captions) for r in records], dtype=tf.string)
    # Elements are (image or feature row, references, position in `records`).
    positions = tf.constant(positions, dtype=tf.int64)
    if gather_features is not None:
        # Elements carry row indices; batches gather their features.
        ds = tf.data.Dataset.from_tensor_slices((tf.range(len(records), dtype=tf.int64), captions, positions))
    else:
        ids = tf.constant([r.image for r in records], dtype=tf.string)
        ds = tf.data.Dataset.from_tensor_slices((ids, captions, positions)).map(
            lambda image_id, refs, position: (load(image_id), refs, position),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        if skip_bad_examples:
            # Files were checked cheaply when loaded (magic bytes, end markers);
            # an image that still fails to decode drops with its captions instead
            # of stopping a run that may be hours in.
            ds = ds.ignore_errors(log_warning=True)
        if cache:
            ds = ds.cache()

    if training:
        ds = ds.shuffle(
            shuffle_buffer or min(len(records), 10000),
            seed=seed,
            reshuffle_each_iteration=True,
        )
        ds = ds.repeat().enumerate()

        def pick(element_number, element):
            image, refs, position = element
            if gather_features is not None:
                image = pick_view(image, views, seed, element_number)
            return image, choose_caption(seed, element_number, refs), position

        ds = ds.map(pick, num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.flat_map(
            lambda image, refs, position: tf.data.Dataset.from_tensor_slices(refs).map(
                lambda caption: (image, caption, position)
            )
        )

    ds = ds.batch(batch_size, drop_remainder=training)
    # Cached features were augmented before the encoder, if at all.
    augmenter = build_augmenter(seed) if (training and augment and gather_features is None) else None
    if gather_features is not None:
        ds = ds.map(lambda rows, batch_captions, batch_positions: (
            gather_features(rows), batch_captions, batch_positions), num_parallel_calls=tf.data.AUTOTUNE)
    image_key = "images" if gather_features is None else "image_features"
    if model_inputs is None:
        to_model_inputs = teacher_forcing_inputs(tokenizer, sequence_length, augmenter, image_key=image_key)
    else:
        to_model_inputs = model_inputs(augmenter, image_key)

    def to_inputs(images, batch_captions, batch_positions):
        inputs = to_model_inputs(images, batch_captions)
        if not with_image_index:
            return inputs
        if isinstance(inputs, dict):
            return {**inputs, "image_index": batch_positions}
        x, *rest = inputs
        return ({**x, "image_index": batch_positions}, *rest)

    ds = ds.map(to_inputs, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def eval_image_dataset(records, image_size, batch_size, synthetic=None):
    """Batches of float32 images of `records`, in order, for generation."""
    ds = image_dataset(records, image_size, synthetic)
    ds = ds.map(lambda image: tf.cast(image, tf.float32), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
