"""Backbones of the encoders: from an instance, a class name or a preset, and back.

`ImageEncoder` and `TextEncoder` take a keras-hub backbone in the same three
ways, serialize it the same way and record which of their feature layers
train the same way; this module is that shared knowledge.
"""

import json
import os

import keras
import keras_hub


class PresetError(FileNotFoundError, ValueError):
    """A preset that is missing, incomplete, damaged or of the wrong kind; the message names it.

    A `FileNotFoundError` (a file or folder is not there) and a `ValueError`
    (what is there cannot be used), so callers may catch either.
    """


def _first_line(error, limit=300):
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:limit].rstrip(".")


def check_preset(preset):
    """Raises `PresetError` when a local preset path is not a directory.

    Handles with a scheme (`hf://`, `kaggle://`) go to keras-hub as they are;
    anything else must be a local folder, so a typo never turns into a
    download attempt of a built-in preset name.
    """
    if not isinstance(preset, str) or not preset:
        raise ValueError(f"A preset must be a non-empty string. Received: preset={preset}")
    if "://" not in preset and not os.path.isdir(preset):
        raise PresetError(
            f"The preset folder does not exist: {preset}. Received: preset={preset}"
        )


# Pixel mapping of encoders without a preset image converter: [0, 255] -> [0, 1].
DEFAULT_PIXEL_SCALE = 1.0 / 255.0
DEFAULT_PIXEL_OFFSET = 0.0


def preset_pixel_scaling(preset):
    """`(scale, offset)` that the preset's image converter applies to `[0, 255]` pixels.

    A local preset without `image_converter.json` takes the `pixel_scale` and
    `pixel_offset` its `mmkeras_preset.json` records (`python -m
    training.presets` writes them); one without either (e.g. saved from a bare
    backbone), or no preset, gives `[0, 1]` pixels. Per-channel values come
    back as tuples.
    """
    if preset is None:
        return DEFAULT_PIXEL_SCALE, DEFAULT_PIXEL_OFFSET
    if "://" not in preset and not os.path.exists(os.path.join(preset, "image_converter.json")):
        recorded = os.path.join(preset, "mmkeras_preset.json")
        if os.path.isfile(recorded):
            try:
                with open(recorded) as f:
                    metadata = json.load(f)
                return float(metadata["pixel_scale"]), float(metadata["pixel_offset"])
            except (ValueError, KeyError, TypeError) as e:
                raise PresetError(f"{recorded} gives no pixel_scale and pixel_offset ({_first_line(e)}), and "
                                  f"{preset} has no image_converter.json to take them from.") from e
        return DEFAULT_PIXEL_SCALE, DEFAULT_PIXEL_OFFSET
    converter = keras_hub.layers.ImageConverter.from_preset(preset)
    if converter is None:
        return DEFAULT_PIXEL_SCALE, DEFAULT_PIXEL_OFFSET

    def value(v, default):
        if v is None:
            return default
        return tuple(float(x) for x in v) if isinstance(v, (list, tuple)) else float(v)

    return value(converter.scale, 1.0), value(converter.offset, 0.0)


def _load_preset_backbone(preset, kind):
    """`Backbone.from_preset` with errors that say which file and what was expected."""
    check_preset(preset)
    if "://" not in preset:
        for name in ("config.json", "model.weights.h5"):
            path = os.path.join(preset, name)
            if not os.path.isfile(path):
                raise PresetError(
                    f"The preset folder {preset} is incomplete: {path} is missing "
                    "(a keras-hub preset holds config.json and model.weights.h5; "
                    "`python -m training.presets` builds the pretrained ones)."
                )
    try:
        backbone = keras_hub.models.Backbone.from_preset(preset)
    except (OSError, ValueError, KeyError, TypeError) as e:
        # A damaged or foreign config.json, weights that do not fit it, or
        # (for a handle) no network: never a model with random weights.
        raise PresetError(
            f"The preset {preset} cannot be loaded as a keras-hub backbone: {_first_line(e)}. A local folder "
            "needs a config.json that keras-hub reads and a model.weights.h5 written for it (`python -m "
            "training.presets --force` rebuilds the pretrained ones); an hf:// or kaggle:// handle needs "
            "network access."
        ) from e
    _check_kind(backbone, kind, f"the preset {preset}")
    return backbone


def _check_kind(backbone, kind, source):
    """Raises `ValueError` when an image encoder gets a text backbone or vice versa."""
    if kind is None or not getattr(backbone, "built", False):
        return
    inputs = getattr(backbone, "input", None)
    is_text = isinstance(inputs, dict) and "token_ids" in inputs
    is_image = not isinstance(inputs, dict) and len(getattr(inputs, "shape", ())) == 4
    if (kind == "image" and not is_image) or (kind == "text" and not is_text):
        raise ValueError(
            f"{source} is a {type(backbone).__name__}, not "
            f"{'an image' if kind == 'image' else 'a text'} backbone: "
            + ("an image backbone takes (batch, height, width, channels) images."
               if kind == "image" else "a text backbone takes a dict with token_ids.")
        )


def resolve_backbone(backbone, backbone_class, backbone_kwargs, backbone_preset, kind=None):
    """Returns the backbone layer named by at most one of three sources, or None.

    `kind` (`"image"` or `"text"`, optional) is checked on preset-built
    backbones, so a text preset given to the image encoder fails clearly.
    `backbone` may be a layer or its serialized dict. A dict together with
    `backbone_preset` is what `backbone_get_config` writes for a preset-built
    backbone: the dict (the architecture read from the preset) wins and the
    preset is not read again, so a saved model loads without the preset folder
    and takes its weights from the `.keras` file.
    """
    restored = isinstance(backbone, dict) and backbone_preset is not None
    sources = [s is not None for s in (backbone, backbone_class, backbone_preset)]
    if sum(sources) > 1 and not (restored and backbone_class is None):
        raise ValueError(
            "Pass at most one of `backbone`, `backbone_class` and "
            f"`backbone_preset`. Received: backbone={backbone}, "
            f"backbone_class={backbone_class}, backbone_preset={backbone_preset}"
        )
    if isinstance(backbone, dict):
        return keras.layers.deserialize(backbone)
    if backbone_class is not None:
        cls = getattr(keras_hub.models, backbone_class, None)
        if cls is None:
            raise ValueError(
                f"`backbone_class` must name a class in keras_hub.models. "
                f"Received: backbone_class={backbone_class}"
            )
        return cls(**(backbone_kwargs or {}))
    if backbone_preset is not None:
        return _load_preset_backbone(backbone_preset, kind)
    return backbone


def set_trainable(layer, trainable):
    """`layer.trainable = trainable`, reaching every sublayer and variable.

    Keras on TensorFlow skips an assignment whose value is the one the
    attribute already holds (`KerasAutoTrackable.__setattr__`). A keras-hub
    backbone deserialized with `"trainable": false` reads False while the
    layers its constructor built still train, and a layer frozen before its
    build() reads False while the sublayers that build() made still train;
    a plain assignment would leave both training, so this calls the setter.
    """
    keras.layers.Layer.trainable.fset(layer, bool(trainable))


def frozen_layer_names(layers):
    """Names of `layers` that do not train, for an encoder's `frozen_layers` config entry.

    Built layers without weights have nothing to freeze and are left out:
    their names may be Keras' numbered defaults (a functional backbone's
    `input_layer_3`), which differ in a backbone built again from its class
    or preset. Unbuilt layers (no weights yet) are named by their flag.
    """
    return [layer.name for layer in layers if (layer.weights or not layer.built) and not layer.trainable]


def freeze_layers(layers, names, owner):
    """Sets `trainable=False` on the `layers` named in `names` (an encoder's `frozen_layers`).

    Raises `ValueError` naming the layers `owner` does not have, e.g. a config
    saved with a different backbone.
    """
    by_name = {layer.name: layer for layer in layers}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise ValueError(
            f"`frozen_layers` names {len(unknown)} layers that {owner} does not have: {unknown[:5]}. "
            f"Its layers: {list(by_name)[:8]}{' ...' if len(by_name) > 8 else ''}"
        )
    for name in names:
        set_trainable(by_name[name], False)


def backbone_get_config(backbone, backbone_class):
    """The `"backbone"` config entry: None when `backbone_class` rebuilds it.

    Preset-built backbones are serialized too (see `resolve_backbone`), so
    reloading never depends on the preset folder.
    """
    if backbone is None or backbone_class is not None:
        return None
    return keras.layers.serialize(backbone)
