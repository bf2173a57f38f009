"""Image encoder: pixels to a grid of tokens plus a pooled vector."""

import math

import keras
import keras_hub
from keras import ops

from mmkeras.layers.backbone_utils import backbone_get_config
from mmkeras.layers.backbone_utils import freeze_layers
from mmkeras.layers.backbone_utils import frozen_layer_names
from mmkeras.layers.backbone_utils import preset_pixel_scaling
from mmkeras.layers.backbone_utils import resolve_backbone
from mmkeras.layers.backbone_utils import set_trainable


STEM_NORMS = ("batch", "group")


def _channel_values(name, value):
    """A float, or a tuple of 3 per-channel floats (RGB)."""
    if isinstance(value, (list, tuple)):
        if len(value) != 3:
            raise ValueError(f"`{name}` must be a float or 3 per-channel floats. Received: {name}={value}")
        return tuple(float(v) for v in value)
    return float(value)


def _config_value(value):
    return list(value) if isinstance(value, tuple) else value


@keras.saving.register_keras_serializable(package="mmkeras")
class ImageEncoder(keras.layers.Layer):
    """Encodes images into grid tokens `(batch, tokens, hidden_dim)` and a pooled vector.

    By default a small convolutional stem trained from scratch (stride-2 stages
    of two 3x3 convolutions with batch norm), which is what a 2-core CPU can
    train in minutes. Alternatively any keras-hub vision backbone, given as an
    instance, as a class name plus constructor arguments, or as a keras-hub
    preset directory on local disk (pretrained weights are loaded from it). Its
    feature map or token sequence is projected to `hidden_dim`.

    Grid tokens get learned position embeddings so that attention can tell
    left from right, which spatial captions ("a circle left of a square") need.

    Args:
        hidden_dim: int, width of the output tokens.
        stem_filters: tuple of ints, filters of each stride-2 stage of the
            default stem. A 64 px image with 3 stages gives an 8x8 token grid.
        convs_per_stage: int (1-3), 3x3 convolutions per stage; the first has
            stride 2.
        stem_norm: `"batch"` (batch normalization) or `"group"` (group
            normalization, 8 groups): the stem's normalization. Contrastive
            training wants `"group"`: measured on the synthetic dual encoder
            after 329 steps, batch-norm moving averages lagged the fast-moving
            weights so far that in-batch retrieval accuracy fell from 0.92
            (batch statistics) to 0.24 (moving averages) on validation
            batches; group normalization has no train/inference difference.
        backbone: optional keras-hub `Backbone` (or any Keras layer mapping
            images to a feature map or token sequence) used instead of the stem.
        backbone_class: optional name of a `keras_hub.models` backbone class,
            e.g. `"ResNetBackbone"`, built with `backbone_kwargs`.
        backbone_kwargs: dict of constructor arguments for `backbone_class`.
        backbone_preset: optional path of a keras-hub preset directory. The
            config keeps the backbone's own config next to this path, so a
            saved model reloads (weights from the `.keras` file) without it.
        backbone_trainable: bool, whether backbone weights are fine-tuned.
        frozen_layers: optional names of layers of the backbone (its
            `layers`) or of the stem that do not train. `get_config` records
            the frozen ones, so a model saved after
            `training.finetune.apply_trainable(encoder, "top:N")` reloads with
            the same layers frozen.
        pixel_scale, pixel_offset: floats, or one float per channel; images
            arrive in `[0, 255]` and are mapped to
            `images * pixel_scale + pixel_offset` first. None (the default):
            what the preset's image converter does (e.g. `[-1, 1]` for
            EfficientNet-Lite0, ImageNet mean/std for ResNets), else `[0, 1]`.
        dropout: float, dropout on the output tokens.
        **kwargs: base layer arguments.

    Call arguments:
        images: float tensor `(batch, height, width, 3)` in `[0, 255]`, with a
            static height and width.
        training: bool.

    Returns:
        A dict with `"tokens"` `(batch, num_tokens, hidden_dim)` and `"pooled"`
        `(batch, hidden_dim)`.

    `call` is `encode_features(features(images))`: the split lets a training
    pipeline run a frozen `features` once per image and cache its output
    (models take it as `inputs["image_features"]`, see `encode_inputs`).

    Example:
    >>> encoder = ImageEncoder(hidden_dim=16, stem_filters=(8, 16))
    >>> outputs = encoder(keras.random.uniform((2, 32, 32, 3), maxval=255))
    >>> tuple(outputs["tokens"].shape), tuple(outputs["pooled"].shape)
    ((2, 64, 16), (2, 16))
    """

    # The config entries that, with the feature layers' weights, decide
    # `features(images)`: ensembles run and hold encoders equal in these once.
    FEATURE_CONFIG_KEYS = ("stem_filters", "convs_per_stage", "stem_norm", "backbone_class", "backbone_kwargs",
                           "backbone_preset", "pixel_scale", "pixel_offset")

    def __init__(
        self,
        hidden_dim=128,
        stem_filters=(32, 64, 128),
        convs_per_stage=2,
        stem_norm="batch",
        backbone=None,
        backbone_class=None,
        backbone_kwargs=None,
        backbone_preset=None,
        backbone_trainable=True,
        frozen_layers=None,
        pixel_scale=None,
        pixel_offset=None,
        dropout=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(hidden_dim, int) or hidden_dim < 1:
            raise ValueError(f"`hidden_dim` must be a positive int. Received: hidden_dim={hidden_dim}")
        stem_filters = tuple(int(f) for f in stem_filters)
        if not stem_filters or min(stem_filters) < 1:
            raise ValueError(
                f"`stem_filters` must be non-empty and positive. Received: stem_filters={stem_filters}"
            )
        self.hidden_dim = hidden_dim
        self.stem_filters = stem_filters
        if convs_per_stage not in (1, 2, 3):
            raise ValueError(
                f"`convs_per_stage` must be 1, 2 or 3. Received: convs_per_stage={convs_per_stage}"
            )
        self.convs_per_stage = convs_per_stage
        if stem_norm not in STEM_NORMS:
            raise ValueError(f"`stem_norm` must be one of {STEM_NORMS}. Received: stem_norm={stem_norm!r}")
        self.stem_norm = stem_norm
        self.backbone_class = backbone_class
        self.backbone_kwargs = dict(backbone_kwargs or {})
        self.backbone_preset = backbone_preset
        self.backbone_trainable = backbone_trainable
        self.dropout = dropout

        backbone = resolve_backbone(
            backbone, backbone_class, self.backbone_kwargs, backbone_preset, kind="image"
        )
        if pixel_scale is None or pixel_offset is None:
            scale, offset = preset_pixel_scaling(backbone_preset)
            pixel_scale = scale if pixel_scale is None else pixel_scale
            pixel_offset = offset if pixel_offset is None else pixel_offset
        self.pixel_scale = _channel_values("pixel_scale", pixel_scale)
        self.pixel_offset = _channel_values("pixel_offset", pixel_offset)
        self.backbone = backbone
        if backbone is not None:
            set_trainable(backbone, backbone_trainable)
            self.stem = []
        else:
            self.stem = []
            for i, filters in enumerate(stem_filters):
                for j, strides in enumerate((2, 1, 1)[:convs_per_stage]):
                    self.stem.append(
                        keras.layers.Conv2D(
                            filters,
                            3,
                            strides=strides,
                            padding="same",
                            use_bias=False,
                            dtype=self.dtype_policy,
                            name=f"stem_{i}_conv_{j}",
                        )
                    )
                    self.stem.append(self._stem_norm_layer(filters, f"stem_{i}_norm_{j}"))
                    self.stem.append(
                        keras.layers.Activation(
                            "relu", dtype=self.dtype_policy, name=f"stem_{i}_relu_{j}"
                        )
                    )
        # Applied again once built: layers a backbone creates in its build() start trainable.
        self._frozen_layers = list(frozen_layers or ())
        freeze_layers(self.feature_layers(), self._frozen_layers, "this image encoder's backbone or stem")
        self.projection = keras.layers.Dense(
            hidden_dim, dtype=self.dtype_policy, name="projection"
        )
        self.position_embedding = None  # Needs the token count: see build().
        self.norm = keras.layers.LayerNormalization(
            epsilon=1e-5, dtype=self.dtype_policy, name="norm"
        )
        self.token_dropout = keras.layers.Dropout(
            dropout, dtype=self.dtype_policy, name="token_dropout"
        )

    def feature_layers(self):
        """The layers `features` runs, bottom first: the backbone's top-level layers, or the stem.

        What `frozen_layers` names and `training.finetune` freezes.
        """
        if self.backbone is not None:
            return list(getattr(self.backbone, "layers", None) or [self.backbone])
        return list(self.stem)

    def _stem_norm_layer(self, filters, name):
        if self.stem_norm == "group":
            return keras.layers.GroupNormalization(
                groups=math.gcd(filters, 8), dtype=self.dtype_policy, name=name
            )
        # Synchronized: statistics over the global batch, so every replica
        # and worker keeps identical moving averages (Keras keeps them per
        # replica otherwise).
        return keras.layers.BatchNormalization(synchronized=True, dtype=self.dtype_policy, name=name)

    def _features_shape(self, images_shape, build=False):
        shape = tuple(images_shape)
        if self.backbone is not None:
            if build and not self.backbone.built:
                self.backbone.build(shape)
            out = self.backbone.compute_output_shape(shape)
            if isinstance(out, dict):
                out = out[sorted(out)[-1]]
            return tuple(out)
        for layer in self.stem:
            if build:
                layer.build(shape)
            shape = tuple(layer.compute_output_shape(shape))
        return shape

    def build(self, images_shape):
        if images_shape[1] is None or images_shape[2] is None:
            raise ValueError(
                "`ImageEncoder` needs a static image height and width. "
                f"Received: images_shape={images_shape}"
            )
        features = self._features_shape(images_shape, build=True)
        if len(features) == 4:
            num_tokens = features[1] * features[2]
        elif len(features) == 3:
            num_tokens = features[1]
        else:
            raise ValueError(
                "The backbone must output a feature map (batch, h, w, c) or a "
                f"token sequence (batch, tokens, c). Received output shape {features}"
            )
        tokens_shape = (images_shape[0], num_tokens, features[-1])
        self.projection.build(tokens_shape)
        hidden_shape = (images_shape[0], num_tokens, self.hidden_dim)
        self.position_embedding = keras_hub.layers.PositionEmbedding(
            num_tokens, dtype=self.dtype_policy, name="position_embedding"
        )
        self.position_embedding.build(hidden_shape)
        self.norm.build(hidden_shape)
        freeze_layers(self.feature_layers(), self._frozen_layers, "this image encoder's backbone or stem")
        self.built = True

    def features(self, images, training=None):
        """Pixels in `[0, 255]` -> the backbone's (or stem's) feature map or tokens."""
        x = ops.cast(images, self.compute_dtype)
        x = x * ops.cast(self.pixel_scale, x.dtype) + ops.cast(self.pixel_offset, x.dtype)
        if self.backbone is not None:
            x = self.backbone(x, training=training and self.backbone_trainable)
            if isinstance(x, dict):
                x = x[sorted(x)[-1]]
        else:
            for layer in self.stem:
                x = layer(x, training=training)
        return x

    def features_shape(self, images_shape):
        """Shape of `features(images)` for images of `images_shape`."""
        return self._features_shape(images_shape)

    def encode_inputs(self, inputs, training=None):
        """Encodes a model's input dict: `"image_features"` (cached) or `"images"`."""
        if "image_features" in inputs:
            return self.encode_features(inputs["image_features"], training=training)
        return self(inputs["images"], training=training)

    def call(self, images, training=None):
        return self.encode_features(self.features(images, training=training), training=training)

    def encode_features(self, x, training=None):
        """`features(images)` -> `{"tokens", "pooled"}`: projection, positions, norm."""
        x = ops.cast(x, self.compute_dtype)
        if len(x.shape) == 4:
            # A static token count when the grid is static: layers after the
            # encoder (e.g. a graph over the grid) need it at trace time.
            if x.shape[1] and x.shape[2]:
                x = ops.reshape(x, (-1, x.shape[1] * x.shape[2], x.shape[-1]))
            else:
                x = ops.reshape(x, (ops.shape(x)[0], -1, x.shape[-1]))
        x = self.projection(x)
        x = x + self.position_embedding(x)
        tokens = self.token_dropout(self.norm(x), training=training)
        return {"tokens": tokens, "pooled": ops.mean(tokens, axis=1)}

    def compute_output_shape(self, images_shape):
        features = self._features_shape(images_shape)
        num_tokens = features[1] * features[2] if len(features) == 4 else features[1]
        return {
            "tokens": (images_shape[0], num_tokens, self.hidden_dim),
            "pooled": (images_shape[0], self.hidden_dim),
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "stem_filters": list(self.stem_filters),
                "convs_per_stage": self.convs_per_stage,
                "stem_norm": self.stem_norm,
                "backbone_class": self.backbone_class,
                "backbone_kwargs": self.backbone_kwargs,
                "backbone_preset": self.backbone_preset,
                "backbone_trainable": self.backbone_trainable,
                # A frozen backbone (backbone_trainable=False) freezes them all.
                "frozen_layers": frozen_layer_names(self.feature_layers()) if self.backbone_trainable else [],
                "pixel_scale": _config_value(self.pixel_scale),
                "pixel_offset": _config_value(self.pixel_offset),
                "dropout": self.dropout,
                "backbone": backbone_get_config(self.backbone, self.backbone_class),
            }
        )
        return config
