"""Encode every distinct text once through a frozen text encoder, and look the features up.

The text side of `image_table.feature_table`: with a frozen pretrained text
tower (MiniLM: six BERT layers over every token), the tower's output for a
caption or question is the same at every visit, and computing it dominates a
training step whose trainable part is a projection. `feature_lookup` runs the
tower once per distinct text before the first batch; training batches then map
their strings to rows of that table inside the tf.data graph.
"""

import numpy as np
import tensorflow as tf

from mmkeras.data.image_table import table_gather

# Texts encoded per step while the table is filled.
_FEATURE_BATCH = 128


class FeatureCacheTooLargeError(ValueError):
    """The features of the texts would take more memory than allowed."""


def feature_lookup(texts, text_preprocessor, feature_extractor, max_bytes=None):
    """Encodes each distinct text once; returns a graph function strings -> features.

    Args:
        texts: iterable of the strings the dataset can yield (duplicates fine).
        text_preprocessor: the model's `TextPreprocessor` (strings ->
            `{"token_ids", "padding_mask"}`).
        feature_extractor: callable `(token_ids, padding_mask)` -> float
            features `(batch, length, dim)` (a frozen `TextEncoder.features`
            in inference mode).
        max_bytes: optional limit of the float32 table; exceeded, raises
            `FeatureCacheTooLargeError` after encoding one batch.

    Returns:
        `lookup(strings)`: rank-1 `tf.string` -> float32 `(batch, length,
        dim)`. A string not among `texts` is an `InvalidArgumentError` naming
        the cache (never a silent zero row).
    """
    unique = sorted(set(texts))
    if not unique:
        raise ValueError("Cannot cache the features of zero texts.")
    extract = tf.function(lambda x: feature_extractor(x["token_ids"], x["padding_mask"]))
    parts = []
    for start in range(0, len(unique), _FEATURE_BATCH):
        batch = text_preprocessor(tf.constant(unique[start : start + _FEATURE_BATCH]))
        parts.append(np.asarray(extract(batch), dtype=np.float32))
        if start == 0 and max_bytes is not None:
            needed = parts[0][0].nbytes * len(unique)
            if needed > max_bytes:
                raise FeatureCacheTooLargeError(
                    f"Caching the text features of {len(unique)} texts needs {needed / 2**20:.0f} MiB, "
                    f"more than the {max_bytes / 2**20:.0f} MiB allowed."
                )
    table = np.concatenate(parts, axis=0)
    index = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(unique, tf.string), tf.range(len(unique), dtype=tf.int64)),
        default_value=-1,
    )
    gather = table_gather(table, tf.float32)

    def lookup(strings):
        rows = index.lookup(strings)
        tf.debugging.assert_non_negative(
            rows, message="A text missing from the cached text features (built from other texts)")
        return gather(rows)

    return lookup
