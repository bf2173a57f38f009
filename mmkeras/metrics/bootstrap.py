"""Confidence intervals of a mean score over test items, by the bootstrap.

A corpus score that is the mean of per-item scores (CIDEr-D with its
document frequencies held fixed, accuracy) moves with the sample of items it
was measured on: on Flickr8k-1k's 100 test images, a captioner's CIDEr-D has
a standard error of about 0.05. The percentile bootstrap (Efron and
Tibshirani, 1993) resamples the items with replacement and reads the
interval off the resampled means.
"""

import numpy as np

# The coverage every evaluation reports its intervals at (`*_ci_low` / `*_ci_high`).
DEFAULT_CONFIDENCE = 0.95


def bootstrap_interval(scores, confidence=DEFAULT_CONFIDENCE, num_resamples=1000, seed=0):
    """Percentile-bootstrap interval of the mean of `scores`.

    Deterministic for a given `seed`, so a rerun of an evaluation reports the
    same interval.

    Args:
        scores: 1-D array-like of per-item scores (at least one).
        confidence: float in (0, 1), the interval's coverage.
        num_resamples: int >= 1, number of resamples of the items.
        seed: int, seed of the resampling.

    Returns:
        `(low, high)`, Python floats.

    Example:
    >>> low, high = bootstrap_interval([0.0, 1.0] * 50)
    >>> 0.39 < low < 0.5 < high < 0.61
    True
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError(f"`scores` must be a non-empty 1-D array. Received shape {scores.shape}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"`confidence` must be in (0, 1). Received: confidence={confidence}")
    if num_resamples < 1:
        raise ValueError(f"`num_resamples` must be >= 1. Received: num_resamples={num_resamples}")
    rng = np.random.default_rng(seed)
    means = scores[rng.integers(0, scores.size, size=(num_resamples, scores.size))].mean(axis=1)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)
