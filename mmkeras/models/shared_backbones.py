"""Ensemble members over one frozen preset: find their identical feature towers and hold them once.

Several runs over one frozen keras-hub preset (seeds of
`caption_flickr8k_pretrained`, VQA members with different fusions over a
frozen EfficientNet and MiniLM) hold identical backbones. An ensemble of
them runs each distinct tower once (`shared_feature_sources`) and holds it
once (`reusing_backbone`), so the `.keras` file and the SavedModel store it
once too. Works for `ImageEncoder` and `TextEncoder`: both have
`features`, `feature_layers`, `FEATURE_CONFIG_KEYS` and a `backbone`.
"""

import json

import keras
import numpy as np
from keras import ops


def _feature_weights(encoder):
    return [ops.convert_to_numpy(w) for layer in encoder.feature_layers() for w in layer.weights]


def same_features(a, b):
    """Whether built encoders `a` and `b` compute the same `features` (class, config and weights).

    Unbuilt encoders have no weights yet to compare: never the same.
    """
    if type(a) is not type(b) or not (a.built and b.built):
        return False
    config_a, config_b = a.get_config(), b.get_config()
    if any(config_a.get(k) != config_b.get(k) for k in type(a).FEATURE_CONFIG_KEYS):
        return False
    weights_a, weights_b = _feature_weights(a), _feature_weights(b)
    return len(weights_a) == len(weights_b) and all(
        x.shape == y.shape and np.array_equal(x, y) for x, y in zip(weights_a, weights_b)
    )


def shared_feature_sources(encoders):
    """For each encoder, the index of the first encoder with the same features.

    Compares configurations and weights, so call it on trained (built)
    encoders.
    """
    sources = []
    for i, encoder in enumerate(encoders):
        sources.append(next((j for j in range(i) if sources[j] == j and same_features(encoders[j], encoder)), i))
    return sources


def check_feature_sources(sources, count, name="feature_sources"):
    """`sources` (the argument `name`) as a list of ints, or every encoder its own when None.

    Raises `ValueError` naming `name` if malformed.
    """
    sources = list(range(count)) if sources is None else [int(s) for s in sources]
    if len(sources) != count or any(not 0 <= s <= i or sources[s] != s for i, s in enumerate(sources)):
        raise ValueError(
            f"`{name}` must give each encoder the index of an earlier (or the same) encoder that "
            f"computes its own features. Received: {name}={sources} for {count} encoders"
        )
    return sources


def reusing_backbone(encoder, source):
    """`encoder`, or a copy of it that runs `source`'s backbone layer (the same object).

    Keras saves and TensorFlow exports a layer reachable twice once. A built
    `encoder` gives a built copy with its weights (its own backbone's equal
    `source`'s: `shared_feature_sources` checked). Encoders without a
    backbone (a small stem, a text encoder's own blocks) are returned as
    they are.
    """
    if encoder.backbone is None or source.backbone is None or encoder.backbone is source.backbone:
        return encoder
    copy = copy_with(encoder, backbone=source.backbone, backbone_class=None, backbone_kwargs=None,
                     backbone_preset=None)
    # Where the backbone came from, for the copy's own config.
    copy.backbone_class, copy.backbone_kwargs, copy.backbone_preset = (
        encoder.backbone_class, encoder.backbone_kwargs, encoder.backbone_preset)
    return copy


def copy_with(layer, **config_changes):
    """A copy of `layer` from its config with `config_changes` (which may be layer objects to reuse).

    A built `layer` gives a built copy holding its weights (the reused
    layers' included: they must equal `layer`'s own).
    """
    config = layer.get_config()
    config.update(config_changes)
    copy = type(layer).from_config(config)
    if layer.built:
        copy.build_from_config(layer.get_build_config())
        copy.set_weights(layer.get_weights())
    return copy


def preprocessing_key(model):
    """What decides an image+text model's inputs from raw ones: its image size and text preprocessing.

    Models with equal keys read the same preprocessed inputs. The layer's
    name is left out: two loaded models may number the same preprocessing
    differently.
    """
    if model.text_preprocessor is None:
        return model.image_size, None
    config = keras.layers.serialize(model.text_preprocessor)
    config["config"] = {k: v for k, v in config["config"].items() if k != "name"}
    return model.image_size, json.dumps(config, sort_keys=True, default=str)


def tower_features(models, model_inputs, image_sources, text_sources):
    """For each image+text model, the `image_features` / `text_features` entries to add to its input dict.

    `model_inputs` holds one input dict per model (the same object for models
    that read the same preprocessed inputs). Each distinct tower
    (`image_sources` / `text_sources`, as `shared_feature_sources` gives
    them) runs once per distinct input dict, in inference mode; features an
    input dict already holds (cached) are left to it.
    """
    computed, entries = {}, []
    for i, inputs in enumerate(model_inputs):
        entry = {}
        for kind, sources in (("image", image_sources), ("text", text_sources)):
            if f"{kind}_features" in inputs:
                continue
            key = (kind, sources[i], id(inputs))
            if key not in computed:
                source = models[sources[i]]
                computed[key] = (
                    source.image_encoder.features(inputs["images"], training=False) if kind == "image"
                    else source.text_encoder.features(inputs["token_ids"], inputs.get("padding_mask"), training=False)
                )
            entry[f"{kind}_features"] = computed[key]
        entries.append(entry)
    return entries
