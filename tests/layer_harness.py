"""The three checks every mmkeras layer and model gets.

1. build + call, symbolically (KerasTensors) and eagerly, and one fit step;
2. config round trip with non-default arguments;
3. save / load with equal outputs (multi-input layers inside a functional model),
   plus, for layers that live inside subclassed models, a rebuild from
   `get_build_config()` alone.
"""

import json
import os

import keras
import numpy as np
from keras import ops


def _to_numpy(x):
    if isinstance(x, dict):
        return {k: _to_numpy(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_numpy(v) for v in x]
    return ops.convert_to_numpy(x)


def _first_array(x):
    while isinstance(x, (dict, list, tuple)):
        x = list(x.values())[0] if isinstance(x, dict) else x[0]
    return x


def symbolic_inputs(inputs):
    """One `keras.Input` per array, same shape, dtype and batch size."""
    return [keras.Input(shape=x.shape[1:], dtype=str(x.dtype), batch_size=x.shape[0]) for x in inputs]


def run_layer_checks(cls, init_kwargs, inputs, call_kwargs=None, expected_shape=None):
    """Symbolic call, eager call, one training step through a wrapping model."""
    call_kwargs = call_kwargs or {}
    layer = cls(**init_kwargs)
    inputs = inputs if isinstance(inputs, (list, tuple)) else [inputs]
    symbolic = symbolic_inputs(inputs)
    symbolic_out = layer(*symbolic, **call_kwargs)
    eager_out = layer(*inputs, **call_kwargs)
    sym_first, eager_first = _first_array(symbolic_out), _first_array(eager_out)
    assert tuple(sym_first.shape) == tuple(eager_first.shape)
    if expected_shape is not None:
        assert tuple(eager_first.shape) == tuple(expected_shape)

    # One fit step must change trainable weights: gradients flow.
    outputs = layer(*symbolic, **call_kwargs)
    model = keras.Model(symbolic, _first_array(outputs))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    before = [w.numpy().copy() for w in layer.trainable_weights]
    target = np.random.default_rng(0).normal(size=eager_first.shape).astype("float32")
    model.fit([np.asarray(x) for x in inputs], target, epochs=1, batch_size=inputs[0].shape[0], verbose=0)
    changed = [not np.allclose(b, w.numpy()) for b, w in zip(before, layer.trainable_weights)]
    assert any(changed), "a fit step changed no trainable weight"
    return layer


def run_config_round_trip(layer):
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    return clone


def run_save_load(obj, inputs, tmp_path, call=None):
    """Saves `obj` (layer or model) in a model to .keras, reloads, equal outputs.

    A layer with one input is saved inside a `Sequential`; a layer with
    several positional inputs (a list or tuple of arrays) inside a functional
    model over one `keras.Input` per array. Returns the restored layer or model.
    """
    call = call or (lambda o, x: o(*x) if isinstance(x, (list, tuple)) else o(x))
    expected = _to_numpy(call(obj, inputs))
    if isinstance(obj, keras.Model):
        path = os.path.join(tmp_path, "model.keras")
        obj.save(path)
        restored = keras.saving.load_model(path)
    elif isinstance(inputs, (list, tuple)):
        symbolic = symbolic_inputs(inputs)
        holder = keras.Model(symbolic, obj(*symbolic))
        path = os.path.join(tmp_path, "layer.keras")
        holder.save(path)
        restored = keras.saving.load_model(path).get_layer(obj.name)
    else:
        path = os.path.join(tmp_path, "layer.keras")
        keras.Sequential([obj]).save(path)
        restored = keras.saving.load_model(path).layers[0]
    if not isinstance(obj, keras.Model):
        assert type(restored) is type(obj)
    actual = _to_numpy(call(restored, inputs))
    np.testing.assert_allclose(_first_array(actual), _first_array(expected), atol=1e-5)
    return restored


def run_build_from_config(layer, inputs, call=None):
    """Recreates `layer` from its JSON serialization alone, equal outputs.

    This is how Keras restores a layer held by a subclassed model: the
    serialization carries `get_build_config()`, and `build_from_config` must
    create every weight before any call, or the saved weights cannot load.
    """
    call = call or (lambda o, x: o(*x) if isinstance(x, (list, tuple)) else o(x))
    config = json.loads(json.dumps(keras.layers.serialize(layer)))
    assert config.get("build_config"), "the layer records no build config"
    clone = keras.layers.deserialize(config)
    assert clone.built, "build_from_config did not build the layer"
    assert len(clone.weights) == len(layer.weights)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(
        _first_array(_to_numpy(call(clone, inputs))),
        _first_array(_to_numpy(call(layer, inputs))),
        atol=1e-5,
    )
    return clone
