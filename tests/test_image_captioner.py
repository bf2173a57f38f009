import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from mmkeras.data.tokenizer import build_tokenizer, learn_vocabulary, special_token_ids
from mmkeras.models import ImageCaptioner, build_image_captioner
from mmkeras.models.caption_search import sequence_scores
from tests.layer_harness import run_save_load

CAPTIONS = ["a red circle", "a blue square left of a red circle", "two green triangles", "a big blue square"]


@pytest.fixture(scope="module")
def tokenizer():
    # Repeated so whole words clear the learner's frequency threshold.
    return build_tokenizer(learn_vocabulary(CAPTIONS * 50, 100))


def tiny_captioner(tokenizer, sequence_length=8):
    ids = special_token_ids(tokenizer)
    return build_image_captioner(
        vocabulary_size=tokenizer.vocabulary_size(), sequence_length=sequence_length, image_size=32,
        hidden_dim=32, num_layers=2, num_heads=2, intermediate_dim=48, stem_filters=(8, 16),
        tokenizer=tokenizer, start_token_id=ids["start"], end_token_id=ids["end"], pad_token_id=ids["pad"],
    )


def batch(tokenizer, n=4, sequence_length=8, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (n, 32, 32, 3)).astype("float32")
    ids = special_token_ids(tokenizer)
    tokens = rng.integers(4, tokenizer.vocabulary_size(), (n, sequence_length + 1)).astype("int32")
    tokens[:, 0] = ids["start"]
    tokens[:, 5] = ids["end"]
    tokens[:, 6:] = ids["pad"]
    mask = (tokens != ids["pad"]).astype("int32")
    x = {"images": images, "token_ids": tokens[:, :-1], "padding_mask": mask[:, :-1]}
    return x, tokens[:, 1:], mask[:, 1:].astype("float32")


def test_fit_reduces_masked_loss(tokenizer):
    model = tiny_captioner(tokenizer)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    x, y, w = batch(tokenizer)
    history = model.fit(x, y, sample_weight=w, epochs=30, batch_size=4, verbose=0).history
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert history["token_accuracy"][-1] > history["token_accuracy"][0]


def test_loss_ignores_padding_targets(tokenizer):
    model = tiny_captioner(tokenizer)
    x, y, w = batch(tokenizer)
    y_pred = model(x)
    loss = float(model.compute_loss(x, y, y_pred, w))
    y_garbage = y.copy()
    y_garbage[w == 0] = 7  # changing padded targets must not change the loss
    assert float(model.compute_loss(x, y_garbage, y_pred, w)) == pytest.approx(loss, rel=1e-6)


@pytest.mark.parametrize("method", ["greedy", "beam", "top_k"])
def test_generate_methods_and_cache_equivalence(tokenizer, method):
    model = tiny_captioner(tokenizer)
    x, _, _ = batch(tokenizer)
    ids = special_token_ids(tokenizer)
    out = model.generate(x["images"], method=method, seed=3, num_beams=3)
    tokens = ops.convert_to_numpy(out["token_ids"])
    assert tokens.shape == (4, 8)
    assert np.all(tokens[:, 0] == ids["start"])
    assert np.all(tokens[:, 1:] != ids["start"]), "start is never generated"
    scores = ops.convert_to_numpy(out["scores"])
    assert scores.shape == (4,) and np.all(scores <= 0)
    if method != "top_k":  # deterministic methods: the cache must not change the result
        uncached = ops.convert_to_numpy(model.generate(x["images"], method=method, use_cache=False)["token_ids"])
        np.testing.assert_array_equal(tokens, uncached)


def test_padding_follows_end_token(tokenizer):
    keras.utils.set_random_seed(0)
    model = tiny_captioner(tokenizer)
    x, _, _ = batch(tokenizer, n=64)
    ids = special_token_ids(tokenizer)
    # An untrained model at temperature 1 almost never samples the end token (1
    # of 48): sampling nearly uniformly over the whole vocabulary, 64 rows of 7
    # steps end at many positions.
    tokens = ops.convert_to_numpy(
        model.generate(x["images"], method="top_k", k=tokenizer.vocabulary_size(), temperature=100.0,
                       seed=1)["token_ids"]
    )
    ended_early = 0
    for row in tokens:
        ends = np.where(row == ids["end"])[0]
        if len(ends):
            assert np.all(row[ends[0] + 1 :] == ids["pad"]), row
            ended_early += ends[0] < len(row) - 1
    assert ended_early >= 1, "no row ended before max length: nothing was checked"


@pytest.mark.slow
def test_greedy_learns_to_reproduce_caption(tokenizer):
    # Overfit two images to two captions: greedy decoding must recover them.
    keras.utils.set_random_seed(0)
    model = tiny_captioner(tokenizer, sequence_length=10)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    images = np.zeros((2, 32, 32, 3), "float32")
    images[0, :, :16, 0] = 255.0  # red on the left
    images[1, :, 16:, 1] = 255.0  # green on the right
    captions = ["a red circle", "two green triangles"]
    ids = special_token_ids(tokenizer)
    packer = __import__("keras_hub").layers.StartEndPacker(
        11, start_value=ids["start"], end_value=ids["end"], pad_value=ids["pad"], return_padding_mask=True)
    tokens, mask = packer(tf.function(tokenizer)(tf.constant(captions)))
    tokens, mask = tokens.numpy(), mask.numpy()
    x = {"images": images, "token_ids": tokens[:, :-1], "padding_mask": mask[:, :-1]}
    # Enough steps for batch norm's moving statistics (momentum 0.99) to reach
    # the training statistics, which inference uses.
    model.fit(x, tokens[:, 1:], sample_weight=mask[:, 1:].astype("float32"), epochs=400, batch_size=2, verbose=0)
    assert model.caption(images) == captions
    assert model.caption(images, method="beam") == captions


def test_config_round_trip_and_save_load(tokenizer, tmp_path):
    model = tiny_captioner(tokenizer)
    x, _, _ = batch(tokenizer)
    config = model.get_config()
    clone = ImageCaptioner.from_config(config)
    assert clone.image_size == 32 and clone.text_decoder.num_layers == 2
    restored = run_save_load(model, x, tmp_path, call=lambda m, inputs: m(inputs)["logits"])
    # The tokenizer and its vocabulary travel inside the .keras file.
    assert restored.tokenizer.get_vocabulary() == tokenizer.get_vocabulary()
    # Generation blocks [UNK] in a loaded captioner too, whose vocabulary
    # arrives after construction.
    assert restored.unk_token_id == model.unk_token_id == tokenizer.token_to_id("[UNK]")
    np.testing.assert_array_equal(
        ops.convert_to_numpy(model.generate(x["images"])["token_ids"]),
        ops.convert_to_numpy(restored.generate(x["images"])["token_ids"]),
    )
    assert restored.caption(x["images"]) == model.caption(x["images"])


def test_generate_rejects_bad_arguments(tokenizer):
    model = tiny_captioner(tokenizer)
    images = np.zeros((1, 32, 32, 3), "float32")
    with pytest.raises(ValueError, match="method"):
        model.generate(images, method="nucleus")
    with pytest.raises(ValueError, match="max_length"):
        model.generate(images, max_length=99)


def test_mismatched_widths_rejected(tokenizer):
    from mmkeras.layers import ImageEncoder, TextDecoder

    with pytest.raises(ValueError, match="hidden_dim"):
        ImageCaptioner(ImageEncoder(hidden_dim=16), TextDecoder(10, 4, hidden_dim=32, num_heads=2))


def test_top_k_rejects_k_above_vocabulary(tokenizer):
    model = tiny_captioner(tokenizer)
    with pytest.raises(ValueError, match="`k`"):
        model.generate(np.zeros((1, 32, 32, 3), "float32"), method="top_k", k=10_000)


# Decoding options, on a captioner whose next-token logits are a handcrafted
# table indexed by the previous token (a bigram model that ignores the image).
def bigram_captioner(tokenizer, monkeypatch, table, sequence_length=8):
    model = tiny_captioner(tokenizer, sequence_length)
    table = tf.constant(table, "float32")

    def call_with_cache(token_ids, cache, cache_update_index, image_cache):
        logits = ops.take(table, token_ids[:, 0], axis=0)[:, None, :]
        return logits, logits, cache

    monkeypatch.setattr(model.text_decoder, "call_with_cache", call_with_cache)
    return model


def words_of(tokenizer):
    special = set(special_token_ids(tokenizer).values()) | {tokenizer.token_to_id("[UNK]")}
    return [i for i in range(tokenizer.vocabulary_size()) if i not in special]


def generated(row, ids):
    """The generated tokens before the end token (or all, if there is none)."""
    row = list(row[1:])
    return row[: row.index(ids["end"])] if ids["end"] in row else row


def repeated_ngrams(tokens, n):
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(grams) - len(set(grams))


@pytest.mark.parametrize("method", ["greedy", "beam", "top_k"])
def test_no_repeat_ngram_size_blocks_repeats_the_model_prefers(tokenizer, monkeypatch, method):
    ids, words = special_token_ids(tokenizer), words_of(tokenizer)
    vocabulary_size = tokenizer.vocabulary_size()
    # Words ranked by id; the end token below the first 20 words; and a strong
    # pull to the loop start -> a -> b -> a -> b ...
    table = np.tile(np.zeros(vocabulary_size, "float32"), (vocabulary_size, 1))
    table[:, words] = -0.1 * np.arange(len(words))
    table[:, ids["end"]] = -2.0
    a, b = words[0], words[1]
    table[ids["start"], a] += 5.0
    table[a, b] += 5.0
    table[b, a] += 5.0
    model = bigram_captioner(tokenizer, monkeypatch, table)
    images = np.zeros((2, 32, 32, 3), "float32")
    options = {"method": method, "num_beams": 3, "k": 3, "seed": 1}
    plain = ops.convert_to_numpy(model.generate(images, **options)["token_ids"])
    assert all(repeated_ngrams(generated(row, ids), 2) > 0 for row in plain), plain
    for n in (1, 2):
        tokens = ops.convert_to_numpy(model.generate(images, no_repeat_ngram_size=n, **options)["token_ids"])
        for row in tokens:
            assert repeated_ngrams(generated(row, ids), n) == 0, (n, row)
            assert np.all(row[1:] != ids["pad"]) or np.all(row[list(row).index(ids["end"]) + 1 :] == ids["pad"])
        if method == "greedy":
            # The prefix start a b is the model's choice; only repeats are blocked.
            assert list(tokens[0, 1:3]) == [a, b]
            if n == 2:  # a b a, then b would repeat "a b": a again ("a a" is new)
                assert list(tokens[0, 1:5]) == [a, b, a, a]


@pytest.mark.parametrize("method", ["greedy", "beam", "top_k"])
def test_unknown_token_is_never_generated(tokenizer, monkeypatch, method):
    ids, unk = special_token_ids(tokenizer), tokenizer.token_to_id("[UNK]")
    vocabulary_size = tokenizer.vocabulary_size()
    table = np.zeros((vocabulary_size, vocabulary_size), "float32")
    table[:, unk] = 10.0  # The model's favourite token, after every token.
    table[:, ids["end"]] = -1.0
    model = bigram_captioner(tokenizer, monkeypatch, table)
    assert model.unk_token_id == unk
    tokens = ops.convert_to_numpy(
        model.generate(np.zeros((2, 32, 32, 3), "float32"), method=method, num_beams=3, k=3, seed=1)["token_ids"]
    )
    assert not (tokens == unk).any(), tokens
    assert (tokens[:, 1] != ids["pad"]).all()


def test_length_penalty_picks_between_a_short_and_a_long_beam(tokenizer, monkeypatch):
    ids, words = special_token_ids(tokenizer), words_of(tokenizer)
    p, q, r, s = words[:4]
    end, vocabulary_size = ids["end"], tokenizer.vocabulary_size()
    table = np.full((vocabulary_size, vocabulary_size), -30.0, "float32")

    def follow(token, **next_probabilities):
        for name, prob in next_probabilities.items():
            table[token, {"p": p, "q": q, "r": r, "s": s, "end": end}[name]] = np.log(prob)

    # Hypotheses: "p" (short), "q r" and "q r s" (long).
    follow(ids["start"], p=0.4, q=0.6)
    follow(p, end=1.0)
    follow(q, r=1.0)
    follow(r, end=0.53, s=0.45)
    follow(s, end=1.0)
    model = bigram_captioner(tokenizer, monkeypatch, table)
    images = np.zeros((1, 32, 32, 3), "float32")
    log_probs = ops.convert_to_numpy(ops.log_softmax(table, axis=-1))

    def log_prob(tokens):
        path = [ids["start"]] + tokens + [end]
        return sum(log_probs[x, y] for x, y in zip(path[:-1], path[1:]))

    expected = {
        # Raw sums: the short caption has the highest probability.
        0.0: ([p], log_prob([p])),
        # Mean per token: "q r s" (-0.32) beats "q r" (-0.38) and "p" (-0.46).
        # It wins only because finished beams compete with live ones under the
        # penalised score: by raw sum, the finished "p" and "q r" would take
        # both beams at step 3 and prune "q r s".
        1.0: ([q, r, s], log_prob([q, r, s]) / 4),
        2.0: ([q, r, s], log_prob([q, r, s]) / 16),
        -1.0: ([p], log_prob([p]) * 2),
    }
    for length_penalty, (tokens, score) in expected.items():
        out = model.generate(images, method="beam", num_beams=2, length_penalty=length_penalty)
        row = ops.convert_to_numpy(out["token_ids"])[0]
        assert generated(row, ids) == tokens, (length_penalty, row)
        np.testing.assert_allclose(ops.convert_to_numpy(out["scores"]), [score], rtol=1e-4)


def test_beam_scores_use_the_same_definition_as_greedy(tokenizer):
    # One beam is greedy decoding; its search score must equal greedy's
    # recomputed score, under every option, with and without the cache.
    model = tiny_captioner(tokenizer)
    x, _, _ = batch(tokenizer)
    ids = special_token_ids(tokenizer)
    options = {"no_repeat_ngram_size": 1, "length_penalty": 0.5}
    greedy = model.generate(x["images"], method="greedy", **options)
    beam = model.generate(x["images"], method="beam", num_beams=1, **options)
    tokens = ops.convert_to_numpy(greedy["token_ids"])
    np.testing.assert_array_equal(tokens, ops.convert_to_numpy(beam["token_ids"]))
    np.testing.assert_allclose(ops.convert_to_numpy(greedy["scores"]), ops.convert_to_numpy(beam["scores"]), atol=1e-4)
    for row in tokens:
        assert repeated_ngrams(generated(row, ids), 1) == 0
    uncached = model.generate(x["images"], method="beam", num_beams=3, use_cache=False, **options)
    cached = model.generate(x["images"], method="beam", num_beams=3, **options)
    np.testing.assert_array_equal(ops.convert_to_numpy(cached["token_ids"]), ops.convert_to_numpy(uncached["token_ids"]))


def test_decoding_options_are_validated(tokenizer):
    model = tiny_captioner(tokenizer)
    images = np.zeros((1, 32, 32, 3), "float32")
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match=f"no_repeat_ngram_size={bad!r}"):
            model.generate(images, no_repeat_ngram_size=bad)
    for bad in ("long", float("nan"), None):
        with pytest.raises(ValueError, match="length_penalty="):
            model.caption(images, method="beam", length_penalty=bad)
    with pytest.raises(ValueError, match="no_repeat_ngram_size=-2"):
        model.generate_tokens(images, no_repeat_ngram_size=-2)


def test_greedy_scores_equal_a_teacher_forced_pass(tokenizer):
    # Greedy scores its captions while generating them; they must equal the
    # definition: the decoder's log-probabilities of the returned tokens in
    # one teacher-forced pass, up to the end token, length-penalised.
    model = tiny_captioner(tokenizer)
    x, _, _ = batch(tokenizer)
    for options in ({}, {"no_repeat_ngram_size": 1, "length_penalty": 0.5}):
        out = model.generate(x["images"], method="greedy", **options)
        image_tokens = model.image_encoder(x["images"], training=False)["tokens"]
        expected = sequence_scores(
            model.text_decoder, image_tokens, out["token_ids"], model.special_token_ids,
            options.get("length_penalty", 1.0),
        )
        np.testing.assert_allclose(ops.convert_to_numpy(out["scores"]), ops.convert_to_numpy(expected), atol=1e-5)


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_xla_generation_returns_the_same_tokens(tokenizer, method):
    model = tiny_captioner(tokenizer)
    x, _, _ = batch(tokenizer)
    plain = model.generate(x["images"], method=method, num_beams=3)
    compiled = model.generate(x["images"], method=method, num_beams=3, jit_compile=True)
    np.testing.assert_array_equal(ops.convert_to_numpy(plain["token_ids"]), ops.convert_to_numpy(compiled["token_ids"]))
    np.testing.assert_allclose(ops.convert_to_numpy(plain["scores"]), ops.convert_to_numpy(compiled["scores"]), atol=1e-5)
    # Both stay compiled: the option is part of the cache key.
    assert {key[-1] for key in model._generate_functions.functions} == {False, True}
