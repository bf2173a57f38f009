import numpy as np
import pytest
import tensorflow as tf

from mmkeras.data.tokenizer import (
    SPECIAL_TOKENS,
    build_tokenizer,
    detokenize_generated,
    learn_vocabulary,
    special_token_ids,
    split_words,
)

CAPTIONS = ["A dog runs on the grass.", "a black dog jumps", "two dogs play on the grass"] * 30


def test_vocabulary_starts_with_special_tokens_and_covers_words():
    vocabulary = learn_vocabulary(CAPTIONS, 200)
    assert tuple(vocabulary[:4]) == SPECIAL_TOKENS
    assert {"dog", "grass", "the"} <= set(vocabulary)
    assert "A" not in vocabulary  # lowercased


def test_tokenize_in_graph_and_round_trip():
    tokenizer = build_tokenizer(learn_vocabulary(CAPTIONS, 200))
    ids = special_token_ids(tokenizer)
    assert ids == {"pad": 0, "start": 2, "end": 3}
    tokens = tf.function(tokenizer)(tf.constant(["a dog runs", "two dogs"]))
    padded = tokens.to_tensor()
    framed = np.concatenate([np.full((2, 1), ids["start"]), padded.numpy(), np.full((2, 1), ids["end"]),
                             np.full((2, 3), 7)], axis=1)  # tokens after the end are ignored
    captions = detokenize_generated(tokenizer, framed, ids["end"], ids["start"]).numpy()
    assert [c.decode() for c in captions] == ["a dog runs", "two dogs"]


def test_unknown_words_map_to_unk():
    tokenizer = build_tokenizer(learn_vocabulary(CAPTIONS, 200))
    tokens = tf.function(tokenizer)(tf.constant(["zebra"])).to_tensor().numpy()
    assert tokens[0, 0] == tokenizer.token_to_id("[UNK]")


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="zero non-empty"):
        learn_vocabulary(["", "  "], 100)
    with pytest.raises(ValueError, match="vocabulary_size"):
        learn_vocabulary(CAPTIONS, 3)
    with pytest.raises(ValueError, match="must start with"):
        build_tokenizer(["a", "b", "[PAD]", "[UNK]", "[START]", "[END]"])


def test_word_vocabulary_holds_whole_words_by_frequency():
    vocabulary = learn_vocabulary(CAPTIONS + ["a zebra"], 9, level="word")
    assert tuple(vocabulary[:4]) == SPECIAL_TOKENS
    # "a" 61, "dog"/"on"/"the"/"grass" 30-60 times: most frequent first, no pieces.
    assert vocabulary[4] == "a" and len(vocabulary) == 9
    assert not any(token.startswith("##") for token in vocabulary)
    assert "zebra" not in vocabulary
    assert "zebra" in learn_vocabulary(CAPTIONS + ["a zebra"], 100, level="word")
    assert "zebra" not in learn_vocabulary(CAPTIONS + ["a zebra"], 100, level="word", min_count=2)


def test_word_tokenizer_splits_like_split_words_and_never_makes_pieces():
    tokenizer = build_tokenizer(learn_vocabulary(CAPTIONS + ["Café, dogs!"], 100, level="word"))
    tokenize = tf.function(tokenizer)
    for text in ("A dog runs on the grass.", "café, dogs!", "two dogs play"):
        ids = tokenize(tf.constant([text])).to_tensor().numpy()[0]
        assert tokenizer.token_to_id("[UNK]") not in ids
        assert [tokenizer.id_to_token(int(i)) for i in ids] == split_words(text)
    # A training word's unseen variant is unknown, not spelled from pieces.
    ids = tokenize(tf.constant(["dogged"])).to_tensor().numpy()[0]
    assert list(ids) == [tokenizer.token_to_id("[UNK]")]
    assert split_words("Ça va, très-bien_") == ["ca", "va", ",", "tres", "-", "bien", "_"]


def test_bad_vocabulary_level_is_rejected():
    with pytest.raises(ValueError, match="level=words"):
        learn_vocabulary(CAPTIONS, 100, level="words")
    with pytest.raises(ValueError, match="min_count=0"):
        learn_vocabulary(CAPTIONS, 100, level="word", min_count=0)
