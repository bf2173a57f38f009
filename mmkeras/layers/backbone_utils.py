"""Backbones of the encoders: from an instance, a class name or a preset, and back.

`ImageEncoder` and `TextEncoder` take a keras-hub backbone in the same three
ways and serialize it the same way; this module is that shared knowledge.
"""

import os

import keras
import keras_hub


def check_preset(preset):
    """Raises `FileNotFoundError` when a local preset path is not a directory.

    Handles with a scheme (`hf://`, `kaggle://`) go to keras-hub as they are;
    anything else must be a local folder, so a typo never turns into a
    download attempt of a built-in preset name.
    """
    if not isinstance(preset, str) or not preset:
        raise ValueError(f"A preset must be a non-empty string. Received: preset={preset}")
    if "://" not in preset and not os.path.isdir(preset):
        raise FileNotFoundError(
            f"The preset folder does not exist: {preset}. Received: preset={preset}"
        )


def resolve_backbone(backbone, backbone_class, backbone_kwargs, backbone_preset):
    """Returns the backbone layer named by at most one of three sources, or None.

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
        check_preset(backbone_preset)
        return keras_hub.models.Backbone.from_preset(backbone_preset)
    return backbone


def backbone_get_config(backbone, backbone_class):
    """The `"backbone"` config entry: None when `backbone_class` rebuilds it.

    Preset-built backbones are serialized too (see `resolve_backbone`), so
    reloading never depends on the preset folder.
    """
    if backbone is None or backbone_class is not None:
        return None
    return keras.layers.serialize(backbone)
