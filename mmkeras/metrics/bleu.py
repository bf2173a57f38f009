"""Corpus BLEU-1..N as reported by the COCO caption evaluation."""

import collections
import math

import numpy as np

from mmkeras.metrics._common import ngram_counts
from mmkeras.metrics._common import validate_caption_inputs
from mmkeras.metrics._common import validate_max_order

# The COCO evaluation adds these to every numerator / denominator instead of
# smoothing properly: a corpus with no matching n-gram gets a score near 0 rather
# than a division error. They are kept so that scores equal the published ones.
_TINY = 1e-15
_SMALL = 1e-9


def _bleu_from_counts(matches, guesses, prediction_length, reference_length):
    """BLEU-1..N from clipped matches and n-gram counts, with brevity penalty."""
    scores = []
    precision_product = 1.0
    for order, (match, guess) in enumerate(zip(matches, guesses), start=1):
        precision_product *= (match + _TINY) / (guess + _SMALL)
        scores.append(precision_product ** (1.0 / order))
    length_ratio = (prediction_length + _TINY) / (reference_length + _SMALL)
    if length_ratio < 1.0:
        brevity_penalty = math.exp(1.0 - 1.0 / length_ratio)
        scores = [score * brevity_penalty for score in scores]
    return scores


def bleu(predictions, references, max_order=4, return_per_image=False):
    """Corpus BLEU-1..`max_order` of tokenised captions (Papineni et al., 2002).

    Follows the COCO caption evaluation (pycocoevalcap `Bleu`): n-gram matches
    are clipped to the largest count in any one reference; matches, n-gram counts
    and lengths are summed over the corpus before the geometric mean; the
    reference length of an image is the reference length closest to the
    prediction's (the shorter one on ties); and the brevity penalty
    `exp(1 - r / c)` applies when the corpus prediction length `c` is below the
    corpus reference length `r`. BLEU-n is the geometric mean of the 1..n-gram
    precisions, each smoothed as `(matches + 1e-15) / (count + 1e-9)`.

    Reference: Papineni, Roukos, Ward and Zhu, "BLEU: a Method for Automatic
    Evaluation of Machine Translation", ACL 2002.

    Args:
        predictions: list of str, one caption per image, tokens separated by
            whitespace (see `normalize_caption`).
        references: list of lists of str, the reference captions of each image
            in the same order as `predictions`; at least one per image.
        max_order: int, the largest n-gram order. Defaults to 4.
        return_per_image: bool. If True, also return the sentence-level BLEU of
            every image (same smoothing, per-image brevity penalty).

    Returns:
        A list of `max_order` floats `[BLEU-1, ..., BLEU-max_order]` in [0, 1].
        With `return_per_image=True`, a tuple of that list and a float64 array of
        shape `(num_images, max_order)`.

    Example:

    >>> scores = bleu(["a dog runs on the grass"],
    ...               [["a dog runs on grass", "the dog is running"]])
    >>> [round(score, 4) for score in scores]
    [1.0, 0.7746, 0.6694, 0.5623]
    """
    validate_caption_inputs(predictions, references)
    validate_max_order(max_order)

    total_matches = [0] * max_order
    total_guesses = [0] * max_order
    total_prediction_length = 0
    total_reference_length = 0
    per_image = []
    for prediction, image_references in zip(predictions, references):
        tokens = prediction.split()
        prediction_counts = ngram_counts(tokens, max_order)

        max_reference_counts = collections.Counter()
        reference_lengths = []
        for reference in image_references:
            reference_tokens = reference.split()
            reference_lengths.append(len(reference_tokens))
            max_reference_counts |= ngram_counts(reference_tokens, max_order)
        # Closest reference length; ties go to the shorter reference.
        reference_length = min(
            reference_lengths, key=lambda length: (abs(length - len(tokens)), length)
        )

        matches = [0] * max_order
        for ngram, count in prediction_counts.items():
            matches[len(ngram) - 1] += min(count, max_reference_counts[ngram])
        guesses = [max(0, len(tokens) - order + 1) for order in range(1, max_order + 1)]

        for order in range(max_order):
            total_matches[order] += matches[order]
            total_guesses[order] += guesses[order]
        total_prediction_length += len(tokens)
        total_reference_length += reference_length
        if return_per_image:
            per_image.append(
                _bleu_from_counts(matches, guesses, len(tokens), reference_length)
            )

    scores = _bleu_from_counts(
        total_matches, total_guesses, total_prediction_length, total_reference_length
    )
    if return_per_image:
        return scores, np.asarray(per_image, dtype=np.float64).reshape(-1, max_order)
    return scores
