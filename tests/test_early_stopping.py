"""Early stopping in the shared loop: stops on patience, restores the best weights, resumes."""

import json
import os

import keras
import numpy as np
import tensorflow as tf

from training import loop
from training.early_stopping import EarlyStopping


def make_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    return model


def make_dataset(examples_seen):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(8)
    return tf.distribute.get_strategy().experimental_distribute_dataset(ds.skip(examples_seen // 8))


def scripted_validation(model, scores, snapshots):
    calls = iter(scores)

    def validate():
        snapshots.append([w.copy() for w in model.get_weights()])
        return {"val_accuracy": next(calls), "val_loss": 0.0}

    return validate


def run(model, tmp_path, validate, early_stopping, steps=100):
    return loop.train(
        model, tf.distribute.get_strategy(), make_dataset, total_steps=steps, global_batch_size=8,
        checkpoint_dir=str(tmp_path / "checkpoints"), checkpoint_every=5, log_every=5, verbose=0,
        validate=validate, eval_every=5, early_stopping=early_stopping,
    )


def test_stops_after_patience_and_restores_the_best_weights(tmp_path):
    model = make_model()
    snapshots = []
    stopper = EarlyStopping("val_accuracy", 2, read_dir=str(tmp_path), write_dir=str(tmp_path))
    result = run(model, tmp_path, scripted_validation(model, [0.5, 0.7, 0.6, 0.65, 0.9], snapshots), stopper)
    # Best at the 2nd evaluation (step 10); two worse ones -> stop at step 20.
    assert result.stopped_early and result.steps == 20
    assert stopper.best_step == 10 and stopper.best == 0.7
    assert not all(np.allclose(a, b) for a, b in zip(model.get_weights(), snapshots[1]))
    assert stopper.restore_best(model) == 10
    for restored, best in zip(model.get_weights(), snapshots[1]):
        np.testing.assert_array_equal(restored, best)
    state = json.load(open(tmp_path / "early_stopping.json"))
    assert state == {"metric": "val_accuracy", "mode": "max", "best": 0.7, "best_step": 10,
                     "bad_evaluations": 2, "stopped": True}
    assert os.path.exists(tmp_path / "best.weights.h5")


def test_a_rerun_after_early_stopping_trains_nothing_and_restores_from_disk(tmp_path):
    model = make_model()
    stopper = EarlyStopping("val_accuracy", 1, read_dir=str(tmp_path), write_dir=str(tmp_path))
    snapshots = []
    run(model, tmp_path, scripted_validation(model, [0.8, 0.1], snapshots), stopper)
    assert stopper.stopped and stopper.best_step == 5

    again = make_model()
    stopper2 = EarlyStopping("val_accuracy", 1, read_dir=str(tmp_path), write_dir=str(tmp_path))
    result = run(again, tmp_path, scripted_validation(again, [], []), stopper2)
    assert result.steps == 10 and result.resumed_from == 10 and result.stopped_early
    assert stopper2.restore_best(again) == 5
    for restored, best in zip(again.get_weights(), snapshots[0]):
        np.testing.assert_allclose(restored, best)


def test_losses_are_minimised_and_a_missing_metric_is_named(tmp_path):
    model = make_model()
    stopper = EarlyStopping("val_loss", 3, read_dir=str(tmp_path))
    assert stopper.mode == "min"
    assert not stopper.update(5, {"val_loss": 1.0}, model)
    assert not stopper.update(10, {"val_loss": 0.5}, model)
    assert stopper.best == 0.5 and stopper.best_step == 10
    try:
        stopper.update(15, {"val_accuracy": 1.0}, model)
    except ValueError as e:
        assert "val_loss" in str(e) and "val_accuracy" in str(e)
    else:
        raise AssertionError("a missing metric must raise")


def test_a_nan_loss_stops_training_without_saving_it(tmp_path):
    model = make_model()
    run(model, tmp_path, None, None, steps=10)
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-10")

    def nan_dataset(examples_seen):  # as a NaN in the inputs or in preset weights gives
        x = np.full((8, 3), np.nan, "float32")
        ds = tf.data.Dataset.from_tensor_slices((x, x[:, :1])).repeat().batch(8)
        return tf.distribute.get_strategy().experimental_distribute_dataset(ds)

    try:
        loop.train(model, tf.distribute.get_strategy(), nan_dataset, total_steps=20, global_batch_size=8,
                   checkpoint_dir=str(tmp_path / "checkpoints"), checkpoint_every=5, log_every=5, verbose=0)
    except loop.Diverged as e:
        message = str(e)
    else:
        raise AssertionError("a NaN loss did not stop training")
    assert "loss nan" in message and "step 15" in message and "ckpt-10" in message
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-10")
