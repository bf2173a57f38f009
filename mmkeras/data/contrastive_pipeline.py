"""tf.data pipelines of the dual encoder: (image, caption) pairs, images, texts.

Training pairs come from the captioning pipeline (`caption_pipeline.caption_dataset`
with the dual encoder's input map): images cached once decoded (or their
frozen features), shuffled every epoch, each visit of an image taking one of
its captions at random. An epoch's batches thus hold distinct images, which a
contrastive loss needs: two copies of one image in a batch would be each
other's false negatives.
"""

import tensorflow as tf

from mmkeras.data import caption_pipeline


def contrastive_inputs(text_preprocessor, text_features=None):
    """The `model_inputs` factory of `caption_dataset` for a `DualEncoder`.

    Returns `factory(augmenter, image_key)`, whose batched map turns
    `(uint8 images or cached features, caption strings)` into
    `{image_key, "token_ids", "padding_mask"}` (int32 mask: Keras'
    distributed `fit` sums the first batch across replicas, which bool
    tensors cannot do). No targets: the positives are the pairs themselves.
    With `text_features` (a `text_features.feature_lookup` of a frozen text
    tower), the inputs also hold the captions' cached `"text_features"`.
    """

    def factory(augmenter, image_key):
        def to_model_inputs(images, captions):
            if image_key == "images":
                images = tf.cast(images, tf.float32)
                if augmenter is not None:
                    images = augmenter(images, training=True)
            text = text_preprocessor(captions)
            inputs = {
                image_key: images,
                "token_ids": text["token_ids"],
                "padding_mask": tf.cast(text["padding_mask"], tf.int32),
            }
            if text_features is not None:
                inputs["text_features"] = text_features(captions)
            return inputs

        return to_model_inputs

    return factory


def contrastive_dataset(records, text_preprocessor, image_size, batch_size, training, seed=0, synthetic=None,
                        augment=False, cache=True, skip_bad_examples=False, feature_extractor=None,
                        text_features=None, feature_views=1):
    """Batches of `{"images" (or "image_features"), "token_ids", "padding_mask"}` pairs.

    Training: the infinite shuffled stream, one random caption per image
    visit (see `caption_pipeline.caption_dataset`). Evaluation: every
    (image, caption) pair of `records` once, in order. `text_features`: see
    `contrastive_inputs`.
    """
    return caption_pipeline.caption_dataset(
        records, None, image_size, None, batch_size, training=training, seed=seed, synthetic=synthetic,
        augment=augment, cache=cache, skip_bad_examples=skip_bad_examples,
        feature_extractor=feature_extractor, model_inputs=contrastive_inputs(text_preprocessor, text_features),
        feature_views=feature_views,
    )


def text_dataset(texts, text_preprocessor, batch_size):
    """Batches of `{"token_ids", "padding_mask"}` of `texts`, in order."""
    ds = tf.data.Dataset.from_tensor_slices(tf.constant(list(texts), tf.string)).batch(batch_size)
    return ds.map(text_preprocessor, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
