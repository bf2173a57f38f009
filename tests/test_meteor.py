import csv
import os
import shutil
import subprocess

import numpy as np
import pytest

from mmkeras.metrics import caption_metrics
from mmkeras.metrics import normalize_caption
from mmkeras.metrics.meteor import FUNCTION_WORDS
from mmkeras.metrics.meteor import meteor
from mmkeras.metrics.meteor import meteor_score
from mmkeras.metrics.meteor import meteor_tokens
from mmkeras.metrics.porter_stemmer import porter2_stem

ALPHA, BETA, GAMMA, DELTA = 0.85, 0.2, 0.6, 0.75
STEM_WEIGHT = 0.6


def f_mean(precision, recall):
    return precision * recall / (ALPHA * precision + (1 - ALPHA) * recall)


def penalty(chunks, matches):
    return GAMMA * (chunks / matches) ** BETA


# --- Hand-computed scores -----------------------------------------------------


@pytest.mark.parametrize("caption", ["a dog runs on the grass", "dog", "the the the"])
def test_identical_captions_score_one(caption):
    # METEOR 1.5 drops the fragmentation penalty when every word of both
    # captions is matched in one chunk, so the score is Fmean = 1 rather than
    # 1 - gamma (1 / m)^beta (0.48 for the first caption).
    assert meteor_score(caption, [caption]) == 1.0


def test_one_chunk_partial_match_keeps_the_penalty():
    # All 3 hypothesis words match the first 3 of 4 reference words, one chunk.
    # Weighted lengths: hypothesis "a" (function) + 2 content = 0.25 + 1.5;
    # reference adds the content word "fast": 0.25 + 2.25.
    precision, recall = 1.75 / 1.75, 1.75 / 2.5
    expected = f_mean(precision, recall) * (1 - penalty(chunks=1, matches=3))
    assert meteor_score("a dog runs", ["a dog runs fast"]) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.379946, abs=1e-6)


@pytest.mark.parametrize(
    "hypothesis, chunks",
    [("a dog runs fast", 1), ("runs fast a dog", 2), ("fast a runs dog", 4)],
)
def test_word_order_only_changes_the_chunk_count(hypothesis, chunks):
    # Same words, so P = R = 1 and Fmean = 1; only the penalty changes.
    score = meteor_score(hypothesis, ["a dog runs fast"])
    expected = 1.0 if chunks == 1 else 1 - penalty(chunks, matches=4)
    assert score == pytest.approx(expected, rel=1e-12)


def test_stem_matches_count_with_weight_0_6():
    # "dogs" / "dog" match by stem only: P = R = 0.6, one chunk, every word
    # matched, so no fragmentation penalty.
    assert meteor_score("dogs", ["dog"]) == pytest.approx(STEM_WEIGHT, rel=1e-12)
    assert meteor_score("dogs", ["cat"]) == 0.0
    # As in METEOR 1.5's aligner, an ambiguous one-word stem match adds nothing
    # to its integer match count, so it is dropped rather than cost a chunk.
    assert meteor_score("cats cats", ["a cat"]) == 0.0
    # "the", "fast" exact; "dogs"/"dog", "run"/"runs" by stem.
    weighted_matches = 0.25 + 0.75 + 2 * STEM_WEIGHT * 0.75
    expected = weighted_matches / (0.25 + 3 * 0.75)
    assert meteor_score("the dogs run fast", ["the dog runs fast"]) == pytest.approx(
        expected, rel=1e-12
    )


def test_function_words_weigh_less_than_content_words():
    assert "the" in FUNCTION_WORDS and "dog" not in FUNCTION_WORDS
    reference = ["the dog runs"]
    reference_length = 0.25 + 2 * 0.75
    one_chunk_of_two = 1 - penalty(chunks=1, matches=2)
    # Missing the function word "the" costs its weight 1 - delta = 0.25 ...
    missing_function = f_mean(1.0, 1.5 / reference_length) * one_chunk_of_two
    # ... missing the content word "runs" costs delta = 0.75.
    missing_content = f_mean(1.0, 1.0 / reference_length) * one_chunk_of_two
    assert meteor_score("dog runs", reference) == pytest.approx(missing_function, rel=1e-12)
    assert meteor_score("the dog", reference) == pytest.approx(missing_content, rel=1e-12)
    assert missing_function > missing_content
    # With delta = 0.5 every word weighs the same, and the two are equal.
    assert meteor_score("dog runs", reference, delta=0.5) == pytest.approx(
        meteor_score("the dog", reference, delta=0.5), rel=1e-12
    )


def test_score_is_the_best_over_references():
    hypothesis = "a dog runs on the grass"
    good, bad = "a dog runs on grass", "a cat sleeps"
    best = meteor_score(hypothesis, [good])
    assert meteor_score(hypothesis, [bad]) < best
    assert meteor_score(hypothesis, [bad, good]) == best
    assert meteor_score(hypothesis, [good, bad]) == best


def test_empty_or_unmatched_captions_score_zero():
    assert meteor_score("", ["a dog runs"]) == 0.0
    assert meteor_score("a dog runs", [""]) == 0.0
    assert meteor_score("zebra", ["a dog runs"]) == 0.0
    score, per_image = meteor(["", "a dog runs"], [["a dog runs"], ["a dog runs"]],
                              return_per_image=True)
    np.testing.assert_array_equal(per_image, [0.0, 1.0])
    assert 0.0 < score < 1.0


def test_corpus_score_aggregates_statistics():
    predictions = ["a dog runs", "dogs"]
    references = [["a dog runs fast"], ["dog"]]
    score, per_image = meteor(predictions, references, return_per_image=True)
    # Summed: hypothesis lengths 3 + 1 (one function word), reference lengths
    # 4 + 1; matches: 2 exact content + 1 exact function + 1 stem content on
    # each side. Only the first sentence's chunk counts: the second is matched
    # completely in one chunk, which METEOR 1.5 adds no chunk for.
    weighted_matches = 2 * 0.75 + STEM_WEIGHT * 0.75 + 0.25
    precision = weighted_matches / (3 * 0.75 + 0.25)
    recall = weighted_matches / (4 * 0.75 + 0.25)
    expected = f_mean(precision, recall) * (1 - penalty(chunks=1, matches=4))
    assert score == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(
        per_image,
        [meteor_score("a dog runs", ["a dog runs fast"]), meteor_score("dogs", ["dog"])],
        rtol=1e-12,
    )
    assert abs(score - np.mean(per_image)) > 0.05
    # A one-image corpus is its sentence score; perfect sentences stay perfect.
    assert meteor(["a dog runs"], [["a dog runs fast"]]) == per_image[0]
    assert meteor(["a dog", "the cat sleeps"], [["a dog"], ["the cat sleeps"]]) == 1.0


# --- Tokens, stems, API -------------------------------------------------------


@pytest.mark.parametrize(
    "text, tokens",
    [
        ("a dog 's red t-shirt", ["a", "dog", "'", "s", "red", "t", "shirt"]),
        ("he does n't run", ["he", "does", "n", "'t", "run"]),
        ("A Three-Year-Old & 1,000 dogs 3.5", ["a", "three", "year", "old", "&", "1,000", "dogs", "3.5"]),
        ("", []),
    ],
)
def test_meteor_tokens_follow_meteor_normalizer(text, tokens):
    assert meteor_tokens(text) == tokens


# Stems of the Java Snowball stemmer inside pycocoevalcap's meteor-1.5.jar.
JAVA_STEMS = {
    "dogs": "dog", "running": "run", "climbs": "climb", "generously": "generous",
    "skies": "sky", "dying": "die", "news": "news", "innings": "inning",
    "cried": "cri", "ties": "tie", "hoped": "hope", "agreed": "agre",
    "this": "this", "bus": "bus", "earrings": "earring", "quickly": "quick",
    "community": "communiti", "arsenal": "arsenal", "happy": "happi",
    "say": "say", "playing": "play", "relational": "relat", "digitizer": "digit",
    "predication": "predic", "decisiveness": "decis", "hopefulness": "hope",
    "triplicate": "triplic", "formative": "format", "electrical": "electr",
    "allowance": "allow", "adjustable": "adjust", "replacement": "replac",
    "adoption": "adopt", "communism": "communism", "homologous": "homolog",
    "cease": "ceas", "roll": "roll", "dog's": "dog", "'hood": "hood",
}


@pytest.mark.parametrize("word, stem", JAVA_STEMS.items())
def test_porter2_stem_matches_meteor_stemmer(word, stem):
    assert porter2_stem(word) == stem


def test_caption_metrics_reports_meteor_of_normalized_captions():
    predictions = ["A dog runs.", "A cat sleeps!"]
    references = [["A dog runs fast.", "A dog is running."], ["The cat sleeps.", "A cat is asleep."]]
    scores = caption_metrics(predictions, references)
    expected = meteor(
        [normalize_caption(caption) for caption in predictions],
        [[normalize_caption(caption) for caption in refs] for refs in references],
    )
    assert type(scores["meteor"]) is float
    assert scores["meteor"] == expected


def test_invalid_inputs_are_rejected():
    with pytest.raises(ValueError, match="alpha=1.5"):
        meteor_score("a", ["a"], alpha=1.5)
    with pytest.raises(ValueError, match="beta=-1"):
        meteor(["a"], [["a"]], beta=-1)
    with pytest.raises(ValueError, match="delta=2"):
        meteor(["a"], [["a"]], delta=2)
    with pytest.raises(TypeError, match=r"references\[0\] must be a list"):
        meteor_score("a dog", "a dog")
    with pytest.raises(ValueError, match="references\\[0\\] is empty"):
        meteor_score("a dog", [])
    with pytest.raises(ValueError, match=r"len\(predictions\)=2, len\(references\)=1"):
        meteor(["a", "b"], [["a"]])


# --- Against pycocoevalcap's Java METEOR 1.5 ---------------------------------


def _java_or_skip():
    if shutil.which("java") is None:
        pytest.skip("java is not installed: pycocoevalcap's METEOR 1.5 jar needs it")
    return pytest.importorskip(
        "pycocoevalcap.meteor.meteor", reason="pycocoevalcap (test extra) is not installed"
    )


def _flickr_sample(flickr8k_dir, num_images=10):
    """Human caption 0 and its word-reversed copy, against captions 1-4."""
    captions = {}
    with open(flickr8k_dir / "captions.txt", newline="", encoding="utf-8") as file:
        for row in csv.DictReader(file):
            captions.setdefault(row["image"], []).append(normalize_caption(row["caption"]))
    images = sorted(captions)[:num_images]
    hypotheses = [captions[image][0] for image in images]
    hypotheses += [" ".join(reversed(hypothesis.split())) for hypothesis in hypotheses]
    references = [captions[image][1:] for image in images] * 2
    return hypotheses, references


@pytest.mark.slow
def test_agrees_with_pycocoevalcap_meteor(flickr8k_dir):
    pycoco_meteor = _java_or_skip()
    hypotheses, references = _flickr_sample(flickr8k_dir)
    expected_corpus, expected = pycoco_meteor.Meteor().compute_score(
        {index: refs for index, refs in enumerate(references)},
        {index: [hypothesis] for index, hypothesis in enumerate(hypotheses)},
    )
    corpus, per_image = meteor(hypotheses, references, return_per_image=True)
    difference = np.abs(per_image - np.asarray(expected))
    # Measured on these 20 sentences: corpus -0.0036, mean |difference| 0.013,
    # largest 0.074, Pearson r 0.958 (the missing synonym / paraphrase stages).
    # Over benchmarks/meteor_agreement.py's 2,000 sentences: corpus -0.011,
    # mean 0.019, r 0.950, but single sentences differ by up to 0.455.
    assert corpus == pytest.approx(expected_corpus, abs=0.01)
    assert np.mean(difference) < 0.025
    assert np.max(difference) < 0.1
    assert np.corrcoef(per_image, expected)[0, 1] > 0.93


@pytest.mark.slow
def test_equals_java_meteor_restricted_to_exact_and_stem(flickr8k_dir):
    pycoco_meteor = _java_or_skip()
    hypotheses, references = _flickr_sample(flickr8k_dir)
    edge_cases = [
        ("a dog 's t-shirt", ["the dog 's shirt"]),
        ("", ["a dog"]),
        ("dogs dogs dogs", ["a dog", "dogs run"]),
        ("the the dog the", ["the dog the the"]),
        # An ambiguous one-word stem match: the jar's integer match count gives
        # it no weight, so it is dropped rather than cost a chunk (score 0).
        ("cats cats", ["a cat"]),
        # Completely matched in one chunk: no penalty, and no chunk in the corpus.
        ("a dog runs", ["a dog runs"]),
        ("dogs run", ["dog runs"]),
    ]
    hypotheses += [hypothesis for hypothesis, _ in edge_cases]
    references += [refs for _, refs in edge_cases]
    # The wrapper's command plus -m: the jar's own exact and stem stages.
    command = ["java", "-jar", "-Xmx2G", pycoco_meteor.METEOR_JAR, "-", "-", "-stdio",
               "-l", "en", "-norm", "-m", "exact stem"]
    lines = [" ||| ".join(["SCORE", *refs, hyp]) for hyp, refs in zip(hypotheses, references)]
    with subprocess.Popen(command, cwd=os.path.dirname(pycoco_meteor.__file__),
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                          encoding="utf-8") as process:
        stats = []
        for line in lines:
            process.stdin.write(line + "\n")
            process.stdin.flush()
            stats.append(process.stdout.readline().strip())
        output, _ = process.communicate(" ||| ".join(["EVAL", *stats]) + "\n", timeout=120)
    *expected, expected_corpus = [float(value) for value in output.split()]

    corpus, per_image = meteor(hypotheses, references, return_per_image=True)
    np.testing.assert_allclose(per_image, expected, rtol=0, atol=1e-12)
    assert corpus == pytest.approx(expected_corpus, rel=0, abs=1e-12)


JAVA_STEMMER_SOURCE = """
import org.tartarus.snowball.ext.englishStemmer;
public class Stem {
    public static void main(String[] args) throws Exception {
        java.io.BufferedReader in = new java.io.BufferedReader(
            new java.io.InputStreamReader(System.in, "UTF-8"));
        englishStemmer stemmer = new englishStemmer();
        for (String word; (word = in.readLine()) != null;) {
            stemmer.setCurrent(word);
            stemmer.stem();
            System.out.println(stemmer.getCurrent());
        }
    }
}
"""


@pytest.mark.slow
def test_porter2_stem_equals_jar_stemmer_on_flickr_vocabulary(flickr8k_dir, tmp_path):
    pycoco_meteor = _java_or_skip()
    words = set()
    with open(flickr8k_dir / "captions.txt", newline="", encoding="utf-8") as file:
        for row in csv.DictReader(file):
            words.update(meteor_tokens(normalize_caption(row["caption"])))
    words = sorted(words)
    source = tmp_path / "Stem.java"
    source.write_text(JAVA_STEMMER_SOURCE)
    jar = os.path.join(os.path.dirname(pycoco_meteor.__file__), pycoco_meteor.METEOR_JAR)
    # Java 11+ runs a single source file directly; a JRE without javac cannot.
    result = subprocess.run(["java", "-cp", jar, str(source)], input="\n".join(words) + "\n",
                            capture_output=True, text=True, encoding="utf-8", timeout=300)
    if result.returncode != 0:
        pytest.skip(f"cannot run a Java source file here: {result.stderr[-300:]}")
    java_stems = result.stdout.splitlines()
    assert len(words) > 3000 and len(java_stems) == len(words)
    differences = [(word, java, porter2_stem(word)) for word, java in zip(words, java_stems)
                   if porter2_stem(word) != java]
    assert differences == []
