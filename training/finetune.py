"""Fine-tuning controls shared by every task: which encoder weights train.

`model.image_encoder.trainable` and `model.text_encoder.trainable` take:

- `all`: everything trains (the default);
- `none`: the encoder's feature extractor (conv stem or keras-hub backbone,
  token embedding and Transformer blocks) is frozen; its projection to
  `hidden_dim` and its output norm still train, since they adapt the features
  to the rest of the model;
- `top:N`: only the top N blocks of the feature extractor train (conv-stem
  stages, backbone layers that hold weights, or Transformer layers), plus the
  projection.

Frozen layers also run in inference mode: Keras runs a non-trainable
`BatchNormalization` with its moving statistics, as fine-tuning wants.
Call `apply_trainable` before `compile`, so the optimizer sees the final set
of trainable variables.

A fully frozen image feature extractor computes the same features for an
image at every visit, so `image_feature_extractor` hands it to the training
pipeline, which runs it once per image and caches the result. A fully frozen
text tower (e.g. MiniLM with `model.text_encoder.trainable=none`) does the same
per distinct text (`text_feature_extractor`, `text_feature_lookup`).
"""

import re

from absl import logging

from mmkeras.data import text_features
from mmkeras.layers.backbone_utils import set_trainable


def parse_trainable(value, where="trainable"):
    """`"all"` -> None, `"none"` -> 0, `"top:N"` -> N; ValueError otherwise."""
    text = str(value).strip().lower()
    if text == "all":
        return None
    if text == "none":
        return 0
    match = re.fullmatch(r"top:(\d+)", text)
    if not match:
        raise ValueError(f"`{where}` must be `all`, `none` or `top:N`. Received: {where}={value!r}")
    return int(match.group(1))


def _with_weights(layers):
    return [layer for layer in layers if layer.weights]


def feature_blocks(encoder):
    """The encoder's feature-extractor blocks, bottom first (lists of layers).

    Works for `ImageEncoder` (stem stages or backbone layers) and
    `TextEncoder` (embedding, then each Transformer layer, or backbone layers).
    """
    layers = encoder.feature_layers()
    if encoder.backbone is not None:
        return [[layer] for layer in _with_weights(layers)]
    if hasattr(encoder, "stem"):
        # Stage i of the conv stem is the layers named stem_<i>_*.
        stages = {}
        for layer in layers:
            stages.setdefault(layer.name.split("_")[1], []).append(layer)
        return [stages[key] for key in sorted(stages, key=int)]
    return [[layer] for layer in layers]


def apply_trainable(encoder, value, where="trainable"):
    """Sets which of `encoder`'s blocks train; returns the number of frozen blocks."""
    top = parse_trainable(value, where)
    blocks = feature_blocks(encoder)
    if top is None:
        return 0
    if not blocks:
        raise ValueError(f"`{where}`: {type(encoder).__name__} {encoder.name!r} has no blocks to freeze.")
    frozen = blocks[: max(len(blocks) - top, 0)]
    for block in frozen:
        for layer in block:
            set_trainable(layer, False)
    backbone = getattr(encoder, "backbone", None)
    if top == 0 and backbone is not None:
        # Frozen as a whole (`backbone_trainable=False` in the encoder's config):
        # it also runs in inference mode, as its cached features were computed.
        # Partial freezing is saved too, as the encoder's `frozen_layers`; either
        # way a reloaded model trains what the run trained, and its optimizer
        # state (built for those weights) loads back.
        encoder.backbone_trainable = False
        set_trainable(backbone, False)
    return len(frozen)


def is_frozen(encoder):
    """True when no weight of the encoder's feature-extractor blocks trains.

    A built layer trains if it has trainable weights (a weightless one never
    does, whatever its flag: reloaded models do not record it); an unbuilt
    one, which has no weights yet, if its flag says so.
    """
    blocks = feature_blocks(encoder)
    return bool(blocks) and not any(
        layer.trainable_weights if layer.built else layer.trainable for block in blocks for layer in block)


def image_feature_extractor(image_encoder, data_cfg):
    """`ImageEncoder.features` in inference mode when it can be cached, else None.

    Cached when the encoder's feature extractor is frozen (`trainable=none`),
    `data.cache_image_features` and `data.cache` are on, and `data.augment`
    is off or `data.feature_views` caches several augmented views per image.
    """
    if image_encoder is None or not is_frozen(image_encoder):
        return None
    if not (data_cfg.cache_image_features and data_cfg.cache) or (data_cfg.augment and data_cfg.feature_views < 2):
        logging.info("Frozen image encoder, features not cached (data.augment without data.feature_views, "
                     "or caching off).")
        return None
    return lambda images: image_encoder.features(images, training=False)


def text_feature_extractor(text_encoder, data_cfg):
    """`TextEncoder.features` in inference mode when it can be cached, else None.

    Cached when the text tower's feature extractor (embedding and blocks, or
    the keras-hub backbone) is frozen and `data.cache_text_features` is on.
    """
    if text_encoder is None or not is_frozen(text_encoder):
        return None
    if not data_cfg.cache_text_features:
        logging.info("Frozen text encoder, features not cached (data.cache_text_features=false).")
        return None
    return lambda token_ids, padding_mask: text_encoder.features(token_ids, padding_mask, training=False)


def text_feature_lookup(extractor, texts, text_preprocessor, data_cfg):
    """`text_features.feature_lookup` of `texts`, or None (no extractor, or over the memory limit)."""
    if extractor is None:
        return None
    try:
        return text_features.feature_lookup(
            texts, text_preprocessor, extractor, max_bytes=data_cfg.max_text_feature_cache_mb * 2**20)
    except text_features.FeatureCacheTooLargeError as e:
        logging.warning("%s Encoding the texts at every step instead (raise data.max_text_feature_cache_mb "
                        "to cache them).", e)
        return None


def count_params(weights):
    return int(sum(int(w.numpy().size) for w in weights))
