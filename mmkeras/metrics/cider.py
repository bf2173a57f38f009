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
    per_image = CIDErScorer(references, max_order=max_order, sigma=sigma).score(predictions)
    score = float(np.mean(per_image))
    if return_per_image:
        return score, per_image
    return score


class CIDErScorer:
    """CIDEr-D of captions against a fixed corpus of references (`cider`'s definition).

    The corpus (document frequencies, every reference's TF-IDF vector) is
    computed once, so scoring is fast enough to be a training reward: e.g.
    self-critical sequence training scores sampled captions of training
    images against their references with document frequencies of the
    training corpus (Rennie et al., 2017). `cider(p, r)` is
    `CIDErScorer(r).score(p).mean()`.

    Args:
        references: list of lists of str, the tokenised reference captions
            (tokens separated by whitespace) of each image of the corpus.
        max_order: int, the largest n-gram order. Defaults to 4.
        sigma: float, standard deviation of the gaussian length penalty.

    Example:

    >>> scorer = CIDErScorer([["a dog runs fast", "a dog is running"],
    ...                       ["the cat sleeps", "a cat is asleep"]])
    >>> [round(float(s), 4) for s in scorer.score(["a cat sleeps"], image_indices=[1])]
    [2.7653]
    """

    def __init__(self, references, max_order=4, sigma=6.0):
        validate_max_order(max_order)
        if sigma <= 0:
            raise ValueError(f"`sigma` must be positive. Received: sigma={sigma}")
        if not references:
            raise ValueError("`references` must hold the references of at least one image.")
        self.max_order = max_order
        self.sigma = sigma
        reference_tokens = [
            [reference.split() for reference in image_references]
            for image_references in references
        ]
        reference_counts = [
            [ngram_counts(tokens, max_order) for tokens in image_tokens]
            for image_tokens in reference_tokens
        ]
        self.document_frequency = collections.Counter()
        for image_counts in reference_counts:
            self.document_frequency.update(set().union(*image_counts))
        self.log_num_images = math.log(len(references))
        # Per image, per reference: (TF-IDF weights, norms per order, length).
        self._references = [
            [
                (*_tf_idf(counts, self.document_frequency, self.log_num_images, max_order), len(tokens))
                for counts, tokens in zip(image_counts, image_tokens)
            ]
            for image_counts, image_tokens in zip(reference_counts, reference_tokens)
        ]

    def __len__(self):
        return len(self._references)

    def score(self, predictions, image_indices=None):
        """CIDEr-D of each prediction against the references of its image.

        Args:
            predictions: list of str, tokenised captions.
            image_indices: the corpus image of each prediction (ints); defaults
                to `range(len(predictions))`, one prediction per image in order.

        Returns:
            A float64 array of shape `(len(predictions),)`.
        """
        if image_indices is None:
            image_indices = range(len(predictions))
        image_indices = [int(i) for i in image_indices]
        if len(image_indices) != len(predictions):
            raise ValueError(
                f"`image_indices` must give one image per prediction. Received: "
                f"{len(image_indices)} indices for {len(predictions)} predictions"
            )
        for i in image_indices:
            if not 0 <= i < len(self._references):
                raise ValueError(
                    f"Image index {i} is outside the corpus of {len(self._references)} images."
                )
        return np.asarray(
            [self._score_one(p, self._references[i]) for p, i in zip(predictions, image_indices)],
            dtype=np.float64,
        )

    def _score_one(self, prediction, image_references):
        max_order = self.max_order
        prediction_tokens = prediction.split()
        prediction_weights, prediction_norms = _tf_idf(
            ngram_counts(prediction_tokens, max_order),
            self.document_frequency,
            self.log_num_images,
            max_order,
        )
        similarity = np.zeros(max_order)
        for reference_weights, reference_norms, reference_length in image_references:
            dot_products = [0.0] * max_order
            for ngram, weight in prediction_weights.items():
                reference_weight = reference_weights.get(ngram, 0.0)
                # CIDEr-D clips the prediction's weight to the reference's so that
                # repeating a matching n-gram does not raise the score.
                dot_products[len(ngram) - 1] += min(weight, reference_weight) * reference_weight
            length_delta = len(prediction_tokens) - reference_length
            length_penalty = math.exp(-(length_delta**2) / (2.0 * self.sigma**2))
            for order in range(max_order):
                norm_product = prediction_norms[order] * reference_norms[order]
                if norm_product != 0.0:
                    similarity[order] += dot_products[order] / norm_product * length_penalty
        return 10.0 * float(np.mean(similarity)) / len(image_references)
