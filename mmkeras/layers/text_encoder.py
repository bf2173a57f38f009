"""Text encoder: token ids to contextual token states plus a pooled vector."""

import keras
import keras_hub
from keras import ops

from mmkeras.layers.backbone_utils import (
    backbone_get_config, freeze_layers, frozen_layer_names, resolve_backbone, set_trainable,
)

POOLING_MODES = ("mean", "first")
# Inputs a keras-hub text backbone may declare, and how this layer fills them.
BACKBONE_INPUTS = ("token_ids", "segment_ids", "padding_mask")


@keras.saving.register_keras_serializable(package="mmkeras")
class TextEncoder(keras.layers.Layer):
    """Encodes token ids into token states `(batch, length, hidden_dim)` and a pooled vector.

    By default token and learned position embeddings feed `num_layers`
    pre-LayerNorm keras-hub `TransformerEncoder` blocks (Vaswani et al., 2017)
    and a final LayerNorm, small enough to train from scratch on a CPU.
    Alternatively a keras-hub text backbone (e.g. BERT, Devlin et al., 2019),
    given exactly as for `ImageEncoder`: an instance, a class name plus
    constructor arguments, or a keras-hub preset directory on local disk
    (pretrained weights are loaded from it). Its sequence output is projected
    to `hidden_dim` and layer-normalized, so both paths give states on the
    same scale.

    The padding mask is passed explicitly to every block (no implicit Keras
    masking): padded keys are never attended to, so the ids at padded
    positions change neither the real tokens' states nor the pooled vector.

    Args:
        vocabulary_size: int, number of token ids. Required without a backbone.
        sequence_length: int, maximum number of tokens (position embeddings).
            Required without a backbone.
        hidden_dim: int, width of the output tokens.
        num_layers: int, Transformer blocks of the default encoder.
        num_heads: int, attention heads of the default encoder.
        intermediate_dim: int, feed-forward width of the default encoder.
        dropout: float in `[0, 1)`, dropout of the default encoder, or on the
            projected backbone states.
        pooling: `"mean"` (masked mean over real tokens) or `"first"` (the
            first token, e.g. BERT's `[CLS]`).
        backbone: optional keras-hub text `Backbone` (or any layer taking a
            dict of `token_ids` / `segment_ids` / `padding_mask`), used
            instead of the default encoder.
        backbone_class: optional name of a `keras_hub.models` backbone class,
            e.g. `"BertBackbone"`, built with `backbone_kwargs`.
        backbone_kwargs: dict of constructor arguments for `backbone_class`.
        backbone_preset: optional path of a keras-hub preset directory. The
            config keeps the backbone's own config next to this path, so a
            saved model reloads (weights from the `.keras` file) without it.
        backbone_trainable: bool, whether backbone weights are fine-tuned.
        frozen_layers: optional names of layers that do not train: the
            backbone's `layers`, or the default encoder's `"embedding"` and
            `"block_<i>"`. `get_config` records the frozen ones, so a model
            saved after `training.finetune.apply_trainable(encoder, "top:N")`
            reloads with the same layers frozen.
        **kwargs: base layer arguments.

    Call arguments:
        token_ids: int tensor `(batch, length)`.
        padding_mask: optional bool tensor `(batch, length)`, True for real
            tokens. Defaults to `token_ids != 0`.
        training: bool.

    Returns:
        A dict with `"tokens"` `(batch, length, hidden_dim)` and `"pooled"`
        `(batch, hidden_dim)`.

    Example:
    >>> encoder = TextEncoder(vocabulary_size=20, sequence_length=8, hidden_dim=16,
    ...                       num_layers=1, num_heads=2, intermediate_dim=32)
    >>> outputs = encoder(ops.array([[2, 5, 7, 3, 0, 0], [2, 9, 3, 0, 0, 0]]))
    >>> tuple(outputs["tokens"].shape), tuple(outputs["pooled"].shape)
    ((2, 6, 16), (2, 16))
    """

    # The config entries that, with the feature layers' weights, decide
    # `features(token_ids)`: ensembles run and hold encoders equal in these once.
    FEATURE_CONFIG_KEYS = ("vocabulary_size", "sequence_length", "hidden_dim", "num_layers", "num_heads",
                           "intermediate_dim", "backbone_class", "backbone_kwargs", "backbone_preset")

    def __init__(
        self,
        vocabulary_size=None,
        sequence_length=None,
        hidden_dim=128,
        num_layers=2,
        num_heads=4,
        intermediate_dim=256,
        dropout=0.1,
        pooling="mean",
        backbone=None,
        backbone_class=None,
        backbone_kwargs=None,
        backbone_preset=None,
        backbone_trainable=True,
        frozen_layers=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        has_backbone = any(s is not None for s in (backbone, backbone_class, backbone_preset))
        checked = [("hidden_dim", hidden_dim), ("num_layers", num_layers),
                   ("num_heads", num_heads), ("intermediate_dim", intermediate_dim)]
        for arg, value in (("vocabulary_size", vocabulary_size), ("sequence_length", sequence_length)):
            if value is None and not has_backbone:
                raise ValueError(
                    f"`{arg}` is required without a backbone. Received: {arg}={value}"
                )
            if value is not None:
                checked.append((arg, value))
        for arg, value in checked:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{arg}` must be a positive int. Received: {arg}={value}")
        if not has_backbone and hidden_dim % num_heads:
            raise ValueError(
                "`hidden_dim` must be divisible by `num_heads`. "
                f"Received: hidden_dim={hidden_dim}, num_heads={num_heads}"
            )
        if not 0 <= dropout < 1:
            raise ValueError(f"`dropout` must be in [0, 1). Received: dropout={dropout}")
        if pooling not in POOLING_MODES:
            raise ValueError(f"`pooling` must be one of {POOLING_MODES}. Received: pooling={pooling}")
        self.vocabulary_size = vocabulary_size
        self.sequence_length = sequence_length
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.dropout = dropout
        self.pooling = pooling
        self.backbone_class = backbone_class
        self.backbone_kwargs = dict(backbone_kwargs or {})
        self.backbone_preset = backbone_preset
        self.backbone_trainable = backbone_trainable

        self.backbone = resolve_backbone(
            backbone, backbone_class, self.backbone_kwargs, backbone_preset, kind="text"
        )
        self.embedding = None
        self.blocks = []
        self.projection = None
        if self.backbone is not None:
            set_trainable(self.backbone, backbone_trainable)
            self._backbone_inputs = self._check_backbone_inputs(self.backbone)
            self.projection = keras.layers.Dense(
                hidden_dim, dtype=self.dtype_policy, name="projection"
            )
        else:
            self.embedding = keras_hub.layers.TokenAndPositionEmbedding(
                vocabulary_size,
                sequence_length,
                hidden_dim,
                embeddings_initializer=keras.initializers.RandomNormal(stddev=0.02),
                dtype=self.dtype_policy,
                name="embedding",
            )
            self.blocks = [
                keras_hub.layers.TransformerEncoder(
                    intermediate_dim,
                    num_heads,
                    dropout=dropout,
                    activation="gelu",
                    layer_norm_epsilon=1e-5,
                    # Pre-LayerNorm: trains stably from scratch without warmup.
                    normalize_first=True,
                    dtype=self.dtype_policy,
                    name=f"block_{i}",
                )
                for i in range(num_layers)
            ]
        self.token_dropout = keras.layers.Dropout(
            dropout, dtype=self.dtype_policy, name="token_dropout"
        )
        self.norm = keras.layers.LayerNormalization(
            epsilon=1e-5, dtype=self.dtype_policy, name="norm"
        )
        # Applied again once built: layers a block creates in its build() start trainable.
        self._frozen_layers = list(frozen_layers or ())
        freeze_layers(self.feature_layers(), self._frozen_layers, "this text encoder's backbone or blocks")

    def feature_layers(self):
        """The layers `features` runs, bottom first: the backbone's top-level layers, or embedding and blocks.

        What `frozen_layers` names and `training.finetune` freezes.
        """
        if self.backbone is not None:
            return list(getattr(self.backbone, "layers", None) or [self.backbone])
        return [self.embedding] + list(self.blocks)

    @staticmethod
    def _check_backbone_inputs(backbone):
        inputs = getattr(backbone, "input", None) if getattr(backbone, "built", False) else None
        if not isinstance(inputs, dict):
            # Unknown structure: the common keras-hub text signature.
            return BACKBONE_INPUTS
        unknown = sorted(set(inputs) - set(BACKBONE_INPUTS))
        if unknown or "token_ids" not in inputs:
            raise ValueError(
                f"The backbone must take a dict of {BACKBONE_INPUTS} (token_ids "
                f"required). Received: backbone inputs {sorted(inputs)}"
            )
        return tuple(name for name in BACKBONE_INPUTS if name in inputs)

    def _backbone_feed(self, token_ids, padding_mask):
        feed = {"token_ids": token_ids}
        if "segment_ids" in self._backbone_inputs:
            feed["segment_ids"] = ops.zeros_like(token_ids)
        if "padding_mask" in self._backbone_inputs:
            # keras-hub backbones declare an int32 mask input.
            feed["padding_mask"] = ops.cast(padding_mask, "int32")
        return feed

    @staticmethod
    def _sequence_output(outputs):
        if isinstance(outputs, dict):
            if "sequence_output" not in outputs:
                raise ValueError(
                    "A backbone returning a dict must have a 'sequence_output'. "
                    f"Received: outputs {sorted(outputs)}"
                )
            return outputs["sequence_output"]
        return outputs

    def build(self, token_ids_shape, padding_mask_shape=None):
        token_ids_shape = tuple(token_ids_shape)
        hidden_shape = token_ids_shape + (self.hidden_dim,)
        if self.backbone is not None:
            shapes = {name: token_ids_shape for name in self._backbone_inputs}
            if not self.backbone.built:
                self.backbone.build(shapes)
            features = self._sequence_output(self.backbone.compute_output_shape(shapes))
            self.projection.build(tuple(features))
        else:
            self.embedding.build(token_ids_shape)
            for block in self.blocks:
                block.build(hidden_shape)
        self.norm.build(hidden_shape)
        freeze_layers(self.feature_layers(), self._frozen_layers, "this text encoder's backbone or blocks")
        self.built = True

    def features(self, token_ids, padding_mask=None, training=None):
        """Token ids -> the frozen-able part's states: the backbone's sequence output, or the blocks' output.

        What `finetune` freezes with `trainable=none`; `encode_features` does
        the rest (projection, norm, pooling), so a frozen tower's features can
        be computed once per text and cached (`text_features.feature_lookup`).
        """
        token_ids = ops.cast(token_ids, "int32")
        padding_mask = self._mask(token_ids, padding_mask)
        if self.backbone is not None:
            x = self.backbone(
                self._backbone_feed(token_ids, padding_mask),
                training=training and self.backbone_trainable,
            )
            return self._sequence_output(x)
        x = self.token_dropout(self.embedding(token_ids), training=training)
        for block in self.blocks:
            x = block(x, padding_mask=padding_mask, training=training)
        return x

    def features_shape(self, token_ids_shape):
        """Shape of `features(token_ids)` for token ids of `token_ids_shape`."""
        token_ids_shape = tuple(token_ids_shape)
        if self.backbone is None:
            return token_ids_shape + (self.hidden_dim,)
        shapes = {name: token_ids_shape for name in self._backbone_inputs}
        return tuple(self._sequence_output(self.backbone.compute_output_shape(shapes)))

    def encode_features(self, x, padding_mask, training=None):
        """`features(token_ids)` and the padding mask -> `{"tokens", "pooled"}`."""
        padding_mask = ops.cast(padding_mask, "bool")
        x = ops.cast(x, self.compute_dtype)
        if self.backbone is not None:
            x = self.token_dropout(self.norm(self.projection(x)), training=training)
        else:
            x = self.norm(x)
        if self.pooling == "first":
            pooled = x[:, 0, :]
        else:
            weights = ops.cast(padding_mask, x.dtype)[:, :, None]
            # An all-padding row would divide 0 by 0: count at least one.
            count = ops.maximum(ops.sum(weights, axis=1), ops.cast(1.0, x.dtype))
            pooled = ops.sum(x * weights, axis=1) / count
        return {"tokens": x, "pooled": pooled}

    def encode_inputs(self, inputs, training=None):
        """Encodes a model's input dict: cached `"text_features"`, or `"token_ids"`, with `"padding_mask"`."""
        padding_mask = self._mask(inputs["token_ids"], inputs.get("padding_mask"))
        if "text_features" in inputs:
            return self.encode_features(inputs["text_features"], padding_mask, training=training)
        return self(inputs["token_ids"], padding_mask=padding_mask, training=training)

    @staticmethod
    def _mask(token_ids, padding_mask):
        if padding_mask is None:
            return ops.not_equal(ops.cast(token_ids, "int32"), 0)
        return ops.cast(padding_mask, "bool")

    def call(self, token_ids, padding_mask=None, training=None):
        padding_mask = self._mask(token_ids, padding_mask)
        return self.encode_features(
            self.features(token_ids, padding_mask, training=training), padding_mask, training=training)

    def compute_output_shape(self, token_ids_shape, padding_mask_shape=None):
        return {
            "tokens": tuple(token_ids_shape) + (self.hidden_dim,),
            "pooled": (token_ids_shape[0], self.hidden_dim),
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "sequence_length": self.sequence_length,
                "hidden_dim": self.hidden_dim,
                "num_layers": self.num_layers,
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "dropout": self.dropout,
                "pooling": self.pooling,
                "backbone_class": self.backbone_class,
                "backbone_kwargs": self.backbone_kwargs,
                "backbone_preset": self.backbone_preset,
                "backbone_trainable": self.backbone_trainable,
                # A frozen backbone (backbone_trainable=False) freezes them all.
                "frozen_layers": frozen_layer_names(self.feature_layers()) if self.backbone_trainable else [],
                "backbone": backbone_get_config(self.backbone, self.backbone_class),
            }
        )
        return config
