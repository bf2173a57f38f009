"""Retrieval recall@K / ranks with several positives, ties, and zero-shot prompt ensembling."""

import numpy as np
import pytest

from mmkeras.metrics import retrieval


def test_ranks_count_the_best_positive_and_ties_against_it():
    scores = np.array([
        [0.9, 0.1, 0.5, 0.2],   # positive 0 is first
        [0.9, 0.1, 0.5, 0.2],   # positives 1 and 2: the best (2) is second
        [0.3, 0.3, 0.3, 0.3],   # all tied: the positive ranks last
    ])
    relevance = np.array([[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1]], bool)
    np.testing.assert_array_equal(retrieval.best_positive_ranks(scores, relevance), [1, 2, 4])
    metrics = retrieval.rank_metrics([1, 2, 4], "q", ks=(1, 2))
    assert metrics == {"q_recall@1": pytest.approx(1 / 3), "q_recall@2": pytest.approx(2 / 3),
                       "q_mean_rank": pytest.approx(7 / 3), "q_median_rank": 2.0}


def test_a_query_without_positive_is_an_error():
    with pytest.raises(ValueError, match=r"without a positive candidate: \[1\]"):
        retrieval.best_positive_ranks(np.zeros((2, 2)), np.array([[1, 0], [0, 0]], bool))


def test_shared_captions_are_positives_of_every_image_they_describe():
    relevance = retrieval.caption_relevance(
        [["a red circle", "A  red circle "], ["a red circle", "a blue square"]],
        ["a red circle", "a blue square", "a green cross"])
    np.testing.assert_array_equal(relevance, [[1, 1], [0, 1], [0, 0]])


def test_perfect_and_reversed_embeddings():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(20, 8))
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    texts = np.repeat(images, 2, axis=0)  # two captions per image
    relevance = np.repeat(np.eye(20, dtype=bool), 2, axis=0)
    perfect = retrieval.retrieval_metrics(images, texts, relevance)
    assert perfect["image_to_text_recall@1"] == 1.0 and perfect["text_to_image_recall@1"] == 1.0
    assert perfect["text_to_image_mean_rank"] == 1.0
    reversed_ = retrieval.retrieval_metrics(images, -texts, relevance)
    assert reversed_["text_to_image_recall@10"] < 0.1
    assert reversed_["text_to_image_median_rank"] == 20.0
    assert set(perfect) == {f"{d}_{m}" for d in ("image_to_text", "text_to_image")
                            for m in ("recall@1", "recall@5", "recall@10", "mean_rank", "median_rank")}


def test_zero_shot_averages_templates_and_picks_the_closest_label():
    prompts = np.array([[[1.0, 0.2], [1.0, -0.2]], [[0.0, 1.0], [0.2, 1.0]]])
    classifier = retrieval.zero_shot_classifier(prompts)
    np.testing.assert_allclose(np.linalg.norm(classifier, axis=1), 1.0)
    np.testing.assert_allclose(classifier[0], [1.0, 0.0], atol=1e-9)
    accuracy, predictions = retrieval.zero_shot_accuracy(np.array([[1.0, 0.1], [0.1, 1.0], [1.0, 0.0]]),
                                                         classifier, [0, 1, 1])
    assert accuracy == pytest.approx(2 / 3)
    np.testing.assert_array_equal(predictions, [0, 1, 0])


def test_recall_intervals_come_only_when_asked_and_hold_the_recall():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(30, 8))
    texts = np.repeat(images, 2, axis=0) + rng.normal(scale=1.0, size=(60, 8))
    relevance = np.repeat(np.eye(30, dtype=bool), 2, axis=0)
    plain = retrieval.retrieval_metrics(images, texts, relevance)
    assert not any("_ci_" in key for key in plain)
    with_ci = retrieval.retrieval_metrics(images, texts, relevance, confidence=0.95)
    for direction in ("image_to_text", "text_to_image"):
        for k in (1, 5, 10):
            name = f"{direction}_recall@{k}"
            assert with_ci[name] == plain[name]
            assert with_ci[name + "_ci_low"] <= with_ci[name] <= with_ci[name + "_ci_high"]
    # A recall strictly between 0 and 1 on 60 queries is uncertain by more than a few points.
    assert 0 < with_ci["text_to_image_recall@1"] < 1
    assert with_ci["text_to_image_recall@1_ci_high"] - with_ci["text_to_image_recall@1_ci_low"] > 0.05
