"""METEOR 1.5 (exact and stem stages), as the COCO caption evaluation reports it.

pycocoevalcap's `Meteor` runs the Java METEOR 1.5 jar as
`java -jar meteor-1.5.jar - - -stdio -l en -norm`: English, the default
"rank" task (alpha=0.85, beta=0.20, gamma=0.60, delta=0.75; stage weights
exact 1.0, stem 0.6, synonym 0.8, paraphrase 0.6), METEOR's own tokenizer and
lower-casing, and its corpus score aggregated from sufficient statistics. This
module reimplements that pipeline in pure Python, for the exact and stem
stages only.

Differences from pycocoevalcap's Java METEOR 1.5:

- No synonym stage (WordNet synsets) and no paraphrase stage (the 62 MB
  `paraphrase-en.gz` table): those data files cannot be downloaded at run time
  and are not redistributed here. Word pairs that only those stages match
  (on Flickr8k: "swine"/"pig" by synonym, "boy"/"child" and
  "is shaking"/"shakes" by paraphrase) stay unmatched, so scores are usually
  a little lower. The missing stages also change which candidate
  matches the Java aligner has to choose between, which occasionally changes
  the exact and stem matches it keeps.
- Tokenization: captions are expected tokenised and normalised like the other
  caption metrics (`normalize_caption`). METEOR's `-norm` tokenizer is then
  re-applied only in the parts that change such text: symbols other than
  letters, digits, periods, commas, apostrophes, backticks and hyphens are
  split off, hyphens between letters or digits become spaces ("t-shirt" ->
  "t shirt"), apostrophes are split as METEOR does for English ("'s" -> "' s",
  "n't" -> "n 't"), and everything is lower-cased. Its handling of
  sentence-final periods and "U.S."-style abbreviations (which
  `normalize_caption` has already removed) and of multi-dot runs is not
  reproduced. On the 5,000 Flickr8k-1k captions, raw or normalised, this gives
  the same tokens as METEOR's normaliser for every caption.
- Stemming: the Porter2 (Snowball English) algorithm of METEOR 1.5, in
  `porter_stemmer.py`, with the same stems as the jar's stemmer on every word
  tested (see there).
- Words are compared as strings; the jar compares their Java hash codes.

Everything else follows METEOR 1.5: the function-word list, the aligner (all
exact and stem candidate pairs; unambiguous one-to-one pairs fixed first; a
left-to-right beam search of width 40 over the reference words that ranks
partial alignments by more matches, then fewer chunks, then a smaller position
distance), no fragmentation penalty for a sentence whose words all match in
one chunk (so identical sentences score 1), the best-scoring reference per
image, and the corpus score from summed statistics, to which such sentences
add no chunk.
Two quirks of the Java search are kept on purpose, because they decide which
matches are kept: it accumulates match weights (exact 1.0, stem 0.5 during the
search) into an integer, so a one-word stem match adds nothing to the match
count and is only preferred when it saves a chunk; and the position distance of
a considered match is charged to the path that skips it.

Measured difference (`python benchmarks/meteor_agreement.py`: 2,000 Flickr8k-1k
hypotheses, the first human caption of each of the 1,000 images and a
shuffled / word-dropped / other-image version of it, each against the other
four captions, all through `normalize_caption`):

- corpus METEOR 0.1924 here vs 0.2036 from pycocoevalcap (-0.0112); human
  hypotheses alone 0.2345 vs 0.2492;
- sentence scores: mean absolute difference 0.0189, Pearson r 0.950, largest
  difference 0.455; 51.1% equal, 38.4% lower here, 10.5% higher. The Java
  aligner used a synonym or paraphrase match in 41.6% of the sentences; on
  the others the mean absolute difference is 0.0040 (largest 0.070, 13.1%
  higher here: without the extra candidates the search keeps stem matches
  that the jar drops). The largest differences are captions that a paraphrase
  ("is shaking" / "shakes") turns into a complete one-chunk match, which METEOR
  1.5 exempts from the fragmentation penalty;
- against the same jar run with only its exact and stem stages
  (`-m "exact stem"`), every sentence score and the corpus score are equal
  (0.192382 both): the differences above are the missing stages.

References: Banerjee and Lavie, "METEOR: An Automatic Metric for MT Evaluation
with Improved Correlation with Human Judgments", ACL Workshop 2005; Denkowski
and Lavie, "Meteor Universal: Language Specific Translation Evaluation for Any
Target Language", WMT 2014.
"""

import functools
import math
import numbers
import re
from typing import NamedTuple

import numpy as np

from mmkeras.metrics._common import validate_caption_inputs
from mmkeras.metrics.porter_stemmer import porter2_stem

# METEOR 1.5's English function words (`function/english.words` in the jar):
# the most frequent tokens of its newswire training data, punctuation included,
# which is why "said", "people" and "year" are on it. Delta weighs matches and
# lengths of these words by (1 - delta) instead of delta.
FUNCTION_WORDS = frozenset(
    [
        "the", ",", ".", "to", "of", "and", "a", "in", "that", "for", '"', "is",
        "on", "'s", "it", "with", "was", "as", "said", "at", "he", "by", "be",
        "from", "have", "has", "are", "his", "but", "an", "this", "not", "i",
        "will", "\u2019", "they", ")", "-rrb-", "(", "-lrb-", "who", "their",
        "had", "we", "which", "were", "been", "more", "or", "s", "its", "would",
        "about", "new", "one", "after", "you", ":", "also", "up", "when",
        "there", "than", "$", "all", "out", "her", "people", "she", "year",
        "two", "-", "can", "if", "last", "first", "\u201c", "over", "other",
        "\u201d", "into", "some", "what", "so", "--", "no", "time", "years",
        "could", "?", "'t", "\u2014", "'",
    ]
)

_EXACT = 0
_STEM = 1
# Stage weights: METEOR 1.5 scores with the "rank" task weights but searches
# alignments with its fixed evaluation weights (exact 1, any other stage 0.5).
_SCORE_WEIGHTS = (1.0, 0.6)
_SEARCH_WEIGHTS = (1.0, 0.5)
_BEAM_SIZE = 40

# METEOR's -norm tokenizer (a Moses tokenizer variant), English, reduced to
# the rules that change `normalize_caption` output. Same character classes.
_ALPHA = (
    "A-Za-z\u0160\u017d\u0161\u017e\u0178\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u017e"
    "\u0400-\u04ff\u0500-\u0527\ua640-\ua66e\ua67e-\ua697\u1d00-\u1d7f"
)
_ALNUM = "0-9" + _ALPHA
_SEPARATE = re.compile(f"([^{_ALNUM} \\t\\n\\x0b\\f\\r.'`,\\-\u2018\u2019])")
_COMMA = re.compile(r"([^0-9]),([^0-9])")
_COMMA_AFTER_DIGIT = re.compile(r"([0-9]),([^0-9])")
_COMMA_BEFORE_DIGIT = re.compile(r"([^0-9]),([0-9])")
_SINGLE_QUOTE = re.compile("[`\u2018\u2019]")
_DOUBLE_QUOTE = re.compile("[\u201c\u201d]|''")
_INNER_DASH = re.compile(f"([{_ALNUM}.])-([{_ALNUM}])")
# English contractions split to the right: "dog's" -> "dog 's", "'s" -> "' s".
_APOSTROPHE_RULES = (
    (re.compile(f"([^{_ALPHA}])'([^{_ALPHA}])"), r"\1 ' \2"),
    (re.compile(f"([^{_ALPHA}0-9])'([{_ALPHA}])"), r"\1 ' \2"),
    (re.compile(f"([{_ALPHA}])'([^{_ALPHA}])"), r"\1 ' \2"),
    (re.compile(f"([{_ALPHA}])'([{_ALPHA}])"), r"\1 '\2"),
    (re.compile("([0-9])'(s)"), r"\1 '\2"),
)


def meteor_tokens(text):
    """Splits a normalised caption into the lower-case tokens METEOR scores.

    Args:
        text: str, a caption, normally the output of `normalize_caption`.

    Returns:
        A list of str tokens.

    Example:

    >>> meteor_tokens("a dog 's red t-shirt")
    ['a', 'dog', "'", 's', 'red', 't', 'shirt']
    """
    text = _SEPARATE.sub(r" \1 ", f" {text} ")
    text = _COMMA.sub(r"\1 , \2", text)
    text = _COMMA_AFTER_DIGIT.sub(r"\1 , \2", text)
    text = _COMMA_BEFORE_DIGIT.sub(r"\1 , \2", text)
    text = _SINGLE_QUOTE.sub("'", text)
    text = _DOUBLE_QUOTE.sub(' " ', text)
    text = text.replace("\u2013", "-").replace("--", "-")
    text = _INNER_DASH.sub(r"\1 \2", text)
    for pattern, replacement in _APOSTROPHE_RULES:
        text = pattern.sub(replacement, text)
    return text.lower().split()


_stem = functools.lru_cache(maxsize=65536)(porter2_stem)


class _Sentence(NamedTuple):
    words: tuple
    stems: tuple
    is_function_word: tuple


def _sentence(text):
    words = tuple(meteor_tokens(text))
    return _Sentence(
        words,
        tuple(_stem(word) for word in words),
        tuple(word in FUNCTION_WORDS for word in words),
    )


class _Stats(NamedTuple):
    """METEOR's sufficient statistics of one alignment (or their corpus sum)."""

    test_length: int
    reference_length: int
    test_function_words: int
    reference_function_words: int
    # Matched words by stage (exact, stem) and by word type, on each side.
    test_content_matches: tuple
    reference_content_matches: tuple
    test_function_matches: tuple
    reference_function_matches: tuple
    chunks: int


def _is_perfect(stats):
    """Every word of both sentences matched, in one chunk."""
    return (
        sum(stats.test_content_matches) + sum(stats.test_function_matches)
        == stats.test_length
        and sum(stats.reference_content_matches) + sum(stats.reference_function_matches)
        == stats.reference_length
        and stats.chunks == 1
    )


def _sum_stats(stats):
    """Corpus statistics, summed as METEOR 1.5 does.

    The chunk of a perfectly matched sentence is not counted, as in METEOR's
    `MeteorStats.addStats`, so such sentences add no fragmentation to the
    corpus, just as their own score has none.
    """

    def total(values):
        if isinstance(values[0], tuple):
            return tuple(sum(stage) for stage in zip(*values))
        return sum(values)

    summed = _Stats(*(total(values) for values in zip(*stats)))
    return summed._replace(
        chunks=sum(item.chunks for item in stats if not _is_perfect(item))
    )


class _Path:
    """A partial alignment of the beam search, over reference positions."""

    __slots__ = (
        "matches", "test_used", "weighted_matches", "chunks", "last_end", "distance"
    )

    def __init__(self, matches, test_used):
        self.matches = matches  # per reference position: (test position, stage) or None
        self.test_used = test_used  # bit mask of matched test positions
        # An int, as in the Java aligner, where it truncates the 0.5 of a stem match.
        self.weighted_matches = 0
        self.chunks = 0
        self.last_end = -1  # test position after the last match; -1 outside a chunk
        self.distance = 0

    def copy(self):
        path = _Path(list(self.matches), self.test_used)
        path.weighted_matches = self.weighted_matches
        path.chunks = self.chunks
        path.last_end = self.last_end
        path.distance = self.distance
        return path

    def add(self, test_position, stage):
        self.weighted_matches = int(self.weighted_matches + _SEARCH_WEIGHTS[stage])
        if self.last_end != -1 and test_position != self.last_end:
            self.chunks += 1
        self.last_end = test_position + 1


def _rank(path):
    # More matches, then fewer chunks, then a smaller distance; sorting is stable.
    return (-path.weighted_matches, path.chunks, path.distance)


def _align(test, reference):
    """METEOR 1.5's best alignment of two sentences, a `_Path`."""
    candidates = [[] for _ in reference.words]
    test_coverage = [0] * len(test.words)
    reference_coverage = [0] * len(reference.words)

    def add_candidates(stage, matches):
        for j in range(len(reference.words)):
            for i in range(len(test.words)):
                if matches(i, j):
                    candidates[j].append((i, stage))
                    test_coverage[i] += 1
                    reference_coverage[j] += 1

    add_candidates(_EXACT, lambda i, j: test.words[i] == reference.words[j])
    # Identical sentences only take exact matches (METEOR avoids search errors so).
    if test.words != reference.words:
        add_candidates(
            _STEM,
            lambda i, j: test.stems[i] == reference.stems[j]
            and test.words[i] != reference.words[j],
        )

    # A candidate that is the only one of both its words is part of every alignment.
    fixed = [None] * len(reference.words)
    test_used = 0
    for j, options in enumerate(candidates):
        if len(options) == 1:
            i, stage = options[0]
            if reference_coverage[j] == 1 and test_coverage[i] == 1:
                fixed[j] = (i, stage)
                test_used |= 1 << i

    next_paths = [_Path(fixed, test_used)]
    for position in range(len(reference.words) + 1):
        paths = sorted(next_paths, key=_rank)[:_BEAM_SIZE]
        next_paths = []
        for path in paths:
            if position == len(reference.words):
                if path.last_end != -1:
                    path.chunks += 1
                next_paths.append(path)
                continue
            if path.matches[position] is not None:
                i, stage = path.matches[position]
                path.add(i, stage)
                path.distance += abs(position - i)
                next_paths.append(path)
                continue
            for i, stage in candidates[position]:
                if path.test_used >> i & 1:
                    continue
                new_path = path.copy()
                new_path.matches[position] = (i, stage)
                new_path.test_used |= 1 << i
                new_path.add(i, stage)
                # The Java aligner charges the distance of a chosen match to the
                # path that skips it (and so to later copies of that path).
                path.distance += abs(position - i)
                next_paths.append(new_path)
            if path.last_end != -1:
                path.chunks += 1
                path.last_end = -1
            next_paths.append(path)
    return min(next_paths, key=_rank)


def _alignment_stats(test, reference):
    alignment = _align(test, reference)
    # Matched words by stage (index), on each side, by word type.
    test_content, test_function = [0, 0], [0, 0]
    reference_content, reference_function = [0, 0], [0, 0]
    for j, match in enumerate(alignment.matches):
        if match is not None:
            i, stage = match
            if test.is_function_word[i]:
                test_function[stage] += 1
            else:
                test_content[stage] += 1
            if reference.is_function_word[j]:
                reference_function[stage] += 1
            else:
                reference_content[stage] += 1
    return _Stats(
        test_length=len(test.words),
        reference_length=len(reference.words),
        test_function_words=sum(test.is_function_word),
        reference_function_words=sum(reference.is_function_word),
        test_content_matches=tuple(test_content),
        reference_content_matches=tuple(reference_content),
        test_function_matches=tuple(test_function),
        reference_function_matches=tuple(reference_function),
        chunks=alignment.chunks,
    )


def _score(stats, alpha, beta, gamma, delta):
    """METEOR from sufficient statistics, in the operation order of METEOR 1.5."""
    test_matches = sum(stats.test_content_matches) + sum(stats.test_function_matches)
    reference_matches = sum(stats.reference_content_matches) + sum(
        stats.reference_function_matches
    )
    test_weighted_length = delta * (stats.test_length - stats.test_function_words) + (
        1.0 - delta
    ) * stats.test_function_words
    reference_weighted_length = delta * (
        stats.reference_length - stats.reference_function_words
    ) + (1.0 - delta) * stats.reference_function_words
    test_weighted_matches = 0.0
    reference_weighted_matches = 0.0
    for weight, test_count, reference_count in zip(
        _SCORE_WEIGHTS, stats.test_content_matches, stats.reference_content_matches
    ):
        test_weighted_matches += test_count * weight * delta
        reference_weighted_matches += reference_count * weight * delta
    for weight, test_count, reference_count in zip(
        _SCORE_WEIGHTS, stats.test_function_matches, stats.reference_function_matches
    ):
        test_weighted_matches += test_count * weight * (1.0 - delta)
        reference_weighted_matches += reference_count * weight * (1.0 - delta)
    # METEOR returns 0 where its division by zero gives NaN or an infinite
    # harmonic mean: no match, an empty sentence, or only zero-weighted words.
    if test_weighted_matches <= 0.0 or reference_weighted_matches <= 0.0:
        return 0.0
    precision = test_weighted_matches / test_weighted_length
    recall = reference_weighted_matches / reference_weighted_length
    f_mean = 1.0 / ((1.0 - alpha) / precision + alpha / recall)
    if _is_perfect(stats):
        fragmentation = 0.0
    else:
        fragmentation = stats.chunks / ((test_matches + reference_matches) / 2.0)
    penalty = gamma * fragmentation**beta
    return max(f_mean * (1.0 - penalty), 0.0)


def _validate_parameters(alpha, beta, gamma, delta):
    for name, value in (("alpha", alpha), ("gamma", gamma), ("delta", delta)):
        if not (isinstance(value, numbers.Real) and 0.0 <= value <= 1.0):
            raise ValueError(
                f"`{name}` must be a number in [0, 1]. Received: {name}={value}"
            )
    if not (isinstance(beta, numbers.Real) and 0.0 <= beta < math.inf):
        raise ValueError(
            f"`beta` must be a non-negative number. Received: beta={beta}"
        )


def _best_stats(prediction, image_references, alpha, beta, gamma, delta):
    """Statistics and score of the best-scoring reference (the first on ties)."""
    test = _sentence(prediction)
    best_stats, best_score = None, -1.0
    for reference in image_references:
        stats = _alignment_stats(test, _sentence(reference))
        score = _score(stats, alpha, beta, gamma, delta)
        if score > best_score:
            best_stats, best_score = stats, score
    return best_stats, best_score


def meteor_score(hypothesis, references, alpha=0.85, beta=0.2, gamma=0.6, delta=0.75):
    """Sentence METEOR of one caption against its references (METEOR 1.5).

    With `m` matched words (`m_h` on the hypothesis side, `m_r` on the
    reference side; one word matches at most one word) grouped into `ch`
    chunks (runs of matches adjacent and in the same order in both captions),
    precision `P` and recall `R` weigh content words by `delta` and function
    words (`FUNCTION_WORDS`) by `1 - delta`, and stem matches by 0.6:
    `P = sum(weights of matched hypothesis words) / sum(weights of hypothesis
    words)` and likewise `R` on the reference. Then
    `Fmean = P R / (alpha P + (1 - alpha) R)`,
    `Pen = gamma (ch / ((m_h + m_r) / 2))^beta` (0 when the captions are
    identical) and `METEOR = Fmean (1 - Pen)`. The score is the best over the
    references. See the module docstring for how this differs from the Java
    METEOR 1.5 that pycocoevalcap runs.

    Args:
        hypothesis: str, a caption, tokenised and normalised like the other
            caption metrics expect (see `normalize_caption`).
        references: list of str, its reference captions; at least one.
        alpha: float in [0, 1], the weight of recall against precision.
            Defaults to 0.85.
        beta: float >= 0, the exponent of the fragmentation penalty.
            Defaults to 0.2.
        gamma: float in [0, 1], the largest fragmentation penalty.
            Defaults to 0.6.
        delta: float in [0, 1], the weight of content words against function
            words. Defaults to 0.75.

    Returns:
        The METEOR score, a float in [0, 1].

    Example:

    >>> round(meteor_score("a dog runs on the grass",
    ...                    ["the dog runs across the grass", "a cat sleeps"]), 4)
    0.3487
    """
    validate_caption_inputs([hypothesis], [references])
    _validate_parameters(alpha, beta, gamma, delta)
    return float(_best_stats(hypothesis, references, alpha, beta, gamma, delta)[1])


def meteor(
    predictions,
    references,
    alpha=0.85,
    beta=0.2,
    gamma=0.6,
    delta=0.75,
    return_per_image=False,
):
    """Corpus METEOR of tokenised captions, as pycocoevalcap reports it.

    Like the Java METEOR 1.5 "final score" that pycocoevalcap's `Meteor`
    returns, the corpus score is not the mean of sentence scores: for every
    image the statistics of its best-scoring reference (lengths, function-word
    counts, matches by stage and word type, chunks) are summed over the corpus
    and METEOR is computed once from the sums (see `meteor_score` for the
    formula). Banerjee and Lavie (2005); Denkowski and Lavie (2014).

    Args:
        predictions: list of str, one caption per image, tokenised and
            normalised (see `normalize_caption`).
        references: list of lists of str, the reference captions of each image
            in the same order as `predictions`; at least one per image.
        alpha, beta, gamma, delta: the METEOR parameters, defaulting to METEOR
            1.5's English ranking values 0.85, 0.2, 0.6, 0.75 (see
            `meteor_score`).
        return_per_image: bool. If True, also return the sentence score of
            every image.

    Returns:
        The corpus METEOR as a float in [0, 1]. With `return_per_image=True`,
        a tuple of that float and a float64 array of shape `(num_images,)`.

    Example:

    >>> score, per_image = meteor(
    ...     ["a dog runs", "a cat sleeps"],
    ...     [["a dog runs fast", "a dog is running"],
    ...      ["the cat sleeps", "a cat is asleep"]],
    ...     return_per_image=True)
    >>> round(score, 4), [round(float(value), 4) for value in per_image]
    (0.3931, [0.3799, 0.4094])
    """
    validate_caption_inputs(predictions, references)
    _validate_parameters(alpha, beta, gamma, delta)
    all_stats = []
    per_image = []
    for prediction, image_references in zip(predictions, references):
        stats, score = _best_stats(
            prediction, image_references, alpha, beta, gamma, delta
        )
        all_stats.append(stats)
        per_image.append(score)
    score = float(_score(_sum_stats(all_stats), alpha, beta, gamma, delta))
    if return_per_image:
        return score, np.asarray(per_image, dtype=np.float64)
    return score
