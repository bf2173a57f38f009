"""DualEncoder: the layer checks, the two losses against NumPy references, the
temperature's clip and weight-decay exclusion, and the global-batch negatives
under 2 logical CPU replicas."""

import math
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from mmkeras.layers import ImageEncoder, TextEncoder
from mmkeras.models import contrastive_losses
from mmkeras.models.dual_encoder import DualEncoder, build_dual_encoder
from tests.layer_harness import run_config_round_trip, run_save_load
from tests.training_fixtures import REPO

TINY = dict(image_size=32, sequence_length=6, vocabulary_size=30, hidden_dim=16, num_heads=2,
            intermediate_dim=32, dropout=0.0, projection_dim=8,
            image_encoder_kwargs={"stem_filters": (8, 16)}, text_encoder_kwargs={"num_layers": 1})


def batch(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "images": rng.uniform(0, 255, (n, 32, 32, 3)).astype("float32"),
        "token_ids": rng.integers(1, 30, (n, 6)).astype("int32"),
        "padding_mask": np.ones((n, 6), "int32"),
    }


def tiny(**kwargs):
    keras.utils.set_random_seed(0)
    return build_dual_encoder(**{**TINY, **kwargs})


def numpy_clip_loss(image, text, scale):
    logits = scale * image @ text.T

    def cross_entropy(z):
        z = z - z.max(axis=1, keepdims=True)
        return -np.mean(np.diag(z) - np.log(np.exp(z).sum(axis=1)))

    return 0.5 * (cross_entropy(logits) + cross_entropy(logits.T))


def numpy_sigmoid_loss(image, text, scale, bias):
    logits = scale * image @ text.T + bias
    signs = 2 * np.eye(len(image)) - 1
    return -np.sum(np.log(1 / (1 + np.exp(-signs * logits)))) / len(image)


@pytest.mark.parametrize("loss", ["infonce", "sigmoid"])
def test_trains_round_trips_and_saves(loss, tmp_path):
    model = tiny(loss=loss)
    x = batch()
    out = model(x)
    for key in ("image_embeddings", "text_embeddings"):
        assert out[key].shape == (6, 8)
        np.testing.assert_allclose(np.linalg.norm(out[key], axis=-1), 1.0, atol=1e-5)
    model.compile(optimizer=keras.optimizers.AdamW(1e-2))
    before = [w.numpy().copy() for w in model.trainable_weights]
    history = model.fit(tf.data.Dataset.from_tensors(x), epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert set(history.history) >= {"loss", "accuracy"}
    changed = [not np.allclose(b, w.numpy()) for b, w in zip(before, model.trainable_weights)]
    assert all(changed[:3]) and sum(changed) > len(changed) // 2
    clone = run_config_round_trip(model)
    assert clone.loss_name == loss and clone.projection_dim == 8
    restored = run_save_load(model, x, tmp_path, call=lambda m, v: m(v))
    assert float(restored.log_logit_scale.numpy()) == pytest.approx(float(model.log_logit_scale.numpy()))


def test_losses_match_numpy_references():
    model = tiny()
    x = batch()
    out = model(x)
    image, text = out["image_embeddings"].numpy(), out["text_embeddings"].numpy()
    scale = 1 / 0.07
    assert float(model.logit_scale) == pytest.approx(scale, rel=1e-5)
    np.testing.assert_allclose(float(model.compute_loss(x, None, out)), numpy_clip_loss(image, text, scale),
                               rtol=1e-4)
    sig = tiny(loss="sigmoid")
    out = sig(x)
    image, text = out["image_embeddings"].numpy(), out["text_embeddings"].numpy()
    assert float(sig.logit_scale) == pytest.approx(10.0, rel=1e-5)
    np.testing.assert_allclose(float(sig.compute_loss(x, None, out)),
                               numpy_sigmoid_loss(image, text, 10.0, -10.0), rtol=1e-4)
    # Aligned embeddings score lower than shuffled ones.
    aligned = contrastive_losses.infonce_terms(image, image, image, image, 10.0, np.eye(6, dtype=bool))
    shuffled = contrastive_losses.infonce_terms(image, image[::-1], image, image[::-1], 10.0, np.eye(6, dtype=bool))
    assert float(np.mean(aligned)) < float(np.mean(shuffled))


def test_identical_captions_are_positives_of_each_other():
    tokens = np.array([[5, 6, 0], [7, 8, 0], [5, 6, 0]], "int32")
    mask = np.asarray(contrastive_losses.positive_mask(tokens, tokens, 0))
    np.testing.assert_array_equal(mask, [[1, 0, 1], [0, 1, 0], [1, 0, 1]])
    # Rows of replica 1 (offset 2) against a global batch of 4.
    all_tokens = np.array([[1, 1], [2, 2], [3, 3], [4, 4]], "int32")
    mask = np.asarray(contrastive_losses.positive_mask(all_tokens[2:], all_tokens, 2))
    np.testing.assert_array_equal(mask, [[0, 0, 1, 0], [0, 0, 0, 1]])
    # The InfoNCE target is shared between duplicates: a model that cannot
    # tell rows 0 and 2 apart is not penalised for it.
    x = batch(3)
    x["token_ids"] = np.repeat(x["token_ids"][:1], 3, axis=0)
    x["token_ids"][1, 0] = 29
    model = tiny()
    out = model(x)
    terms = contrastive_losses.infonce_terms(
        out["image_embeddings"], out["text_embeddings"], out["image_embeddings"], out["text_embeddings"],
        model.logit_scale, contrastive_losses.positive_mask(x["token_ids"], x["token_ids"], 0))
    assert np.isfinite(np.asarray(terms)).all()


def test_temperature_is_clipped_at_100_and_not_weight_decayed():
    model = tiny()
    model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=0.1))
    model.log_logit_scale.assign(8.0)
    model.fit(tf.data.Dataset.from_tensors(batch()), epochs=1, verbose=0)
    assert float(model.log_logit_scale.numpy()) == pytest.approx(math.log(100.0), rel=1e-6)
    assert float(model.logit_scale) == pytest.approx(100.0, rel=1e-5)
    # Keras' AdamW keeps the exclusion per variable.
    assert not model.optimizer._use_weight_decay(model.log_logit_scale)
    assert model.optimizer._use_weight_decay(model.image_projection.kernel)


@pytest.mark.parametrize("kwargs, message", [
    ({"loss": "triplet"}, "loss"),
    ({"projection_dim": 0}, "projection_dim"),
    ({"logit_scale_init": 1000.0}, "logit_scale_init"),
])
def test_misconfiguration_names_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DualEncoder(ImageEncoder(hidden_dim=8, stem_filters=(4,)),
                    TextEncoder(vocabulary_size=10, sequence_length=4, hidden_dim=8, num_layers=1, num_heads=2,
                                intermediate_dim=8), **kwargs)


REPLICA_SCRIPT = textwrap.dedent("""
    import json, os
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import numpy as np
    from tests.test_dual_encoder import batch, tiny

    x = batch(8)
    x["token_ids"][5] = x["token_ids"][2]  # a duplicate caption across the two replicas' halves
    results = {}
    for loss in ("infonce", "sigmoid"):
        single = tiny(loss=loss)
        with tf.GradientTape() as tape:
            value = single.compute_loss(x, None, single(x))
        grads = [tf.convert_to_tensor(g).numpy() for g in tape.gradient(value, single.trainable_variables)]
        # What each replica would compute from its own half only.
        halves = [{k: v[i * 4:(i + 1) * 4] for k, v in x.items()} for i in range(2)]
        local = float(np.mean([single.compute_loss(h, None, single(h)).numpy() for h in halves]))

        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        with strategy.scope():
            mirrored = tiny(loss=loss)

        @tf.function
        def step(data):
            def replica(d):
                with tf.GradientTape() as tape:
                    value = mirrored.compute_loss(d, None, mirrored(d))
                grads = tape.gradient(value, mirrored.trainable_variables)
                return value, [tf.convert_to_tensor(g) for g in grads]
            value, grads = strategy.run(replica, args=(data,))
            return strategy.reduce("SUM", value, None), [strategy.reduce("SUM", g, None) for g in grads]

        data = next(iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(x))))
        value2, grads2 = step(data)
        results[loss] = {
            "single": float(value), "mirrored": float(value2), "local_only": local,
            "max_grad_diff": max(float(np.max(np.abs(a - b.numpy()))) for a, b in zip(grads, grads2)),
            "max_grad": max(float(np.max(np.abs(a))) for a in grads),
        }
    print(json.dumps(results))
""")


@pytest.mark.slow
def test_two_replicas_contrast_the_global_batch_with_single_device_gradients():
    out = subprocess.run([sys.executable, "-c", REPLICA_SCRIPT], cwd=REPO, capture_output=True, text=True,
                         timeout=600, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-3000:]
    import json

    results = json.loads(out.stdout.strip().splitlines()[-1])
    for loss, r in results.items():
        assert r["mirrored"] == pytest.approx(r["single"], rel=1e-5), (loss, r)
        assert r["max_grad_diff"] <= 1e-5 * max(r["max_grad"], 1.0), (loss, r)
        # Per-replica negatives only would give another loss: the gather matters.
        assert abs(r["local_only"] - r["single"]) > 1e-3, (loss, r)
