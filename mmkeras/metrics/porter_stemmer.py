"""The Porter2 ("Snowball English") stemmer, the stemmer of METEOR 1.5.

METEOR 1.5 stems English with the Snowball `englishStemmer` (Porter's 2001
revision of his 1980 algorithm), not with the original Porter stemmer. This is
a pure-Python implementation of that algorithm, written from its published
description (https://snowballstem.org/algorithms/english/stemmer.html),
instead of a dependency on NLTK: importing NLTK's stemmers pulls in scipy
(3 to 6 s on the shared 2-core machine), which every `mmkeras.metrics` import
would pay, and they agree less with METEOR.

Measured against the Java stemmer inside pycocoevalcap's `meteor-1.5.jar`, on
the 89,844 single words of the WordNet lists shipped in the jar plus the
Flickr8k-1k caption vocabulary: identical stems for every word. NLTK 3.10's
`SnowballStemmer("english")` differs on 16 of them ("realization" ->
"realize", the jar "realiz"), and the original Porter algorithm (NLTK's
`PorterStemmer`) on 2,949, among them 33 of the 3,283 Flickr8k-1k caption
words ("earrings" -> "ear", "this" -> "thi", "quickly" -> "quickli"), which
would change METEOR's stem matches.
"""

_VOWELS = frozenset("aeiouy")
_DOUBLES = ("bb", "dd", "ff", "gg", "mm", "nn", "pp", "rr", "tt")
_LI_ENDINGS = frozenset("cdeghkmnrt")
# Whole words the algorithm handles specially before any step.
_EXCEPTIONS = {
    "skis": "ski",
    "skies": "sky",
    "dying": "die",
    "lying": "lie",
    "tying": "tie",
    "idly": "idl",
    "gently": "gentl",
    "ugly": "ugli",
    "early": "earli",
    "only": "onli",
    "singly": "singl",
    "sky": "sky",
    "news": "news",
    "howe": "howe",
    "atlas": "atlas",
    "cosmos": "cosmos",
    "bias": "bias",
    "andes": "andes",
}
# Words left as they are once step 1a has run.
_INVARIANT_AFTER_STEP_1A = frozenset(
    {
        "inning", "outing", "canning", "herring", "earring",
        "proceed", "exceed", "succeed",
    }
)
# Prefixes after which region R1 starts, instead of the usual rule.
_R1_PREFIXES = ("gener", "commun", "arsen")

# (suffix, replacement) pairs; the longest suffix present is the one considered.
_STEP_2 = (
    ("ization", "ize"),
    ("ational", "ate"),
    ("fulness", "ful"),
    ("ousness", "ous"),
    ("iveness", "ive"),
    ("tional", "tion"),
    ("biliti", "ble"),
    ("lessli", "less"),
    ("entli", "ent"),
    ("ation", "ate"),
    ("alism", "al"),
    ("aliti", "al"),
    ("ousli", "ous"),
    ("iviti", "ive"),
    ("fulli", "ful"),
    ("enci", "ence"),
    ("anci", "ance"),
    ("abli", "able"),
    ("izer", "ize"),
    ("ator", "ate"),
    ("alli", "al"),
    ("bli", "ble"),
    ("ogi", "og"),
    ("li", ""),
)
_STEP_3 = (
    ("ational", "ate"),
    ("tional", "tion"),
    ("alize", "al"),
    ("icate", "ic"),
    ("iciti", "ic"),
    ("ative", ""),
    ("ical", "ic"),
    ("ness", ""),
    ("ful", ""),
)
_STEP_4 = (
    "ement", "ance", "ence", "able", "ible", "ment", "ant", "ent", "ism", "ate",
    "iti", "ous", "ive", "ize", "ion", "al", "er", "ic",
)


def _is_vowel(character):
    # "Y" (a "y" that acts as a consonant, marked by the prelude) is not a vowel.
    return character in _VOWELS


def _region_start(word, start):
    """Index after the first non-vowel that follows a vowel, from `start`."""
    index = start
    while index < len(word) and not _is_vowel(word[index]):
        index += 1
    index += 1
    while index < len(word) and _is_vowel(word[index]):
        index += 1
    return min(index + 1, len(word))


def _ends_with_short_syllable(word):
    if len(word) >= 3:
        return (
            not _is_vowel(word[-1])
            and word[-1] not in "wxY"
            and _is_vowel(word[-2])
            and not _is_vowel(word[-3])
        )
    return len(word) == 2 and _is_vowel(word[0]) and not _is_vowel(word[1])


def _longest_suffix(word, suffixes):
    """The longest entry of `suffixes` (pairs or strings) that ends `word`."""
    best = None
    for entry in suffixes:
        suffix = entry[0] if isinstance(entry, tuple) else entry
        if word.endswith(suffix) and (best is None or len(suffix) > len(best[0])):
            best = (suffix, entry)
    return best


def porter2_stem(word):
    """Stems one lower-case English word with the Porter2 (Snowball) algorithm.

    Args:
        word: str, a lower-case word (upper-case letters count as consonants,
            as in the reference implementation).

    Returns:
        The stem, a str.

    Example:

    >>> [porter2_stem(word) for word in ["dogs", "running", "generously", "skies"]]
    ['dog', 'run', 'generous', 'sky']
    """
    if word in _EXCEPTIONS:
        return _EXCEPTIONS[word]
    if len(word) < 3:
        return word

    # Prelude: drop a leading apostrophe; mark consonant "y" (initial, or after
    # a vowel) as "Y" so that the vowel tests below skip it.
    if word.startswith("'"):
        word = word[1:]
    characters = list(word)
    for index, character in enumerate(characters):
        if character == "y" and (index == 0 or _is_vowel(characters[index - 1])):
            characters[index] = "Y"
    word = "".join(characters)

    r1 = next(
        (len(prefix) for prefix in _R1_PREFIXES if word.startswith(prefix)), None
    )
    if r1 is None:
        r1 = _region_start(word, 0)
    r2 = _region_start(word, r1)

    # Step 0: possessive apostrophes.
    for suffix in ("'s'", "'s", "'"):
        if word.endswith(suffix):
            word = word[: -len(suffix)]
            break

    # Step 1a: plurals.
    if word.endswith("sses"):
        word = word[:-2]
    elif word.endswith(("ied", "ies")):
        word = word[:-3] + ("i" if len(word) > 4 else "ie")
    elif word.endswith(("us", "ss")):
        pass
    elif word.endswith("s"):
        # Deleted only if a vowel comes before the letter preceding the "s".
        if any(_is_vowel(character) for character in word[:-2]):
            word = word[:-1]

    if word in _INVARIANT_AFTER_STEP_1A:
        return word

    # Step 1b: -ed, -ing and their -ly forms.
    match = _longest_suffix(word, ("eedly", "ingly", "edly", "eed", "ing", "ed"))
    if match is not None:
        suffix = match[0]
        if suffix in ("eed", "eedly"):
            if len(word) - len(suffix) >= r1:
                word = word[: -len(suffix)] + "ee"
        elif any(_is_vowel(character) for character in word[: -len(suffix)]):
            word = word[: -len(suffix)]
            if word.endswith(("at", "bl", "iz")):
                word += "e"
            elif word.endswith(_DOUBLES):
                word = word[:-1]
            elif len(word) == r1 and _ends_with_short_syllable(word):
                word += "e"

    # Step 1c: final y after a consonant that is not the first letter.
    if len(word) > 2 and word[-1] in "yY" and not _is_vowel(word[-2]):
        word = word[:-1] + "i"

    # Step 2: derivational suffixes in R1.
    match = _longest_suffix(word, _STEP_2)
    if match is not None:
        suffix, (_, replacement) = match
        start = len(word) - len(suffix)
        if start >= r1:
            if suffix == "ogi":
                if word[start - 1 : start] == "l":
                    word = word[:start] + replacement
            elif suffix == "li":
                if word[start - 1 : start] in _LI_ENDINGS:
                    word = word[:start]
            else:
                word = word[:start] + replacement

    # Step 3: more derivational suffixes in R1 ("-ative" only in R2).
    match = _longest_suffix(word, _STEP_3)
    if match is not None:
        suffix, (_, replacement) = match
        start = len(word) - len(suffix)
        if start >= r1 and (suffix != "ative" or start >= r2):
            word = word[:start] + replacement

    # Step 4: suffixes deleted in R2 ("-ion" only after "s" or "t").
    match = _longest_suffix(word, _STEP_4)
    if match is not None:
        suffix = match[0]
        start = len(word) - len(suffix)
        if start >= r2 and (suffix != "ion" or word[start - 1 : start] in ("s", "t")):
            word = word[:start]

    # Step 5: final "e" and double "l".
    if word.endswith("e"):
        start = len(word) - 1
        if start >= r2 or (start >= r1 and not _ends_with_short_syllable(word[:-1])):
            word = word[:-1]
    elif word.endswith("l"):
        start = len(word) - 1
        if start >= r2 and word[:-1].endswith("l"):
            word = word[:-1]

    return word.replace("Y", "y")
