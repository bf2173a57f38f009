"""Cached text features of a frozen text tower: the lookup, its limits, and the models trained on it."""

import numpy as np
import pytest
import tensorflow as tf

from mmkeras.data import text_features
from mmkeras.data.text_preprocessor import text_preprocessor_from_vocabulary
from mmkeras.layers.text_encoder import TextEncoder
from mmkeras.models.dual_encoder import build_dual_encoder
from training import finetune
from training.config import DataConfig
from tests.training_fixtures import train_in_process

VOCABULARY = ["[PAD]", "[UNK]", "[START]", "[END]", "a", "red", "blue", "dog", "cat", "on", "grass"]
LENGTH = 8


def _preprocessor():
    return text_preprocessor_from_vocabulary(VOCABULARY, LENGTH)


def _encoder():
    return TextEncoder(vocabulary_size=len(VOCABULARY), sequence_length=LENGTH, hidden_dim=16, num_layers=1,
                       num_heads=2, intermediate_dim=32)


def _extract(encoder):
    return lambda token_ids, padding_mask: encoder.features(token_ids, padding_mask, training=False)


def test_lookup_returns_each_texts_features_and_refuses_unknown_texts():
    encoder, preprocessor = _encoder(), _preprocessor()
    texts = ["a red dog", "a blue cat", "a red dog", "a dog on grass"]
    lookup = text_features.feature_lookup(texts, preprocessor, _extract(encoder))
    query = ["a dog on grass", "a red dog", "a red dog"]
    x = preprocessor(tf.constant(query))
    expected = encoder.features(x["token_ids"], x["padding_mask"], training=False).numpy()
    np.testing.assert_allclose(lookup(tf.constant(query)).numpy(), expected, atol=1e-6)
    # Inside a tf.data map too (where the pipelines call it).
    ds = tf.data.Dataset.from_tensor_slices(tf.constant(query)).batch(3).map(lookup)
    np.testing.assert_allclose(next(iter(ds)).numpy(), expected, atol=1e-6)
    with pytest.raises(tf.errors.InvalidArgumentError, match="missing from the cached text features"):
        lookup(tf.constant(["a cat on grass"]))


def test_a_table_over_the_memory_limit_is_refused_and_the_run_encodes_instead():
    encoder, preprocessor = _encoder(), _preprocessor()
    texts = ["a red dog", "a blue cat"]
    per_text = LENGTH * 16 * 4  # float32 (length, hidden_dim)
    with pytest.raises(text_features.FeatureCacheTooLargeError, match="2 texts needs"):
        text_features.feature_lookup(texts, preprocessor, _extract(encoder), max_bytes=2 * per_text - 1)
    assert text_features.feature_lookup(texts, preprocessor, _extract(encoder), max_bytes=2 * per_text)
    # The training side logs and trains without the cache.
    small = DataConfig(max_text_feature_cache_mb=0)
    assert finetune.text_feature_lookup(_extract(encoder), texts, preprocessor, small) is None
    with pytest.raises(ValueError, match="zero texts"):
        text_features.feature_lookup([], preprocessor, _extract(encoder))


def test_only_a_frozen_text_tower_is_cached():
    encoder = _encoder()
    encoder.build((None, LENGTH))
    assert finetune.text_feature_extractor(encoder, DataConfig()) is None  # trains: features change
    finetune.apply_trainable(encoder, "top:1")
    assert finetune.text_feature_extractor(encoder, DataConfig()) is None
    finetune.apply_trainable(encoder, "none")
    assert finetune.text_feature_extractor(encoder, DataConfig()) is not None
    assert finetune.text_feature_extractor(encoder, DataConfig(cache_text_features=False)) is None


def test_dual_encoder_trains_on_cached_text_features_like_on_token_ids():
    preprocessor = _preprocessor()
    model = build_dual_encoder(image_size=16, sequence_length=LENGTH, vocabulary_size=len(VOCABULARY),
                               hidden_dim=16, num_heads=2, intermediate_dim=32, projection_dim=8,
                               text_encoder_kwargs={"num_layers": 1},
                               image_encoder_kwargs={"stem_filters": (8,), "stem_norm": "group"})
    finetune.apply_trainable(model.text_encoder, "none")
    texts = ["a red dog", "a blue cat", "a dog on grass", "a cat on grass"]
    lookup = text_features.feature_lookup(texts, preprocessor, finetune.text_feature_extractor(
        model.text_encoder, DataConfig()))
    x = preprocessor(tf.constant(texts))
    inputs = {"images": tf.random.uniform((4, 16, 16, 3), maxval=255, seed=1), "token_ids": x["token_ids"],
              "padding_mask": x["padding_mask"]}
    cached = {**inputs, "text_features": lookup(tf.constant(texts))}
    np.testing.assert_allclose(model(cached)["text_embeddings"], model(inputs)["text_embeddings"], atol=1e-5)
    model.compile(optimizer="adam")
    before = [w.numpy().copy() for w in model.text_encoder.weights]
    history = model.fit(tf.data.Dataset.from_tensors(cached).repeat(3), verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    # The frozen part did not move; the trainable projection/norm did.
    moved = {w.path for w, b in zip(model.text_encoder.weights, before) if not np.array_equal(w.numpy(), b)}
    assert moved and all("norm" in path for path in moved), moved


@pytest.mark.parametrize("experiment_name", ["classify_tiny", "contrastive_tiny"])
def test_frozen_text_tower_trains_the_same_with_and_without_the_cache(tmp_path, experiment_name):
    # Every task with a text tower: the cache changes where its features are
    # computed, not what the model learns (no dropout, so both runs are exact).
    weights = {}
    for cache in (True, False):
        task, model = train_in_process(experiment_name, [
            "train.steps=6", "model.text_encoder.trainable=none", "model.dropout=0.0",
            f"data.cache_text_features={cache}", "classify.ablation=false",
        ], tmp_path / f"cache_{cache}")
        batch = next(iter(task.global_train_dataset()))
        inputs = batch[0] if isinstance(batch, tuple) else batch
        assert ("text_features" in inputs) == cache
        weights[cache] = [w.numpy() for w in model.trainable_weights]
    for a, b in zip(weights[True], weights[False]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
