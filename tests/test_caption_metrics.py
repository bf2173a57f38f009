import csv
import random
from pathlib import Path

import numpy as np
import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from mmkeras import metrics
from mmkeras.metrics import bleu
from mmkeras.metrics import caption_metrics
from mmkeras.metrics import cider
from mmkeras.metrics import meteor
from mmkeras.metrics import normalize_caption
from mmkeras.metrics import rouge_l

# In a CI clone, shared/ sits beside the repository folder: <clone>/../shared.
FLICKR_DIR = (
    Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "flickr8k-1k"
)
TOLERANCE = 1e-6
VOCABULARY = ["a", "dog", "cat", "runs", "on", "the", "grass", "red", "ball", "in"]


def _coco_inputs(predictions, references):
    gts = {index: list(refs) for index, refs in enumerate(references)}
    res = {index: [prediction] for index, prediction in enumerate(predictions)}
    return gts, res


def _assert_matches_coco(predictions, references):
    gts, res = _coco_inputs(predictions, references)

    expected_bleu, expected_bleu_per_image = Bleu(4).compute_score(gts, res, verbose=0)
    scores, per_image = bleu(predictions, references, return_per_image=True)
    np.testing.assert_allclose(scores, expected_bleu, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(
        per_image, np.transpose(expected_bleu_per_image), rtol=0, atol=TOLERANCE
    )

    expected_rouge, expected_rouge_per_image = Rouge().compute_score(gts, res)
    score, per_image = rouge_l(predictions, references, return_per_image=True)
    assert score == pytest.approx(expected_rouge, rel=0, abs=TOLERANCE)
    np.testing.assert_allclose(
        per_image, expected_rouge_per_image, rtol=0, atol=TOLERANCE
    )

    expected_cider, expected_cider_per_image = Cider().compute_score(gts, res)
    score, per_image = cider(predictions, references, return_per_image=True)
    assert score == pytest.approx(expected_cider, rel=0, abs=TOLERANCE)
    np.testing.assert_allclose(
        per_image, expected_cider_per_image, rtol=0, atol=TOLERANCE
    )

    combined = caption_metrics(predictions, references, normalize=False)
    expected = {
        "bleu_1": expected_bleu[0],
        "bleu_2": expected_bleu[1],
        "bleu_3": expected_bleu[2],
        "bleu_4": expected_bleu[3],
        "rouge_l": expected_rouge,
        "cider": expected_cider,
    }
    # METEOR is compared with the Java METEOR in test_meteor.py.
    assert combined.keys() == expected.keys() | {"meteor"}
    assert combined["meteor"] == meteor(predictions, references)
    for name, value in expected.items():
        assert type(combined[name]) is float
        assert combined[name] == pytest.approx(value, rel=0, abs=TOLERANCE), name


def _random_caption(rng, min_length=1, max_length=12):
    return " ".join(rng.choices(VOCABULARY, k=rng.randint(min_length, max_length)))


def _random_corpus(seed, num_images=25):
    rng = random.Random(seed)
    references = [
        [_random_caption(rng) for _ in range(rng.randint(1, 5))]
        for _ in range(num_images)
    ]
    predictions = []
    for image_references in references:
        kind = rng.random()
        if kind < 0.15:
            predictions.append(rng.choice(image_references))
        elif kind < 0.3:
            predictions.append(rng.choice(VOCABULARY))
        else:
            predictions.append(_random_caption(rng))
    return predictions, references


@pytest.mark.parametrize("seed", range(5))
def test_random_corpus_matches_pycocoevalcap(seed):
    _assert_matches_coco(*_random_corpus(seed))


EDGE_CASES = {
    "no_shared_ngrams": (
        ["zebra eats leaves", "a dog runs"],
        [["a dog runs on the grass", "the dog runs"], ["a cat on the red ball"]],
    ),
    "prediction_equals_reference": (
        ["a dog runs on the grass", "the cat in the red ball"],
        [["a dog runs on the grass", "a dog"], ["the cat in the red ball"]],
    ),
    "one_word_predictions": (
        ["dog", "cat", "grass"],
        [["a dog runs", "dog"], ["the cat sleeps on the grass"], ["red ball"]],
    ),
    "single_image": (["a dog runs on the grass"], [["a dog runs on grass", "the dog"]]),
    "ngrams_in_every_image_weigh_zero": (
        ["a dog runs", "a dog sleeps"],
        [["a dog runs fast"], ["a dog sleeps now", "a dog"]],
    ),
    "repeated_ngrams_are_clipped": (
        ["a dog a dog a dog a dog", "the the the the"],
        [["a dog runs", "a big dog"], ["the cat on the mat"]],
    ),
    "closest_length_tie_takes_shorter": (
        ["a b c d e", "x y"],
        [["a b c d", "a b c d e f"], ["x y z", "x"]],
    ),
    "long_predictions": (
        ["a dog runs on the grass and the dog runs on the grass again", "cat"],
        [["a dog runs on the grass"], ["the cat", "a cat on a mat"]],
    ),
    "empty_prediction": (["", "a dog"], [["a dog runs", "a dog"], ["x y", ""]]),
    "irregular_whitespace": (
        ["  a  dog ", "a dog"],
        [["a dog runs", " a dog"], ["x y", "a"]],
    ),
}


@pytest.mark.parametrize("case", EDGE_CASES.values(), ids=EDGE_CASES.keys())
def test_edge_cases_match_pycocoevalcap(case):
    _assert_matches_coco(*case)


def test_single_image_cider_is_zero():
    # With one image every reference n-gram has df = 1 = num_images, so idf = 0.
    score = cider(["a dog runs"], [["a dog runs", "a dog"]])
    assert score == 0.0


def test_exact_match_scores_perfectly_with_enough_ngrams():
    predictions = ["a dog runs on the grass", "the cat sits on a red ball"]
    references = [["a dog runs on the grass"], ["the cat sits on a red ball"]]
    np.testing.assert_allclose(bleu(predictions, references), 1.0, atol=TOLERANCE)
    assert rouge_l(predictions, references) == pytest.approx(1.0)


def test_non_default_order_and_sigma_match_pycocoevalcap():
    predictions, references = _random_corpus(seed=11)
    gts, res = _coco_inputs(predictions, references)
    expected, _ = Bleu(2).compute_score(gts, res, verbose=0)
    np.testing.assert_allclose(
        bleu(predictions, references, max_order=2), expected, rtol=0, atol=TOLERANCE
    )
    # Only sigma: pycocoevalcap's Cider always counts 1..4-grams whatever its n.
    expected, _ = Cider(sigma=2.0).compute_score(gts, res)
    assert cider(predictions, references, sigma=2.0) == pytest.approx(
        expected, rel=0, abs=TOLERANCE
    )


def _read_flickr_corpus(num_images=200):
    if not FLICKR_DIR.is_dir():
        pytest.skip(f"Shared Flickr8k sample not found at {FLICKR_DIR}")
    captions = {}
    with open(FLICKR_DIR / "captions.txt", newline="", encoding="utf-8") as file:
        for row in csv.DictReader(file):
            captions.setdefault(row["image"], []).append(row["caption"])
    images = sorted(captions)[:num_images]
    predictions = [captions[image][0] for image in images]
    references = [captions[image][1:] for image in images]
    return predictions, references


def test_flickr_captions_match_pycocoevalcap():
    predictions, references = _read_flickr_corpus()
    assert len(predictions) == 200
    assert all(len(image_references) == 4 for image_references in references)
    predictions = [normalize_caption(prediction) for prediction in predictions]
    references = [
        [normalize_caption(reference) for reference in image_references]
        for image_references in references
    ]
    _assert_matches_coco(predictions, references)


def test_caption_metrics_normalizes_by_default():
    predictions, references = _read_flickr_corpus(num_images=30)
    normalized = caption_metrics(
        [normalize_caption(prediction) for prediction in predictions],
        [[normalize_caption(reference) for reference in refs] for refs in references],
        normalize=False,
    )
    assert caption_metrics(predictions, references) == normalized
    # The raw captions carry "." and "," tokens, which normalisation removes.
    assert caption_metrics(predictions, references, normalize=False) != normalized


@pytest.mark.parametrize(
    "text, expected",
    [
        ("A Dog runs.", "a dog runs"),
        (
            "A child in a pink dress is climbing up stairs .",
            "a child in a pink dress is climbing up stairs",
        ),
        ('Two dogs , "playing" (outside)!', "two dogs playing outside"),
        ("Wait; what: now?  ", "wait what now"),
        ("  many \t spaces\n here ", "many spaces here"),
        ("A girl holding a horse 's lead", "a girl holding a horse 's lead"),
        ("The dog's ball", "the dog 's ball"),
        ("He Doesn't run", "he does n't run"),
        ("The dog's.", "the dog 's"),
        ("A horse 's, lead; it isn't!", "a horse 's lead it is n't"),
        ("'sure' I'm 'done'", "sure i 'm done"),
        ("A man in a t-shirt - running -- fast", "a man in a t-shirt running fast"),
        ("It costs 3.50 , about 1,000 yen.", "it costs 3.50 about 1,000 yen"),
        ("\u201cQuoted\u201d \u2018text\u2019 \u2026", "quoted text"),
        ("'single quotes'", "single quotes"),
        ("[brackets] {braces} <angles> `ticks`", "brackets braces angles ticks"),
        ("...", ""),
        ("", ""),
    ],
)
def test_normalize_caption(text, expected):
    assert normalize_caption(text) == expected


def test_normalize_caption_is_idempotent():
    predictions, references = _read_flickr_corpus(num_images=50)
    for caption in predictions + [ref for refs in references for ref in refs]:
        once = normalize_caption(caption)
        assert normalize_caption(once) == once


def test_normalize_caption_rejects_non_strings():
    with pytest.raises(TypeError, match="Received"):
        normalize_caption(["a dog"])


SCORERS = [bleu, rouge_l, cider, caption_metrics]


@pytest.mark.parametrize("scorer", SCORERS)
def test_length_mismatch_names_both_lengths(scorer):
    with pytest.raises(ValueError, match=r"len\(predictions\)=2, len\(references\)=3"):
        scorer(["a dog", "a cat"], [["a dog"], ["a cat"], ["a bird"]])


@pytest.mark.parametrize("scorer", SCORERS)
def test_image_without_references_names_its_index(scorer):
    with pytest.raises(ValueError, match=r"references\[1\] is empty"):
        scorer(["a dog", "a cat", "a bird"], [["a dog"], [], ["a bird"]])


@pytest.mark.parametrize("scorer", SCORERS)
def test_empty_corpus_is_rejected(scorer):
    with pytest.raises(ValueError, match="at least one image"):
        scorer([], [])


@pytest.mark.parametrize("scorer", SCORERS)
def test_wrong_types_are_rejected(scorer):
    with pytest.raises(TypeError, match=r"references\[0\] must be a list"):
        scorer(["a dog"], ["a dog"])
    with pytest.raises(TypeError, match="predictions"):
        scorer("a dog", [["a dog"]])
    with pytest.raises(TypeError, match=r"predictions\[0\]"):
        scorer([None], [["a dog"]])


def test_invalid_hyperparameters_are_rejected():
    with pytest.raises(ValueError, match="max_order=0"):
        bleu(["a"], [["a"]], max_order=0)
    with pytest.raises(ValueError, match="max_order=0"):
        cider(["a"], [["a"]], max_order=0)
    with pytest.raises(ValueError, match="sigma=0"):
        cider(["a"], [["a"]], sigma=0)
    with pytest.raises(ValueError, match="beta=-1"):
        rouge_l(["a"], [["a"]], beta=-1)


def test_public_api():
    assert {"bleu", "caption_metrics", "cider", "normalize_caption", "rouge_l"} <= set(metrics.__all__)
    for name in metrics.__all__:
        assert callable(getattr(metrics, name)), name


def test_novel_word_rate_counts_words_outside_the_training_words():
    from mmkeras.data.tokenizer import split_words
    from mmkeras.metrics.caption_metrics import caption_words, novel_word_rate

    known = caption_words(["A man in a t-shirt.", "the dog's ball"], split_words)
    # Detokenized word-level captions: tokens joined by spaces.
    assert novel_word_rate(["a man in a t - shirt", "the dog ' s ball"], known) == 0.0
    assert novel_word_rate(["a man in a murocrocram"], known) == pytest.approx(1 / 5)
    assert novel_word_rate(["", "  "], known) == 0.0


def test_bootstrap_interval_is_deterministic_and_covers_the_true_mean_at_its_rate():
    from mmkeras.metrics import bootstrap_interval

    rng = np.random.default_rng(1)
    sample = rng.exponential(0.35, size=100)  # skewed, like per-image CIDEr-D
    assert bootstrap_interval(sample) == bootstrap_interval(sample)
    low, high = bootstrap_interval(sample)
    assert low < sample.mean() < high
    # Width ~ 2 * 1.96 * sd / sqrt(n), the normal approximation of the mean's spread.
    for scores in (sample, rng.exponential(0.35, size=400)):
        low, high = bootstrap_interval(scores)
        assert (high - low) == pytest.approx(2 * 1.96 * scores.std() / np.sqrt(scores.size), rel=0.15)
    # Coverage: the 90% interval of fresh samples holds the true mean 0.35 about 90% of the time.
    covered = [lo <= 0.35 <= hi for lo, hi in (bootstrap_interval(rng.exponential(0.35, size=100), 0.9, 500)
                                              for _ in range(200))]
    assert 0.82 <= np.mean(covered) <= 0.96


@pytest.mark.parametrize("kwargs, message", [
    ({"scores": []}, "non-empty 1-D"),
    ({"scores": [[0.1, 0.2]]}, "non-empty 1-D"),
    ({"scores": [0.1], "confidence": 1.0}, "confidence"),
    ({"scores": [0.1], "num_resamples": 0}, "num_resamples"),
])
def test_bootstrap_interval_names_a_bad_argument(kwargs, message):
    from mmkeras.metrics import bootstrap_interval

    with pytest.raises(ValueError, match=message):
        bootstrap_interval(**kwargs)


def test_caption_metrics_reports_the_cider_interval_only_when_asked():
    predictions = ["a dog runs", "a cat sleeps", "a bird flies", "a man walks"]
    references = [["a dog runs fast", "a dog is running"], ["the cat sleeps", "a cat is asleep"],
                  ["a bird is flying", "birds fly"], ["a woman sits", "a person sits down"]]
    assert "cider_ci_low" not in caption_metrics(predictions, references)
    scores = caption_metrics(predictions, references, confidence=0.95)
    assert scores["cider_ci_low"] < scores["cider"] < scores["cider_ci_high"]
    assert scores["cider"] == caption_metrics(predictions, references)["cider"]
