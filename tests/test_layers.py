import json
import os

import numpy as np
import pytest
from keras import ops

from mmkeras.layers import (CrossModalAttention, ImageEncoder, PresetError, TextDecoder, TextDecoderBlock,
                            TextEncoder)
from tests.backbone_fixtures import save_tiny_resnet_preset, tiny_resnet_kwargs
from tests.layer_harness import run_config_round_trip, run_layer_checks, run_save_load

RNG = np.random.default_rng(0)


def test_cross_modal_attention_checks():
    text = RNG.normal(size=(2, 5, 16)).astype("float32")
    image = RNG.normal(size=(2, 9, 24)).astype("float32")
    layer = run_layer_checks(
        CrossModalAttention, {"num_heads": 2, "key_dim": 4, "dropout": 0.1}, [text, image],
        expected_shape=(2, 5, 16),
    )
    clone = run_config_round_trip(layer)
    assert clone.key_dim == 4 and clone.dropout == 0.1


def test_cross_modal_attention_scores_and_mask():
    layer = CrossModalAttention(num_heads=2)
    text = RNG.normal(size=(2, 3, 8)).astype("float32")
    image = RNG.normal(size=(2, 4, 8)).astype("float32")
    mask = np.ones((2, 3, 4), bool)
    mask[:, :, 2:] = False
    out, scores = layer(text, image, attention_mask=mask, return_attention_scores=True)
    scores = ops.convert_to_numpy(scores)
    assert scores.shape == (2, 2, 3, 4)
    np.testing.assert_allclose(scores.sum(-1), 1.0, atol=1e-5)
    assert np.all(scores[..., 2:] < 1e-6), "masked positions must get no attention"


def test_cross_modal_attention_cache_matches_full_call():
    layer = CrossModalAttention(num_heads=2)
    x = RNG.normal(size=(2, 4, 8)).astype("float32")
    full_mask = np.tril(np.ones((4, 4), bool))[None]
    full = ops.convert_to_numpy(layer(x, x, attention_mask=full_mask))
    cache = (ops.zeros((2, 2, 4, 4)), ops.zeros((2, 2, 4, 4)))  # (batch, heads, length, key_dim)
    for i in range(4):
        step = x[:, i : i + 1]
        mask = (np.arange(4) <= i)[None, None, :]
        out, cache = layer(step, step, attention_mask=mask, cache=cache, cache_update_index=i)
        np.testing.assert_allclose(ops.convert_to_numpy(out)[:, 0], full[:, i], atol=1e-5)


def test_cross_modal_attention_rejects_bad_args():
    with pytest.raises(ValueError, match="num_heads"):
        CrossModalAttention(num_heads=0)
    with pytest.raises(ValueError, match="dropout"):
        CrossModalAttention(num_heads=2, dropout=1.5)


def test_text_decoder_block_checks():
    text = RNG.normal(size=(2, 5, 16)).astype("float32")
    image = RNG.normal(size=(2, 9, 16)).astype("float32")
    layer = run_layer_checks(
        TextDecoderBlock, {"num_heads": 2, "intermediate_dim": 24, "dropout": 0.2}, [text, image],
        expected_shape=(2, 5, 16),
    )
    assert run_config_round_trip(layer).intermediate_dim == 24


def test_image_encoder_checks(tmp_path):
    images = RNG.uniform(0, 255, size=(2, 32, 32, 3)).astype("float32")
    layer = run_layer_checks(
        ImageEncoder, {"hidden_dim": 16, "stem_filters": (8, 12), "dropout": 0.1}, images,
        expected_shape=(2, 64, 16),
    )
    clone = run_config_round_trip(layer)
    assert clone.stem_filters == (8, 12)
    out = layer(images)
    assert tuple(out["pooled"].shape) == (2, 16)
    run_save_load(layer, images, tmp_path)


def test_image_encoder_tokens_depend_on_position():
    # Position embeddings let attention tell left from right: identical
    # content at two places must give different tokens.
    encoder = ImageEncoder(hidden_dim=8, stem_filters=(4,))
    tokens = ops.convert_to_numpy(encoder(np.zeros((1, 8, 8, 3), "float32"))["tokens"])
    assert not np.allclose(tokens[0, 0], tokens[0, -1])


def test_image_encoder_keras_hub_backbone_by_class_and_preset(tmp_path):
    import keras_hub

    kwargs = tiny_resnet_kwargs(32, stackwise_num_filters=(64, 32), stackwise_num_strides=(1, 2))
    images = RNG.uniform(0, 255, size=(2, 32, 32, 3)).astype("float32")
    by_class = ImageEncoder(hidden_dim=16, backbone_class="ResNetBackbone", backbone_kwargs=kwargs)
    out = by_class(images)
    assert out["tokens"].shape[0] == 2 and out["tokens"].shape[-1] == 16
    clone = run_config_round_trip(by_class)
    assert clone.backbone_class == "ResNetBackbone"

    # A preset saved locally from random weights: loading must restore them.
    backbone = keras_hub.models.ResNetBackbone(**kwargs)
    preset_dir = str(tmp_path / "resnet_preset")
    backbone.save_to_preset(preset_dir)
    from_preset = ImageEncoder(hidden_dim=16, backbone_preset=preset_dir)
    for a, b in zip(backbone.weights, from_preset.backbone.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert from_preset(images)["tokens"].shape[-1] == 16
    assert run_config_round_trip(from_preset).backbone_preset == preset_dir


def test_image_encoder_takes_pixel_scaling_from_preset_and_checks_kind(tmp_path):
    import keras_hub

    preset_dir = save_tiny_resnet_preset(tmp_path / "resnet_preset", 16)
    assert ImageEncoder(hidden_dim=8, backbone_preset=preset_dir).pixel_scale == 1.0 / 255.0
    # Without a converter, the scaling training.presets records stands in for it.
    with open(os.path.join(preset_dir, "mmkeras_preset.json"), "w") as f:
        json.dump({"pixel_scale": 1.0 / 127.5, "pixel_offset": -1.0}, f)
    encoder = ImageEncoder(hidden_dim=8, backbone_preset=preset_dir)
    assert (encoder.pixel_scale, encoder.pixel_offset) == (1.0 / 127.5, -1.0)
    with open(os.path.join(preset_dir, "mmkeras_preset.json"), "w") as f:
        json.dump({"kind": "image"}, f)
    with pytest.raises(PresetError, match="mmkeras_preset.json gives no pixel_scale"):
        ImageEncoder(hidden_dim=8, backbone_preset=preset_dir)
    os.remove(os.path.join(preset_dir, "mmkeras_preset.json"))
    # An image converter in the preset (EfficientNet-Lite0's: [-1, 1]) wins.
    keras_hub.layers.ResNetImageConverter(scale=1.0 / 127.5, offset=-1.0).save_to_preset(preset_dir)
    encoder = ImageEncoder(hidden_dim=8, backbone_preset=preset_dir)
    assert (encoder.pixel_scale, encoder.pixel_offset) == (1.0 / 127.5, -1.0)
    keras_hub.layers.ResNetImageConverter(
        scale=[1 / 58.4, 1 / 57.1, 1 / 57.4], offset=[-2.1, -2.0, -1.8]
    ).save_to_preset(preset_dir)
    encoder = ImageEncoder(hidden_dim=8, backbone_preset=preset_dir)
    assert encoder.pixel_offset == (-2.1, -2.0, -1.8)
    clone = run_config_round_trip(encoder)
    assert clone.pixel_offset == (-2.1, -2.0, -1.8)
    images = RNG.uniform(0, 255, size=(2, 16, 16, 3)).astype("float32")
    assert np.isfinite(ops.convert_to_numpy(encoder.features(images))).all()

    text_dir = str(tmp_path / "bert_preset")
    keras_hub.models.BertBackbone(vocabulary_size=30, num_layers=1, num_heads=2, hidden_dim=8,
                                  intermediate_dim=16, max_sequence_length=8).save_to_preset(text_dir)
    with pytest.raises(ValueError, match="BertBackbone, not an image backbone"):
        ImageEncoder(hidden_dim=8, backbone_preset=text_dir)
    with pytest.raises(ValueError, match="ResNetBackbone, not a text backbone"):
        TextEncoder(backbone_preset=preset_dir)


def test_damaged_or_foreign_preset_folders_are_preset_errors_naming_them(tmp_path):
    import shutil

    import keras_hub

    preset_dir = save_tiny_resnet_preset(tmp_path / "resnet_preset", 16)
    # A two-stack ResNet's config.json with a one-stack ResNet's weights.
    other = str(tmp_path / "other")
    keras_hub.models.ResNetBackbone(**tiny_resnet_kwargs(16, (64, 64))).save_to_preset(other)
    shutil.copy(os.path.join(preset_dir, "model.weights.h5"), os.path.join(other, "model.weights.h5"))
    with pytest.raises(PresetError, match="other cannot be loaded as a keras-hub backbone"):
        ImageEncoder(hidden_dim=8, backbone_preset=other)
    # A truncated weights file, and a config.json that is not JSON.
    with open(os.path.join(other, "model.weights.h5"), "r+b") as f:
        f.truncate(1000)
    with pytest.raises(PresetError, match="other cannot be loaded"):
        ImageEncoder(hidden_dim=8, backbone_preset=other)
    with open(os.path.join(preset_dir, "config.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(PresetError, match="resnet_preset cannot be loaded"):
        ImageEncoder(hidden_dim=8, backbone_preset=preset_dir)


def test_image_encoder_features_split_matches_call():
    encoder = ImageEncoder(hidden_dim=8, stem_filters=(4, 8))
    images = RNG.uniform(0, 255, size=(2, 16, 16, 3)).astype("float32")
    expected = ops.convert_to_numpy(encoder(images)["tokens"])
    features = encoder.features(images)
    assert tuple(features.shape) == encoder.features_shape((2, 16, 16, 3))
    cached = encoder.encode_inputs({"image_features": features})
    np.testing.assert_allclose(ops.convert_to_numpy(cached["tokens"]), expected, atol=1e-6)
    direct = encoder.encode_inputs({"images": images})
    np.testing.assert_allclose(ops.convert_to_numpy(direct["tokens"]), expected, atol=1e-6)


def test_image_encoder_rejects_two_backbones():
    with pytest.raises(ValueError, match="at most one"):
        ImageEncoder(backbone_class="ResNetBackbone", backbone_preset="/x")


def test_text_decoder_checks_and_causality():
    kwargs = dict(vocabulary_size=30, sequence_length=8, hidden_dim=16, num_layers=2,
                  num_heads=2, intermediate_dim=24, dropout=0.0)
    decoder = TextDecoder(**kwargs)
    tokens = RNG.integers(1, 30, size=(2, 8)).astype("int32")
    image = RNG.normal(size=(2, 9, 16)).astype("float32")
    logits = ops.convert_to_numpy(decoder(tokens, image))
    assert logits.shape == (2, 8, 30)
    # Changing a later token must not change earlier logits.
    changed = tokens.copy()
    changed[:, 5] = (changed[:, 5] % 29) + 1
    logits2 = ops.convert_to_numpy(decoder(changed, image))
    np.testing.assert_allclose(logits[:, :5], logits2[:, :5], atol=1e-5)
    assert not np.allclose(logits[:, 5:], logits2[:, 5:])
    assert run_config_round_trip(decoder).num_layers == 2


def test_text_decoder_cache_matches_full_call():
    decoder = TextDecoder(vocabulary_size=30, sequence_length=6, hidden_dim=16, num_layers=2,
                          num_heads=2, intermediate_dim=24, dropout=0.0)
    tokens = RNG.integers(1, 30, size=(2, 6)).astype("int32")
    image = RNG.normal(size=(2, 9, 16)).astype("float32")
    full = ops.convert_to_numpy(decoder(tokens, image))
    cache = decoder.initial_cache(2, 6)
    image_cache = decoder.image_cache(image)
    for i in range(6):
        logits, _, cache = decoder.call_with_cache(tokens[:, i : i + 1], cache, i, image_cache)
        np.testing.assert_allclose(ops.convert_to_numpy(logits)[:, 0], full[:, i], atol=1e-4)


def test_text_decoder_attention_scores():
    decoder = TextDecoder(vocabulary_size=30, sequence_length=6, hidden_dim=16, num_layers=2,
                          num_heads=2, intermediate_dim=24)
    logits, scores = decoder(np.ones((1, 6), "int32"), np.ones((1, 4, 16), "float32"),
                             return_attention_scores=True)
    assert len(scores) == 2 and tuple(scores[0].shape) == (1, 2, 6, 4)


def test_text_decoder_rejects_bad_args():
    with pytest.raises(ValueError, match="divisible"):
        TextDecoder(vocabulary_size=10, sequence_length=4, hidden_dim=10, num_heads=3)
    with pytest.raises(ValueError, match="vocabulary_size"):
        TextDecoder(vocabulary_size=0, sequence_length=4)
