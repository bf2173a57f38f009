"""Graph-friendly pieces of caption decoding: n-gram blocking, length penalty.

Both work on the fixed-length token buffer that generation fills in place:
`prompt` `(rows, max_length)` holds the start token at position 0, generated
tokens at positions `1 .. index - 1` and padding from `index` on, where
`index` is the (tensor) position of the token about to be generated.
"""

import math
import numbers

from keras import ops


def check_generation_options(no_repeat_ngram_size, length_penalty):
    """Raises `ValueError` naming the argument for bad decoding options."""
    if (
        isinstance(no_repeat_ngram_size, bool)
        or not isinstance(no_repeat_ngram_size, numbers.Integral)
        or no_repeat_ngram_size < 0
    ):
        raise ValueError(
            "`no_repeat_ngram_size` must be an int >= 0 (0 turns blocking off). "
            f"Received: no_repeat_ngram_size={no_repeat_ngram_size!r}"
        )
    if (
        isinstance(length_penalty, bool)
        or not isinstance(length_penalty, numbers.Real)
        or not math.isfinite(length_penalty)
    ):
        raise ValueError(
            "`length_penalty` must be a finite float. "
            f"Received: length_penalty={length_penalty!r}"
        )


def repeated_ngram_mask(prompt, index, ngram_size, vocabulary_size, pad_token_id):
    """Which tokens would repeat an n-gram of the generated prefix.

    As Hugging Face's `no_repeat_ngram_size`: token `t` is banned for a row
    when the row's last `ngram_size - 1` generated tokens followed by `t` form
    an n-gram that already occurs in its generated prefix. Only n-grams lying
    entirely in positions `1 .. index - 1` count, so the start token (position
    0) and the padding after `index` never do; n-grams holding padding (a
    finished row) are skipped too.

    Args:
        prompt: int tensor `(rows, max_length)`, `max_length` static.
        index: int scalar tensor, position of the next token.
        ngram_size: Python int >= 1.
        vocabulary_size: Python int.
        pad_token_id: Python int.

    Returns:
        A bool tensor `(rows, vocabulary_size)`, or None when no n-gram fits
        in `max_length` (nothing can ever be banned).
    """
    max_length = prompt.shape[1]
    # Start positions j = 1 .. windows: an n-gram must end before the last
    # position for its continuation to still be generated.
    windows = max_length - 1 - ngram_size
    if windows <= 0:
        return None
    rows = ops.shape(prompt)[0]
    starts = ops.arange(1, windows + 1, dtype="int32")
    # The n-gram at j ends at j + ngram_size - 1, which must be < index.
    inside = ops.less_equal(starts + ngram_size, index)
    matches = ops.broadcast_to(inside[None, :], (rows, windows))
    for offset in range(ngram_size):
        window = prompt[:, 1 + offset : 1 + offset + windows]
        matches = ops.logical_and(matches, ops.not_equal(window, pad_token_id))
        if offset < ngram_size - 1:
            # The row's generated token at index - ngram_size + 1 + offset. It
            # is clamped only where no window is inside (index < ngram_size).
            position = ops.maximum(index - ngram_size + 1 + offset, 0)
            suffix = ops.take(prompt, position, axis=1)
            matches = ops.logical_and(matches, ops.equal(window, suffix[:, None]))
    # Continuation of the n-gram at j: the token at j + ngram_size - 1.
    banned = ops.cast(prompt[:, ngram_size : ngram_size + windows], "int32")
    row_ids = ops.broadcast_to(ops.arange(rows, dtype="int32")[:, None], (rows, windows))
    indices = ops.reshape(ops.stack([row_ids, banned], axis=-1), (-1, 2))
    # A scatter (not a one-hot over the vocabulary) keeps the cost at
    # rows * windows per step whatever the vocabulary size.
    counts = ops.scatter(
        indices, ops.reshape(ops.cast(matches, "int32"), (-1,)), (rows, vocabulary_size)
    )
    return ops.greater(counts, 0)


def block_repeated_ngrams(logits, prompt, index, ngram_size, pad_token_id):
    """`logits` with -1e9 where a token would repeat an n-gram (see above)."""
    if not ngram_size:
        return logits
    banned = repeated_ngram_mask(prompt, index, ngram_size, logits.shape[-1], pad_token_id)
    if banned is None:
        return logits
    return ops.where(banned, ops.cast(-1e9, logits.dtype), logits)


def generated_lengths(token_ids, pad_token_id):
    """Generated tokens per row, up to and including the end token.

    Counts the non-padding tokens after the start token: generation never
    emits padding before the end token and only padding after it.
    """
    return ops.sum(ops.cast(ops.not_equal(token_ids[:, 1:], pad_token_id), "float32"), axis=1)


def length_normalized(log_probs, lengths, length_penalty):
    """`log_probs / lengths ** length_penalty`, Hugging Face's beam score.

    `length_penalty` 0 gives the summed log-probability, 1 the mean per
    token; larger values favour longer captions, negative ones shorter.
    """
    if length_penalty == 0:
        return log_probs
    lengths = ops.maximum(ops.cast(lengths, log_probs.dtype), 1.0)
    return log_probs / ops.power(lengths, float(length_penalty))
