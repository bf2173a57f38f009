"""FusionClassifier with every fusion: the shared checks, missing modalities, multi-label."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from mmkeras.data.text_preprocessor import text_preprocessor_from_vocabulary
from mmkeras.data.tokenizer import learn_vocabulary
from mmkeras.layers import FUSION_LAYERS
from mmkeras.models import FusionClassifier, build_fusion_classifier

TEXTS = ["what colour is the circle", "is there a red square", "what shape is blue", "how many shapes"]
LABELS = ["red", "blue", "yes", "no"]


@pytest.fixture(scope="module")
def preprocessor():
    return text_preprocessor_from_vocabulary(learn_vocabulary(TEXTS * 5, 60), 8)


def make(preprocessor, fusion, multi_label=False, **kwargs):
    keras.utils.set_random_seed(0)
    args = dict(
        num_classes=len(LABELS), image_size=32, sequence_length=8,
        vocabulary_size=preprocessor.tokenizer.vocabulary_size(), hidden_dim=16, num_heads=2,
        intermediate_dim=32, dropout=0.0, fusion=fusion, label_names=LABELS, multi_label=multi_label,
        text_preprocessor=preprocessor, image_encoder_kwargs={"stem_filters": (8, 16), "convs_per_stage": 1},
        text_encoder_kwargs={"num_layers": 1},
    )
    args.update(kwargs)
    return build_fusion_classifier(**args)


def batch(preprocessor, n=4, seed=0):
    rng = np.random.default_rng(seed)
    text = preprocessor(tf.constant((TEXTS * n)[:n]))
    return {
        "images": rng.uniform(0, 255, (n, 32, 32, 3)).astype("float32"),
        "token_ids": text["token_ids"].numpy(),
        "padding_mask": text["padding_mask"].numpy(),
    }


@pytest.mark.parametrize("fusion", sorted(FUSION_LAYERS))
def test_every_fusion_trains_round_trips_and_saves(preprocessor, fusion, tmp_path):
    model = make(preprocessor, fusion)
    x = batch(preprocessor)
    logits = model(x)["logits"]
    assert logits.shape == (4, len(LABELS))

    # One fit step moves every trainable weight group of the model's parts.
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    before = {w.path: w.numpy().copy() for w in model.trainable_weights}
    model.fit(x, np.array([0, 1, 2, 3]), batch_size=4, epochs=1, verbose=0)
    moved = {w.path for w in model.trainable_weights if not np.allclose(before[w.path], w.numpy())}
    for part in ("image_encoder", "text_encoder", "fusion"):
        assert any(part in p for p in moved), f"{part} did not train"

    config = model.get_config()
    clone = FusionClassifier.from_config(config)
    assert clone.get_config() == config

    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_allclose(restored(x)["logits"], model(x)["logits"], atol=1e-5)
    # The tokenizer travels with the model.
    np.testing.assert_array_equal(
        restored.text_preprocessor(tf.constant(TEXTS))["token_ids"], model.text_preprocessor(tf.constant(TEXTS))["token_ids"]
    )


def test_mlp_head_trains_round_trips_and_saves(preprocessor, tmp_path):
    model = make(preprocessor, "bilinear", head_hidden_dim=12)
    assert model.head_hidden.units == 12 and model.head.kernel.shape == (12, len(LABELS))
    x = batch(preprocessor)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    before = model.head_hidden.kernel.numpy().copy()
    model.fit(x, np.array([0, 1, 2, 3]), batch_size=4, epochs=1, verbose=0)
    assert not np.allclose(before, model.head_hidden.kernel.numpy())
    config = model.get_config()
    assert config["head_hidden_dim"] == 12
    assert FusionClassifier.from_config(config).get_config() == config
    path = os.path.join(tmp_path, "mlp_head.keras")
    model.save(path)
    np.testing.assert_allclose(keras.saving.load_model(path)(x)["logits"], model(x)["logits"], atol=1e-5)


@pytest.mark.parametrize("fusion", sorted(FUSION_LAYERS))
def test_a_missing_modality_is_ignored(preprocessor, fusion):
    model = make(preprocessor, fusion)
    x, other = batch(preprocessor, seed=0), batch(preprocessor, seed=1)
    no_image = {"image_present": np.zeros(4, "float32")}
    changed_image = dict(x, images=other["images"])
    np.testing.assert_allclose(model(dict(x, **no_image))["logits"], model(dict(changed_image, **no_image))["logits"],
                               atol=1e-5)
    no_text = {"text_present": np.zeros(4, "float32")}
    changed_text = dict(x, token_ids=x["token_ids"][::-1], padding_mask=x["padding_mask"][::-1])
    np.testing.assert_allclose(model(dict(x, **no_text))["logits"], model(dict(changed_text, **no_text))["logits"],
                               atol=1e-5)
    # ... and a present one is not: the model does look at both inputs.
    assert not np.allclose(model(x)["logits"], model(changed_image)["logits"], atol=1e-5)


def test_modality_dropout_drops_one_modality_for_the_given_fraction(preprocessor):
    model = make(preprocessor, "concat", modality_dropout=0.4)
    inputs = {}
    image, text = (np.asarray(v) for v in model._presence(inputs, 4000, training=True))
    dropped = (image == 0) | (text == 0)
    assert abs(dropped.mean() - 0.4) < 0.03
    assert not np.any((image == 0) & (text == 0)), "both modalities dropped for one example"
    assert abs((image == 0).mean() - 0.2) < 0.03 and abs((text == 0).mean() - 0.2) < 0.03
    image, text = (np.asarray(v) for v in model._presence(inputs, 100, training=False))
    assert image.min() == 1 and text.min() == 1


def test_multi_label_uses_sigmoids_and_per_label_thresholds(preprocessor):
    model = make(preprocessor, "gated", multi_label=True)
    x = batch(preprocessor)
    probabilities = np.asarray(model.probabilities(model(x)["logits"]))
    assert probabilities.shape == (4, 4) and not np.allclose(probabilities.sum(-1), 1.0)
    model.thresholds.assign([0.0, 1.0, 0.0, 1.0])
    decisions = np.asarray(model.decisions(probabilities))
    np.testing.assert_array_equal(decisions, np.tile([1, 0, 1, 0], (4, 1)))
    targets = np.array([[1, 0, 1, 0]] * 4, "float32")
    # Binary cross-entropy averaged over labels and examples.
    logits = model(x)["logits"]
    expected = keras.ops.mean(keras.losses.binary_crossentropy(
        targets[..., None], keras.ops.convert_to_numpy(logits)[..., None], from_logits=True))
    np.testing.assert_allclose(model.compute_loss(x, targets, {"logits": logits}), expected, rtol=1e-5)
    model.compile(optimizer="adam")
    history = model.fit(x, targets, epochs=2, batch_size=4, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"fusion": "nope"}, "fusion='nope'"),
        ({"fusion": "weighted_sum", "fusion_weights": (0.7, 0.7)}, "weights"),
        ({"fusion": "gcn", "fusion_num_layers": 0}, "num_layers=0"),
        ({"fusion": "concat", "modality_dropout": 1.0}, "modality_dropout=1.0"),
        ({"fusion": "concat", "head_hidden_dim": -2}, "head_hidden_dim=-2"),
    ],
)
def test_misconfiguration_fails_at_construction_naming_the_argument(preprocessor, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make(preprocessor, **kwargs)


def test_classify_raw_inputs(preprocessor):
    model = make(preprocessor, "cross_attention")
    rng = np.random.default_rng(0)
    jpegs = [tf.io.encode_jpeg(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).numpy() for _ in range(2)]
    labels, probabilities = model.classify(tf.constant(jpegs), tf.constant(TEXTS[:2]))
    assert len(labels) == 2 and set(labels) <= set(LABELS)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, rtol=1e-5)
    assert [LABELS[i] for i in probabilities.argmax(-1)] == labels
