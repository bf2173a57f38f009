"""Which reference caption a training visit of an image takes.

Both captioning training pipelines (in memory, `caption_pipeline.caption_dataset`,
and from TFRecords, `tfrecords.caption_train_dataset`) call `choose_caption`, so
a run's captions are the same function of its seed and its stream whichever
pipeline reads the data.
"""

import tensorflow as tf


def choose_caption(seed, position, refs):
    """One of an image's reference captions, chosen statelessly, in graph.

    A uniform choice seeded by `(seed, position)`: no random state, so the
    choice of a position is reproducible and a resumed stream repeats it.

    Args:
        seed: int or scalar int tensor, the pipeline's seed.
        position: scalar int64 tensor, the visit's position in the stream.
        refs: 1-D `tf.string` tensor, the image's captions (at least one).

    Returns:
        A scalar `tf.string` tensor, one element of `refs`.
    """
    return refs[stateless_index(seed, position, tf.shape(refs, out_type=tf.int64)[0])]


def stateless_index(seed, position, n):
    """A uniform int64 scalar in `[0, n)` drawn from `(seed, position)` alone, in graph.

    The choice every pipeline makes per stream position (a caption here, a
    cached feature view in `image_table.pick_view`): no random state, so a
    resumed stream repeats it.
    """
    return tf.random.stateless_uniform(
        (), seed=tf.stack([tf.cast(seed, tf.int64), tf.cast(position, tf.int64)]), maxval=n, dtype=tf.int64
    )
