"""Image-text contrastive losses: CLIP's symmetric InfoNCE and SigLIP's pairwise sigmoid.

Both take this replica's rows and the global batch's columns, so that under a
multi-replica strategy every example is contrasted with the negatives of the
whole global batch (the replicas' embeddings are gathered, see
`replica_utils.gather_over_replicas`), as CLIP (Radford et al., 2021) and
SigLIP (Zhai et al., 2023) train. Each returns per-row loss terms; the model
sums them and divides by the global batch size.
"""

import keras
from keras import ops

LOSSES = ("infonce", "sigmoid")


def positive_mask(local_token_ids, all_token_ids, offset):
    """`(rows, columns)` bool: True where the two texts are the same token sequence.

    Two images whose captions are identical cannot be told apart by that
    caption, so a batch's duplicate captions are positives of each other
    instead of false negatives (the synthetic data repeats "a small red
    circle" across many images). Row `i`'s own column (`offset + i`) is
    always positive.
    """
    same = ops.all(ops.equal(local_token_ids[:, None, :], all_token_ids[None, :, :]), axis=-1)
    rows = ops.shape(local_token_ids)[0]
    columns = ops.shape(all_token_ids)[0]
    own = ops.equal(ops.arange(columns)[None, :], (ops.arange(rows) + offset)[:, None])
    return ops.logical_or(same, own)


def infonce_terms(local_image, local_text, all_image, all_text, logit_scale, positives):
    """Symmetric InfoNCE (CLIP): per-row image-to-text plus text-to-image cross-entropy, halved.

    Args:
        local_image, local_text: `(rows, dim)` L2-normalised embeddings of this replica.
        all_image, all_text: `(columns, dim)` embeddings of the global batch.
        logit_scale: scalar, the (exponentiated) inverse temperature.
        positives: `(rows, columns)` bool, see `positive_mask`; several
            positives in a row share the target probability evenly.

    Returns:
        `(rows,)` float32 loss terms.
    """
    targets = ops.cast(positives, "float32")
    targets = targets / ops.sum(targets, axis=-1, keepdims=True)
    image_to_text = logit_scale * ops.matmul(local_image, ops.transpose(all_text))
    text_to_image = logit_scale * ops.matmul(local_text, ops.transpose(all_image))
    loss_i2t = keras.losses.categorical_crossentropy(targets, image_to_text, from_logits=True)
    loss_t2i = keras.losses.categorical_crossentropy(targets, text_to_image, from_logits=True)
    return 0.5 * (loss_i2t + loss_t2i)


def sigmoid_terms(local_image, all_text, logit_scale, logit_bias, positives):
    """Pairwise sigmoid loss (SigLIP): each image row against every text of the global batch.

    `-sum_j log sigmoid(z_ij * (t * x_i . y_j + b))` with `z_ij = +1` for
    positive pairs and `-1` otherwise. Every (image, text) pair of the global
    batch is in exactly one replica's rows.

    Returns:
        `(rows,)` float32 loss terms.
    """
    logits = logit_scale * ops.matmul(local_image, ops.transpose(all_text)) + logit_bias
    signs = 2.0 * ops.cast(positives, "float32") - 1.0
    return -ops.sum(ops.log_sigmoid(signs * logits), axis=-1)


def retrieval_hits(local_image, local_text, all_image, all_text, positives):
    """`(rows,)` float32: mean of "the best text is a positive" and "the best image is"."""
    image_to_text = ops.matmul(local_image, ops.transpose(all_text))
    text_to_image = ops.matmul(local_text, ops.transpose(all_image))
    def hit(scores):
        best = ops.argmax(scores, axis=-1)
        picked = ops.take_along_axis(positives, best[:, None], axis=-1)[:, 0]
        return ops.cast(picked, "float32")

    return 0.5 * (hit(image_to_text) + hit(text_to_image))
