"""CIDEr-D as reported by the COCO caption evaluation."""

import collections
import math

import numpy as np

from mmkeras.metrics._common import ngram_counts
from mmkeras.metrics._common import validate_caption_inputs
from mmkeras.metrics._common import validate_max_order


def _tf_idf(counts, document_frequency, log_num_images, max_order):
    """TF-IDF weights of an n-gram count vector and their L2 norm per order."""
    weights = {}
    squared_norms = [0.0] * max_order
    for ngram, count in counts.items():
        # An n-gram absent from all references gets the largest idf, log(N).
        idf = log_num_images - math.log(max(1.0, document_frequency[ngram]))
        weights[ngram] = count * idf
        squared_norms[len(ngram) - 1] += weights[ngram] ** 2
    return weights, [math.sqrt(value) for value in squared_norms]


def cider(predictions, references, max_order=4, sigma=6.0, return_per_image=False):
    """CIDEr-D of tokenised captions (Vedantam et al., 2015).

    Follows the COCO caption evaluation (pycocoevalcap `Cider`, which computes
    CIDEr-D): captions become TF-IDF vectors of their 1..`max_order`-grams, with
    document frequencies counted over the references of the evaluated images
    (an n-gram counts once per image whose references contain it) and
    `idf = log(num_images) - log(max(1, df))`. For every reference and order n,
    the prediction's weights are clipped to the reference's, the clipped dot
    product is divided by both norms (0 if either is 0) and multiplied by the
    length penalty `exp(-(len(prediction) - len(reference))^2 / (2 sigma^2))`.
    An image's score is 10 times the mean over orders and references; the corpus
    score is the mean over images.

    Because the idf depends on the evaluated set, scores change with the set:
    n-grams found in the references of every image weigh 0, so a single-image
    corpus always scores 0 (its idf is `log(1) - log(1) = 0` everywhere).

    Reference: Vedantam, Zitnick and Parikh, "CIDEr: Consensus-based Image
    Description Evaluation", CVPR 2015.

    Args:
        predictions: list of str, one caption per image, tokens separated by
            whitespace (see `normalize_caption`).
        references: list of lists of str, the reference captions of each image
            in the same order as `predictions`; at least one per image.
        max_order: int, the largest n-gram order. Defaults to 4. (With
            `max_order=1` the COCO code applies no length penalty, since it
            measures lengths in bigrams; here lengths are always token counts,
            which gives identical scores for `max_order >= 2`.)
        sigma: float, standard deviation of the gaussian length penalty.
            Defaults to 6.0.
        return_per_image: bool. If True, also return the score of every image.

    Returns:
        The mean CIDEr-D as a float (0 to 10 in practice). With
        `return_per_image=True`, a tuple of that float and a float64 array of
        shape `(num_images,)`.

    Example:

    >>> score = cider(["a dog runs", "a cat sleeps"],
    ...               [["a dog runs fast", "a dog is running"],
    ...                ["the cat sleeps", "a cat is asleep"]])
    >>> round(score, 4)
    3.3849
    """
    validate_caption_inputs(predictions, references)
    validate_max_order(max_order)
    if sigma <= 0:
        raise ValueError(f"`sigma` must be positive. Received: sigma={sigma}")

    reference_tokens = [
        [reference.split() for reference in image_references]
        for image_references in references
    ]
    reference_counts = [
        [ngram_counts(tokens, max_order) for tokens in image_tokens]
        for image_tokens in reference_tokens
    ]
    document_frequency = collections.Counter()
    for image_counts in reference_counts:
        document_frequency.update(set().union(*image_counts))
    log_num_images = math.log(len(predictions))

    per_image = []
    for prediction, image_counts, image_tokens in zip(
        predictions, reference_counts, reference_tokens
    ):
        prediction_tokens = prediction.split()
        prediction_weights, prediction_norms = _tf_idf(
            ngram_counts(prediction_tokens, max_order),
            document_frequency,
            log_num_images,
            max_order,
        )
        similarity = np.zeros(max_order)
        for counts, tokens in zip(image_counts, image_tokens):
            reference_weights, reference_norms = _tf_idf(
                counts, document_frequency, log_num_images, max_order
            )
            dot_products = [0.0] * max_order
            for ngram, weight in prediction_weights.items():
                reference_weight = reference_weights.get(ngram, 0.0)
                # CIDEr-D clips the prediction's weight to the reference's so that
                # repeating a matching n-gram does not raise the score.
                dot_products[len(ngram) - 1] += (
                    min(weight, reference_weight) * reference_weight
                )
            length_delta = len(prediction_tokens) - len(tokens)
            length_penalty = math.exp(-(length_delta**2) / (2.0 * sigma**2))
            for order in range(max_order):
                norm_product = prediction_norms[order] * reference_norms[order]
                if norm_product != 0.0:
                    similarity[order] += (
                        dot_products[order] / norm_product * length_penalty
                    )
        per_image.append(10.0 * float(np.mean(similarity)) / len(image_tokens))

    per_image = np.asarray(per_image, dtype=np.float64)
    score = float(np.mean(per_image))
    if return_per_image:
        return score, per_image
    return score
