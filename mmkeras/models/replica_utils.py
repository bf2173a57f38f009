"""Loss normalisation over the global batch under a tf.distribute strategy.

Keras losses divide by the local batch and the number of replicas, which
weights a replica's examples (or tokens) by how many the others happened to
get. mmkeras models divide their loss sums by the all-reduced count instead,
so the loss is the mean over the global batch whatever the strategy.
"""

import keras
import tensorflow as tf


def replica_context():
    """The TensorFlow replica context when several replicas train, else None."""
    if keras.backend.backend() != "tensorflow":
        return None
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    return context


def sum_over_replicas(value):
    """`value` summed over all replicas (itself on one replica)."""
    context = replica_context()
    return value if context is None else context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def scale_for_replicas(value):
    """Per-replica regularization terms: their all-reduced gradient sum counts each once."""
    context = replica_context()
    return value if context is None else value / context.num_replicas_in_sync


def unscale_for_replicas(value):
    """A replica's share of the global loss -> the value its loss metric averages to the global loss."""
    context = replica_context()
    return value if context is None else value * context.num_replicas_in_sync


def gather_over_replicas(value):
    """`(all replicas' value concatenated on axis 0, this replica's row offset)`.

    On one replica: `(value, 0)`. The gradient of `ReplicaContext.all_gather`
    all-reduces the upstream gradient and keeps this replica's slice, so a
    loss over the gathered rows back-propagates into every replica's own
    inputs: gradients equal those of one device holding the global batch.
    Replicas may hold different numbers of rows (a last, partial batch).
    """
    context = replica_context()
    if context is None:
        return value, 0
    sizes = context.all_gather(tf.shape(value)[:1], axis=0)
    replica = context.replica_id_in_sync_group
    offset = tf.reduce_sum(sizes[:replica]) if isinstance(replica, int) else tf.reduce_sum(
        tf.where(tf.range(tf.size(sizes)) < replica, sizes, tf.zeros_like(sizes)))
    return context.all_gather(value, axis=0), offset
