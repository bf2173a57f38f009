"""Image-text retrieval metrics (recall@K, mean and median rank) and zero-shot classification.

Queries rank every candidate by cosine similarity. A query can have several
positives (each Flickr8k image has five captions): its rank is that of its
best-ranked positive, as in the standard COCO/Flickr retrieval protocol
(Karpathy & Fei-Fei, 2015; CLIP). Ranks are 1-based; ties between a positive
and a negative count against the positive (the pessimistic convention), so a
model that scores everything equally does not look good.
"""

import numpy as np

from mmkeras.metrics.bootstrap import bootstrap_interval

RECALL_KS = (1, 5, 10)


def caption_relevance(image_captions, texts):
    """`(num_texts, num_images)` bool: text `t` is a positive of image `i`.

    A text is a positive of every image among whose captions it occurs
    (compared after lower-casing and whitespace normalisation), so a caption
    shared by several images (common in synthetic data) retrieves any of them.

    Args:
        image_captions: list (per image) of lists of caption strings.
        texts: list of query caption strings.
    """
    def norm(text):
        return " ".join(str(text).lower().split())

    owners = {}
    for i, captions in enumerate(image_captions):
        for caption in captions:
            owners.setdefault(norm(caption), set()).add(i)
    relevance = np.zeros((len(texts), len(image_captions)), bool)
    for t, text in enumerate(texts):
        for i in owners.get(norm(text), ()):
            relevance[t, i] = True
    return relevance


def best_positive_ranks(scores, relevance):
    """1-based rank of each query's best positive; `scores`, `relevance`: `(queries, candidates)`.

    Raises:
        ValueError: if a query has no positive, or the shapes differ.
    """
    scores = np.asarray(scores, np.float64)
    relevance = np.asarray(relevance, bool)
    if scores.shape != relevance.shape or scores.ndim != 2:
        raise ValueError(f"`scores` and `relevance` must be equal 2-D shapes. Received: {scores.shape}, "
                         f"{relevance.shape}")
    missing = np.flatnonzero(~relevance.any(axis=1))
    if missing.size:
        raise ValueError(f"Queries without a positive candidate: {missing[:10].tolist()}")
    best = np.where(relevance, scores, -np.inf).max(axis=1)
    # Negatives scoring at least as high as the best positive rank above it.
    above = np.sum(np.where(relevance, False, scores >= best[:, None]), axis=1)
    return above + 1


def rank_metrics(ranks, prefix, ks=RECALL_KS, confidence=None):
    """`{prefix_recall@K, prefix_mean_rank, prefix_median_rank}` of 1-based `ranks`.

    With `confidence`, also each recall's bootstrap interval over the queries
    (`prefix_recall@K_ci_low`, `prefix_recall@K_ci_high`; `bootstrap_interval`).
    """
    ranks = np.asarray(ranks)
    out = {}
    for k in ks:
        hits = ranks <= k
        out[f"{prefix}_recall@{k}"] = float(np.mean(hits))
        if confidence is not None:
            out[f"{prefix}_recall@{k}_ci_low"], out[f"{prefix}_recall@{k}_ci_high"] = bootstrap_interval(
                hits, confidence)
    out[f"{prefix}_mean_rank"] = float(np.mean(ranks))
    out[f"{prefix}_median_rank"] = float(np.median(ranks))
    return out


def retrieval_metrics(image_embeddings, text_embeddings, relevance, ks=RECALL_KS, confidence=None):
    """Both directions' recall@K and ranks from unit-norm embeddings.

    Args:
        image_embeddings: `(num_images, dim)`.
        text_embeddings: `(num_texts, dim)`.
        relevance: `(num_texts, num_images)` bool (see `caption_relevance`).
        confidence: optional float in (0, 1): also every recall's bootstrap
            interval over its queries (`..._recall@K_ci_low` / `_ci_high`).

    Returns:
        A flat dict: `image_to_text_recall@1/5/10`, `text_to_image_recall@1/5/10`,
        `image_to_text_mean_rank`, `text_to_image_mean_rank`,
        `image_to_text_median_rank`, `text_to_image_median_rank`.
    """
    relevance = np.asarray(relevance, bool)
    scores = np.asarray(text_embeddings, np.float64) @ np.asarray(image_embeddings, np.float64).T
    results = rank_metrics(best_positive_ranks(scores.T, relevance.T), "image_to_text", ks, confidence)
    results.update(rank_metrics(best_positive_ranks(scores, relevance), "text_to_image", ks, confidence))
    return results


def zero_shot_classifier(label_embeddings):
    """Averages prompt embeddings per label: `(labels, templates, dim)` -> unit `(labels, dim)`.

    CLIP's prompt ensembling: each label's templates ("a photo of a {}", ...)
    are embedded, averaged and renormalised.
    """
    mean = np.asarray(label_embeddings, np.float64).mean(axis=1)
    return mean / np.maximum(np.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)


def zero_shot_accuracy(image_embeddings, classifier, labels):
    """Top-1 accuracy and predictions of `argmax(image . classifier)` against label ids."""
    predictions = np.argmax(np.asarray(image_embeddings) @ np.asarray(classifier).T, axis=-1)
    labels = np.asarray(labels)
    return float(np.mean(predictions == labels)), predictions
