"""Tokenizer for captions and questions, learned from the training text.

The tokenizer is keras-hub's `WordPieceTokenizer`, which runs on TensorFlow Text
ops, so the same object tokenizes inside `tf.data`, inside the model and inside an
exported SavedModel (TensorFlow Serving links TensorFlow Text ops).

Two vocabularies: WordPiece pieces (`level="wordpiece"`, open vocabulary: any
word is spelled from pieces) or whole words only (`level="word"`: a word not in
the vocabulary becomes `[UNK]`). A captioner generates from its vocabulary, so
with whole words it can only say words that occur in its training captions; a
WordPiece captioner can string continuation pieces into non-words
("a murocrocram").
"""

import collections
import re
import unicodedata

import keras_hub
import numpy as np
import tensorflow as tf

PAD_TOKEN = "[PAD]"
UNK_TOKEN = "[UNK]"
START_TOKEN = "[START]"
END_TOKEN = "[END]"
# Order matters: padding must be id 0 so that zero-padded batches mean "no token".
SPECIAL_TOKENS = (PAD_TOKEN, UNK_TOKEN, START_TOKEN, END_TOKEN)


VOCABULARY_LEVELS = ("wordpiece", "word")
# What `WordPieceTokenizer` does before looking pieces up (keras-hub's default
# split: whitespace, and every punctuation character is a token of its own).
_WORD_PATTERN = re.compile(r"[^\W_]+|[^\w\s]|_", re.UNICODE)


def split_words(text, lowercase=True):
    """Splits text into the words a `build_tokenizer` tokenizer looks up.

    Lowercasing and accent stripping (NFD, combining marks dropped) as the
    tokenizer does with `lowercase=True`; punctuation marks are words of their
    own.

    Example:
    >>> split_words("A dog, running.")
    ['a', 'dog', ',', 'running', '.']
    """
    if lowercase:
        text = unicodedata.normalize("NFD", text.lower())
        text = "".join(c for c in text if unicodedata.category(c) != "Mn")
    return _WORD_PATTERN.findall(text)


def learn_vocabulary(texts, vocabulary_size=4000, lowercase=True, level="wordpiece", min_count=1):
    """Learns a WordPiece or whole-word vocabulary from training text.

    Args:
        texts: iterable of Python strings (training captions only: learning the
            vocabulary from validation or test text would leak them).
        vocabulary_size: int, upper bound on the vocabulary size including the
            special tokens. Small corpora produce fewer pieces.
        lowercase: bool, whether to lowercase before learning.
        level: `"wordpiece"` or `"word"`. Words keep the `vocabulary_size`
            most frequent words seen at least `min_count` times (ties by first
            occurrence, so the vocabulary is deterministic).
        min_count: int, `level="word"` only: rarer words become `[UNK]`.

    Returns:
        A list of tokens, starting with `SPECIAL_TOKENS`.

    Example:
    >>> vocab = learn_vocabulary(["a red circle", "a blue square"], 50)
    >>> vocab[:4]
    ['[PAD]', '[UNK]', '[START]', '[END]']
    """
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise ValueError("Cannot learn a vocabulary from zero non-empty texts.")
    if vocabulary_size <= len(SPECIAL_TOKENS):
        raise ValueError(
            f"`vocabulary_size` must exceed the {len(SPECIAL_TOKENS)} special "
            f"tokens. Received: vocabulary_size={vocabulary_size}"
        )
    if level not in VOCABULARY_LEVELS:
        raise ValueError(f"`level` must be one of {VOCABULARY_LEVELS}. Received: level={level}")
    if level == "word":
        if not isinstance(min_count, int) or min_count < 1:
            raise ValueError(f"`min_count` must be a positive int. Received: min_count={min_count}")
        counts = collections.Counter(w for t in texts for w in split_words(t, lowercase))
        words = [w for w, n in counts.most_common() if n >= min_count and w not in SPECIAL_TOKENS]
        return list(SPECIAL_TOKENS) + words[: vocabulary_size - len(SPECIAL_TOKENS)]
    data = tf.data.Dataset.from_tensor_slices(tf.constant(texts)).batch(1024)
    vocabulary = keras_hub.tokenizers.compute_word_piece_vocabulary(
        data,
        vocabulary_size=vocabulary_size,
        lowercase=lowercase,
        strip_accents=lowercase,
        reserved_tokens=list(SPECIAL_TOKENS),
    )
    return list(vocabulary)


def build_tokenizer(vocabulary, lowercase=True):
    """Returns the `WordPieceTokenizer` used everywhere in mmkeras.

    Args:
        vocabulary: list of tokens or path to a vocabulary file, with
            `SPECIAL_TOKENS` first (as `learn_vocabulary` returns it).
        lowercase: bool, must match the setting the vocabulary was learned with.
    """
    if isinstance(vocabulary, (list, tuple)):
        head = tuple(vocabulary[: len(SPECIAL_TOKENS)])
        if head != SPECIAL_TOKENS:
            raise ValueError(
                f"The vocabulary must start with {SPECIAL_TOKENS}. "
                f"Received: first tokens {head}"
            )
    return keras_hub.tokenizers.WordPieceTokenizer(
        vocabulary=vocabulary,
        lowercase=lowercase,
        strip_accents=lowercase,
        oov_token=UNK_TOKEN,
        special_tokens=list(SPECIAL_TOKENS),
        name="tokenizer",
    )


def special_token_ids(tokenizer):
    """Returns a dict `{"pad", "start", "end"} -> id` for a tokenizer."""
    return {
        "pad": tokenizer.token_to_id(PAD_TOKEN),
        "start": tokenizer.token_to_id(START_TOKEN),
        "end": tokenizer.token_to_id(END_TOKEN),
    }


def ids_before_end(token_ids, end_token_id, skip_ids=()):
    """Each row's ids before its first end token, without `skip_ids` (numpy).

    The cut `detokenize_generated` makes in graph, for code that turns
    generated ids into tokens in Python (the self-critical reward, the
    attention read-out). A row without an end token keeps all its ids.

    Args:
        token_ids: int array-like `(batch, length)`.
        end_token_id: int.
        skip_ids: ids dropped wherever they occur (e.g. padding, start).

    Returns:
        A list (one per row) of lists of int.

    Example:
    >>> ids_before_end([[2, 5, 6, 3, 7], [5, 0, 6, 0, 0]], end_token_id=3, skip_ids={0, 2})
    [[5, 6], [5, 6]]
    """
    skip = {int(i) for i in skip_ids}
    rows = []
    for row in np.asarray(token_ids).tolist():
        ended = row.index(end_token_id) if end_token_id in row else len(row)
        rows.append([i for i in row[:ended] if i not in skip])
    return rows


def detokenize_generated(tokenizer, token_ids, end_token_id, start_token_id):
    """Turns generated id sequences into caption strings, in graph.

    Everything from the first end token on is dropped, as are start and padding
    tokens, so a sequence that never emitted an end token is cut at max length.

    Args:
        tokenizer: the `WordPieceTokenizer`.
        token_ids: int tensor `(batch, length)`, as returned by generation.
        end_token_id: int, id of `END_TOKEN`.
        start_token_id: int, id of `START_TOKEN`.

    Returns:
        A `tf.string` tensor of shape `(batch,)`.
    """
    token_ids = tf.convert_to_tensor(token_ids)
    is_end = tf.cast(tf.equal(token_ids, end_token_id), tf.int32)
    # Positions at or after the first end token have a positive running count.
    before_end = tf.equal(tf.cumsum(is_end, axis=1), 0)
    keep = before_end & tf.not_equal(token_ids, start_token_id)
    keep = keep & tf.not_equal(token_ids, 0)
    ragged = tf.ragged.boolean_mask(token_ids, keep)
    captions = tokenizer.detokenize(ragged)
    return tf.strings.strip(captions)
