import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from mmkeras.data.tokenizer import build_tokenizer, learn_vocabulary, special_token_ids
from mmkeras.models import ImageCaptioner, build_image_captioner
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
    model = tiny_captioner(tokenizer)
    x, _, _ = batch(tokenizer)
    ids = special_token_ids(tokenizer)
    tokens = ops.convert_to_numpy(model.generate(x["images"], method="top_k", k=20, seed=1)["token_ids"])
    for row in tokens:
        ends = np.where(row == ids["end"])[0]
        if len(ends):
            assert np.all(row[ends[0] + 1 :] == ids["pad"])


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
