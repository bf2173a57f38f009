import os
import shutil

import keras
import keras_hub
import numpy as np
import pytest
from keras import ops

from mmkeras.layers.image_encoder import ImageEncoder
from mmkeras.layers.text_encoder import TextEncoder
from tests.backbone_fixtures import save_tiny_resnet_preset
from tests.layer_harness import run_config_round_trip, run_layer_checks, run_save_load

RNG = np.random.default_rng(0)
LENGTH = 8
TINY = dict(vocabulary_size=30, sequence_length=LENGTH, hidden_dim=16, num_layers=2,
            num_heads=2, intermediate_dim=32)
BERT_KWARGS = dict(vocabulary_size=50, num_layers=1, num_heads=2, hidden_dim=16,
                   intermediate_dim=32, max_sequence_length=16)


def _inputs(vocabulary_size=30):
    token_ids = RNG.integers(1, vocabulary_size, size=(2, LENGTH)).astype("int32")
    padding_mask = np.ones((2, LENGTH), bool)
    padding_mask[0, 5:] = False
    padding_mask[1, 3:] = False
    return np.where(padding_mask, token_ids, 0).astype("int32"), padding_mask


def _wrap(encoder, length=LENGTH):
    """Two-input functional model: the harness saves single-input layers only."""
    token_ids = keras.Input((length,), dtype="int32", name="token_ids")
    padding_mask = keras.Input((length,), dtype="bool", name="padding_mask")
    outputs = encoder(token_ids, padding_mask)
    return keras.Model({"token_ids": token_ids, "padding_mask": padding_mask}, outputs)


def _call_model(model, inputs):
    return model({"token_ids": inputs[0], "padding_mask": inputs[1]})


def _numpy(outputs):
    return {k: ops.convert_to_numpy(v) for k, v in outputs.items()}


def _tiny_bert_preset(directory):
    backbone = keras_hub.models.BertBackbone(**BERT_KWARGS)
    backbone.save_to_preset(directory)
    return backbone


def test_text_encoder_checks_and_save_load(tmp_path):
    inputs = list(_inputs())
    layer = run_layer_checks(TextEncoder, dict(TINY, dropout=0.0), inputs,
                             expected_shape=(2, LENGTH, 16))
    outputs = layer(*inputs)
    assert tuple(outputs["pooled"].shape) == (2, 16)
    assert layer.compute_output_shape((2, LENGTH)) == {"tokens": (2, LENGTH, 16), "pooled": (2, 16)}
    run_save_load(_wrap(layer), inputs, tmp_path, call=_call_model)


def test_text_encoder_config_round_trip_non_default():
    layer = TextEncoder(vocabulary_size=40, sequence_length=12, hidden_dim=8, num_layers=1,
                        num_heads=4, intermediate_dim=24, dropout=0.25, pooling="first",
                        name="question_encoder")
    clone = run_config_round_trip(layer)
    assert (clone.vocabulary_size, clone.sequence_length, clone.hidden_dim) == (40, 12, 8)
    assert (clone.num_layers, clone.num_heads, clone.intermediate_dim) == (1, 4, 24)
    assert (clone.dropout, clone.pooling, clone.name) == (0.25, "first", "question_encoder")
    assert len(clone.blocks) == 1


@pytest.mark.parametrize("pooling", ["mean", "first"])
def test_text_encoder_ignores_ids_at_padded_positions(pooling):
    encoder = TextEncoder(**TINY, pooling=pooling)
    token_ids, padding_mask = _inputs()
    noisy = np.where(padding_mask, token_ids, RNG.integers(1, 30, size=token_ids.shape)).astype("int32")
    clean = _numpy(encoder(token_ids, padding_mask, training=False))
    changed = _numpy(encoder(noisy, padding_mask, training=False))
    np.testing.assert_allclose(changed["pooled"], clean["pooled"], atol=1e-5)
    np.testing.assert_allclose(changed["tokens"][padding_mask], clean["tokens"][padding_mask], atol=1e-5)
    # The default mask is `token_ids != 0`, so zero padding needs no mask.
    implicit = _numpy(encoder(token_ids, training=False))
    np.testing.assert_allclose(implicit["pooled"], clean["pooled"], atol=1e-5)


def test_text_encoder_mean_pooling_is_the_masked_mean_and_all_padding_is_finite():
    encoder = TextEncoder(**TINY)
    token_ids, padding_mask = _inputs()
    out = _numpy(encoder(token_ids, padding_mask))
    expected = (out["tokens"] * padding_mask[..., None]).sum(1) / padding_mask.sum(1, keepdims=True)
    np.testing.assert_allclose(out["pooled"], expected, atol=1e-5)
    empty = _numpy(encoder(np.zeros((2, LENGTH), "int32")))
    assert np.all(np.isfinite(empty["pooled"])) and np.all(np.isfinite(empty["tokens"]))


def test_text_encoder_bert_backbone_by_class(tmp_path):
    encoder = TextEncoder(backbone_class="BertBackbone", backbone_kwargs=BERT_KWARGS, hidden_dim=8)
    inputs = list(_inputs(50))
    out = _numpy(encoder(*inputs))
    assert out["tokens"].shape == (2, LENGTH, 8) and out["pooled"].shape == (2, 8)
    noisy = np.where(inputs[1], inputs[0], 7).astype("int32")
    np.testing.assert_allclose(_numpy(encoder(noisy, inputs[1]))["pooled"], out["pooled"], atol=1e-5)
    clone = run_config_round_trip(encoder)
    assert clone.backbone_class == "BertBackbone" and clone.backbone_kwargs == BERT_KWARGS
    assert encoder.get_config()["backbone"] is None  # rebuilt from the class name
    run_save_load(_wrap(encoder), inputs, tmp_path, call=_call_model)


def test_text_encoder_backbone_instance_and_frozen_backbone():
    backbone = keras_hub.models.BertBackbone(**BERT_KWARGS)
    encoder = TextEncoder(backbone=backbone, hidden_dim=8, backbone_trainable=False)
    assert not backbone.trainable
    encoder(*_inputs(50))
    # Only the projection and norm train; the backbone's weights stay put.
    assert {w.path.split("/")[-2] for w in encoder.trainable_weights} == {"projection", "norm"}
    clone = run_config_round_trip(encoder)
    assert isinstance(clone.backbone, keras_hub.models.BertBackbone) and not clone.backbone.trainable


def test_text_encoder_backbone_without_segment_ids():
    # keras-hub GPT-2 takes token_ids and padding_mask only.
    backbone = keras_hub.models.GPT2Backbone(vocabulary_size=50, num_layers=1, num_heads=2,
                                             hidden_dim=16, intermediate_dim=32, max_sequence_length=16)
    encoder = TextEncoder(backbone=backbone, hidden_dim=8, pooling="first")
    out = _numpy(encoder(*_inputs(50)))
    assert out["tokens"].shape == (2, LENGTH, 8)


def test_text_encoder_from_preset_reloads_without_preset_folder(tmp_path):
    preset_dir = str(tmp_path / "bert_preset")
    backbone = _tiny_bert_preset(preset_dir)
    encoder = TextEncoder(backbone_preset=preset_dir, hidden_dim=8)
    assert len(encoder.backbone.weights) == len(backbone.weights)
    for a, b in zip(backbone.weights, encoder.backbone.weights):
        np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))
    assert run_config_round_trip(encoder).backbone_preset == preset_dir

    model = _wrap(encoder)
    inputs = list(_inputs(50))
    expected = _numpy(_call_model(model, inputs))
    path = str(tmp_path / "model.keras")
    model.save(path)
    shutil.rmtree(preset_dir)
    restored = keras.saving.load_model(path)
    actual = _numpy(_call_model(restored, inputs))
    for key in ("tokens", "pooled"):
        np.testing.assert_allclose(actual[key], expected[key], atol=1e-5)


def test_image_encoder_from_preset_reloads_without_preset_folder(tmp_path):
    # Same fix in ImageEncoder (kept here with the shared helpers' test).
    preset_dir = save_tiny_resnet_preset(tmp_path / "resnet_preset", 16)
    images = keras.Input((16, 16, 3))
    model = keras.Model(images, ImageEncoder(hidden_dim=8, backbone_preset=preset_dir)(images))
    x = RNG.uniform(0, 255, size=(2, 16, 16, 3)).astype("float32")
    expected = ops.convert_to_numpy(model(x)["pooled"])
    path = str(tmp_path / "image_model.keras")
    model.save(path)
    shutil.rmtree(preset_dir)
    actual = ops.convert_to_numpy(keras.saving.load_model(path)(x)["pooled"])
    np.testing.assert_allclose(actual, expected, atol=1e-5)


def test_text_encoder_rejects_bad_args(tmp_path):
    with pytest.raises(ValueError, match="at most one"):
        TextEncoder(backbone_class="BertBackbone", backbone_preset=str(tmp_path))
    with pytest.raises(ValueError, match="at most one"):
        TextEncoder(backbone=keras_hub.models.BertBackbone(**BERT_KWARGS),
                    backbone_class="BertBackbone", backbone_kwargs=BERT_KWARGS)
    with pytest.raises(ValueError, match="pooling=max"):
        TextEncoder(**TINY, pooling="max")
    with pytest.raises(ValueError, match="vocabulary_size=None"):
        TextEncoder(sequence_length=8)
    with pytest.raises(ValueError, match="sequence_length=None"):
        TextEncoder(vocabulary_size=8)
    with pytest.raises(ValueError, match="num_layers=0"):
        TextEncoder(**dict(TINY, num_layers=0))
    with pytest.raises(ValueError, match="num_heads=3"):
        TextEncoder(**dict(TINY, num_heads=3))
    with pytest.raises(ValueError, match="backbone_class=NoSuchBackbone"):
        TextEncoder(backbone_class="NoSuchBackbone")
    missing = os.path.join(str(tmp_path), "no_such_preset")
    with pytest.raises(FileNotFoundError, match="no_such_preset"):
        TextEncoder(backbone_preset=missing)
    empty = tmp_path / "empty_preset"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="incomplete.*config.json"):
        TextEncoder(backbone_preset=str(empty))
    (empty / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="incomplete.*model.weights.h5"):
        TextEncoder(backbone_preset=str(empty))


@pytest.mark.parametrize("backbone", [None, "BertBackbone"])
def test_cached_features_encode_like_the_token_ids(backbone):
    # features() is the part trainable=none freezes; encode_features() the rest:
    # together they are the call, so cached features change nothing in inference.
    if backbone:
        encoder = TextEncoder(backbone_class=backbone, backbone_kwargs=BERT_KWARGS, hidden_dim=8)
        token_ids, padding_mask = _inputs(50)
    else:
        encoder = TextEncoder(**TINY)
        token_ids, padding_mask = _inputs()
    expected = _numpy(encoder(token_ids, padding_mask))
    features = encoder.features(token_ids, padding_mask, training=False)
    assert tuple(features.shape) == (2,) + tuple(encoder.features_shape((2, LENGTH)))[1:]
    got = _numpy(encoder.encode_inputs(
        {"token_ids": token_ids, "padding_mask": padding_mask, "text_features": features}))
    for key in ("tokens", "pooled"):
        np.testing.assert_allclose(got[key], expected[key], atol=1e-5)
    # Without cached features, encode_inputs is the call.
    plain = _numpy(encoder.encode_inputs({"token_ids": token_ids, "padding_mask": padding_mask}))
    np.testing.assert_allclose(plain["pooled"], expected["pooled"], atol=1e-6)
