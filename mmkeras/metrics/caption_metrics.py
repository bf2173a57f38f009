"""Caption normalisation and the standard COCO caption metrics in one call."""

import re

from mmkeras.metrics._common import validate_caption_inputs
from mmkeras.metrics.bleu import bleu
from mmkeras.metrics.bootstrap import bootstrap_interval
from mmkeras.metrics.cider import cider
from mmkeras.metrics.meteor import meteor
from mmkeras.metrics.rouge_l import rouge_l

_TYPOGRAPHIC_PUNCTUATION = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u2013": "-",
        "\u2014": "-",
        "\u2026": "...",
    }
)
# Clitics that the Penn Treebank tokenizer splits off and keeps as tokens
# ("dog's" -> "dog 's", "don't" -> "do n't"), which the COCO evaluation scores.
# A clitic follows a word character or starts a token (already split text).
_CLITIC = re.compile(r"(?:(?<=\w)|(?<!\S))(n't|'(?:s|re|ve|ll|m|d))(?!\w)")
_CLITIC_TOKENS = frozenset({"n't", "'s", "'re", "'ve", "'ll", "'m", "'d"})
# Punctuation removed from other tokens: periods and commas unless inside a
# number ("3.5", "1,000"), hyphens unless inside a word ("t-shirt"), and quotes,
# brackets and sentence punctuation everywhere.
_PUNCTUATION = re.compile(
    r"(?<!\d)[.,]|[.,](?!\d)|(?<!\w)-|-(?!\w)|[!?;:\"'`()\[\]{}<>]"
)


def normalize_caption(text):
    """Lower-cases a caption and removes punctuation, PTB-style.

    Approximates what the COCO caption evaluation does with the Stanford PTB
    tokenizer followed by its punctuation filter, without Java:

    - lower-case, and map typographic quotes and dashes to ASCII;
    - split off clitics and keep them as tokens, as PTB does:
      "dog's." -> "dog 's", "don't" -> "do n't" (already split "dog 's" stays);
    - replace by a space every period, comma, hyphen, ! ? ; : quote (" ' and
      backtick) and bracket (( ) [ ] { } < >), except a period or comma
      between digits ("3.5", "1,000") and a hyphen between word characters
      ("t-shirt"); other characters are kept;
    - collapse whitespace to single spaces and strip both ends.

    Args:
        text: str, a raw caption.

    Returns:
        The normalised caption, tokens separated by single spaces (possibly "").

    Example:

    >>> normalize_caption('A dog\\'s "red" T-shirt, (on) the grass .')
    "a dog 's red t-shirt on the grass"
    """
    if not isinstance(text, str):
        raise TypeError(
            f"`text` must be a string. Received: text of type {type(text).__name__}"
        )
    text = text.lower().translate(_TYPOGRAPHIC_PUNCTUATION)
    # Spaces on both sides keep trailing punctuation ("dog's.") out of the clitic.
    text = _CLITIC.sub(r" \1 ", text)
    tokens = []
    for token in text.split():
        if token in _CLITIC_TOKENS:
            tokens.append(token)
        else:
            tokens.extend(_PUNCTUATION.sub(" ", token).split())
    return " ".join(tokens)


def caption_metrics(predictions, references, normalize=True, confidence=None):
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr-D of captions, as COCO reports them.

    BLEU, ROUGE-L and CIDEr-D equal pycocoevalcap's `Bleu(4)`, `Rouge()` and
    `Cider()` on the same tokenised captions; see `bleu`, `rouge_l` and
    `cider` for the definitions (Papineni et al., 2002; Lin, 2004; Vedantam et
    al., 2015). METEOR is METEOR 1.5 without its synonym and paraphrase stages
    (Denkowski and Lavie, 2014), a little below pycocoevalcap's Java `Meteor()`
    (corpus -0.011 on Flickr8k captions); see `meteor`. The published COCO
    numbers tokenise with the Stanford PTB tokenizer, which `normalize_caption`
    approximates, so scores are comparable but may differ slightly from them.

    Args:
        predictions: list of str, one predicted caption per image.
        references: list of lists of str, the reference captions of each image
            in the same order as `predictions`; at least one per image.
        normalize: bool. If True (default), pass every caption through
            `normalize_caption` first; if False, captions must already be
            tokenised (tokens separated by single spaces).
        confidence: optional float in (0, 1). If given, also return the
            percentile-bootstrap interval of CIDEr-D at that confidence
            (`bootstrap_interval` over the images, document frequencies held
            fixed; 1,000 resamples, seed 0) as `"cider_ci_low"` and
            `"cider_ci_high"`: on 100 test images it is about +-0.1 wide.

    Returns:
        A dict of Python floats with keys `"bleu_1"`, `"bleu_2"`, `"bleu_3"`,
        `"bleu_4"`, `"meteor"`, `"rouge_l"` and `"cider"` (and the interval's
        two keys with `confidence`).

    Example:

    >>> scores = caption_metrics(
    ...     ["A dog runs.", "A cat sleeps!"],
    ...     [["A dog runs fast.", "A dog is running."],
    ...      ["The cat sleeps.", "A cat is asleep."]])
    >>> sorted(scores)
    ['bleu_1', 'bleu_2', 'bleu_3', 'bleu_4', 'cider', 'meteor', 'rouge_l']
    >>> round(scores["cider"], 4)
    3.3849
    """
    validate_caption_inputs(predictions, references)
    if normalize:
        predictions = [normalize_caption(prediction) for prediction in predictions]
        references = [
            [normalize_caption(reference) for reference in image_references]
            for image_references in references
        ]
    bleu_scores = bleu(predictions, references, max_order=4)
    metrics = {
        f"bleu_{order}": float(score)
        for order, score in enumerate(bleu_scores, start=1)
    }
    metrics["rouge_l"] = float(rouge_l(predictions, references))
    cider_score, per_image = cider(predictions, references, return_per_image=True)
    metrics["cider"] = float(cider_score)
    if confidence is not None:
        metrics["cider_ci_low"], metrics["cider_ci_high"] = bootstrap_interval(per_image, confidence)
    metrics["meteor"] = float(meteor(predictions, references))
    return metrics


def novel_word_rate(predictions, known_words):
    """Fraction of the words of `predictions` that are not in `known_words`.

    With `known_words` the words of the training captions, a captioner that
    strings sub-word pieces into non-words ("a murocrocram") scores above 0;
    one that generates from a vocabulary of training words scores 0. Words
    are those of `normalize_caption` (lowercase, no punctuation): build
    `known_words` the same way, from the captions as the tokenizer splits
    them (`caption_words`), so "t-shirt" in training matches a generated
    "t - shirt".

    Args:
        predictions: list of generated captions.
        known_words: set of words.

    Returns:
        A float in `[0, 1]` (0.0 when the predictions have no words).

    Example:
    >>> novel_word_rate(["a dog runs", "a dgo"], {"a", "dog", "runs", "cat"})
    0.2
    """
    words = [w for p in predictions for w in normalize_caption(p).split()]
    if not words:
        return 0.0
    return sum(w not in known_words for w in words) / len(words)


def caption_words(captions, split):
    """The set of `normalize_caption` words of `captions` after `split` (a word splitter)."""
    return {w for caption in captions for w in normalize_caption(" ".join(split(caption))).split()}
