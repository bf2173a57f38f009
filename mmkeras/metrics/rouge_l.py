"""ROUGE-L as reported by the COCO caption evaluation."""

import numpy as np

from mmkeras.metrics._common import validate_caption_inputs


def _lcs_length(first, second):
    """Length of the longest common subsequence of two token lists."""
    if len(first) < len(second):
        first, second = second, first
    # One row of the dynamic-programming table, over the shorter sequence.
    previous = [0] * (len(second) + 1)
    for token in first:
        current = [0]
        for index, other in enumerate(second):
            if token == other:
                current.append(previous[index] + 1)
            else:
                current.append(max(previous[index + 1], current[index]))
        previous = current
    return previous[-1]


def _rouge_l_single(prediction, image_references, beta):
    # Split on single spaces, not on runs of whitespace: the COCO evaluation
    # does, so an empty prediction is one empty token (score 0, no division by
    # zero) and irregular spacing scores the same as there.
    prediction_tokens = prediction.split(" ")
    best_precision = 0.0
    best_recall = 0.0
    for reference in image_references:
        reference_tokens = reference.split(" ")
        lcs = _lcs_length(reference_tokens, prediction_tokens)
        best_precision = max(best_precision, lcs / len(prediction_tokens))
        best_recall = max(best_recall, lcs / len(reference_tokens))
    if best_precision == 0.0 or best_recall == 0.0:
        return 0.0
    return (
        (1.0 + beta**2)
        * best_precision
        * best_recall
        / (best_recall + beta**2 * best_precision)
    )


def rouge_l(predictions, references, beta=1.2, return_per_image=False):
    """Mean ROUGE-L F-score of tokenised captions (Lin, 2004).

    Follows the COCO caption evaluation (pycocoevalcap `Rouge`): for every image
    the longest common subsequence (LCS) of the prediction with each reference
    gives a precision `LCS / len(prediction)` and a recall
    `LCS / len(reference)`; the maximum precision and the maximum recall over
    the references (possibly from different references) are combined into
    `F = (1 + beta^2) P R / (R + beta^2 P)`, and the corpus score is the mean of
    `F` over images. Captions are split on single spaces, as there.

    Reference: Lin, "ROUGE: A Package for Automatic Evaluation of Summaries",
    ACL Workshop on Text Summarization Branches Out, 2004.

    Args:
        predictions: list of str, one caption per image, tokens separated by
            single spaces (see `normalize_caption`).
        references: list of lists of str, the reference captions of each image
            in the same order as `predictions`; at least one per image.
        beta: float, weight of recall relative to precision. Defaults to 1.2,
            the COCO evaluation's value.
        return_per_image: bool. If True, also return the F-score of every image.

    Returns:
        The mean ROUGE-L as a float in [0, 1]. With `return_per_image=True`, a
        tuple of that float and a float64 array of shape `(num_images,)`.

    Example:

    >>> round(rouge_l(["a dog runs on the grass"],
    ...               [["a dog runs on grass", "the dog is running"]]), 4)
    0.9242
    """
    validate_caption_inputs(predictions, references)
    if beta <= 0:
        raise ValueError(f"`beta` must be positive. Received: beta={beta}")
    per_image = np.asarray(
        [
            _rouge_l_single(prediction, image_references, beta)
            for prediction, image_references in zip(predictions, references)
        ],
        dtype=np.float64,
    )
    score = float(np.mean(per_image))
    if return_per_image:
        return score, per_image
    return score
