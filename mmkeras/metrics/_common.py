"""Input checks and n-gram counting shared by the caption scorers."""

import collections
from collections.abc import Sequence


def validate_caption_inputs(predictions, references):
    """Checks one prediction and at least one reference per image.

    Args:
        predictions: list of str, one caption per image.
        references: list of lists of str, the reference captions of each image,
            in the same order as `predictions`.

    Raises:
        TypeError: if an argument is not a list of strings / list of lists of
            strings. A bare string is rejected, since iterating it would silently
            score single characters.
        ValueError: if the corpus is empty, the lengths differ, or an image has
            no reference.
    """
    if isinstance(predictions, str) or not isinstance(predictions, Sequence):
        raise TypeError(
            "`predictions` must be a list of strings, one per image. "
            f"Received: predictions of type {type(predictions).__name__}"
        )
    if isinstance(references, str) or not isinstance(references, Sequence):
        raise TypeError(
            "`references` must be a list with one list of reference strings per "
            f"image. Received: references of type {type(references).__name__}"
        )
    if len(predictions) != len(references):
        raise ValueError(
            "`predictions` and `references` must have one entry per image, in the "
            f"same order. Received: len(predictions)={len(predictions)}, "
            f"len(references)={len(references)}"
        )
    if not predictions:
        raise ValueError(
            "Caption metrics need at least one image. Received: empty "
            "`predictions` and `references`"
        )
    for index, prediction in enumerate(predictions):
        if not isinstance(prediction, str):
            raise TypeError(
                f"Every prediction must be a string. Received: predictions[{index}] "
                f"of type {type(prediction).__name__}"
            )
    for index, image_references in enumerate(references):
        if isinstance(image_references, str) or not isinstance(
            image_references, Sequence
        ):
            raise TypeError(
                f"references[{index}] must be a list of reference strings. "
                f"Received: references[{index}]={image_references!r}"
            )
        if not image_references:
            raise ValueError(
                "Every image needs at least one reference caption. Received: "
                f"references[{index}] is empty"
            )
        for reference in image_references:
            if not isinstance(reference, str):
                raise TypeError(
                    f"Every reference must be a string. Received: an element of "
                    f"references[{index}] of type {type(reference).__name__}"
                )


def validate_max_order(max_order):
    if isinstance(max_order, bool) or not isinstance(max_order, int) or max_order < 1:
        raise ValueError(
            f"`max_order` must be a positive integer. Received: max_order={max_order}"
        )


def ngram_counts(tokens, max_order):
    """Counts every n-gram of `tokens` with 1 <= n <= max_order.

    Returns:
        A `collections.Counter` keyed by token tuples; the order of an n-gram is
        the length of its key.
    """
    counts = collections.Counter()
    for order in range(1, max_order + 1):
        for start in range(len(tokens) - order + 1):
            counts[tuple(tokens[start : start + order])] += 1
    return counts
