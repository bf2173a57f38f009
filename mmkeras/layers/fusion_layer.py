"""Base class of the fusion layers: one call interface, shared validation and pooling."""

import math

import keras
from keras import ops


def check_modality_weights(weights):
    """Validates a `weights` argument: `"learned"` or a pair `(w_img, w_text)`.

    A fixed pair must be non-negative and sum to 1 (within 1e-6), so that the
    fused output stays on the scale of its inputs.

    Returns:
        `"learned"`, or a tuple of two Python floats.
    """
    if isinstance(weights, str):
        if weights == "learned":
            return weights
    elif isinstance(weights, (list, tuple)) and len(weights) == 2:
        try:
            pair = tuple(float(w) for w in weights)
        except (TypeError, ValueError):
            pair = None
        if (
            pair is not None
            and all(math.isfinite(w) and w >= 0.0 for w in pair)
            and abs(sum(pair) - 1.0) <= 1e-6
        ):
            return pair
    raise ValueError(
        "`weights` must be 'learned' or a pair (image_weight, text_weight) of "
        f"non-negative floats summing to 1. Received: weights={weights}"
    )


@keras.saving.register_keras_serializable(package="mmkeras")
class FusionLayer(keras.layers.Layer):
    """Base class of the layers that fuse an image and a text representation.

    Every fusion layer takes the same four tensors, so a classifier can swap
    one for another by name (see `mmkeras.layers.fusion.get_fusion`). Layers
    that use only the pooled vectors still accept the token sequences.
    Subclasses implement `build` and `call`; the base class validates the
    shared arguments and provides `masked_mean`.

    Args:
        hidden_dim: int, width of the fused vector.
        dropout: float in `[0, 1)`, dropout rate of the subclass.
        **kwargs: base layer arguments such as `name` and `dtype`.

    Call arguments:
        image_tokens: float tensor `(batch, num_image_tokens, image_dim)`.
        image_pooled: float tensor `(batch, image_dim)`.
        text_tokens: float tensor `(batch, text_length, text_dim)`.
        text_pooled: float tensor `(batch, text_dim)`.
        text_padding_mask: optional bool tensor `(batch, text_length)`, `True`
            for real tokens; `None` means every token is real.
        training: bool, whether dropout is active.

    Returns:
        The fused vector `(batch, hidden_dim)`; layers with
        `produces_logits = True` return class logits `(batch, num_classes)`.

    Example:
    >>> FusionLayer(hidden_dim=8).hidden_dim
    8
    """

    # True for layers that return class logits rather than a fused vector, so
    # that a classifier knows not to put its own head on top.
    produces_logits = False

    def __init__(self, hidden_dim, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        if isinstance(hidden_dim, bool) or not isinstance(hidden_dim, int) or hidden_dim < 1:
            raise ValueError(
                f"`hidden_dim` must be a positive int. Received: hidden_dim={hidden_dim}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1). Received: dropout={dropout}")
        self.hidden_dim = hidden_dim
        self.dropout = dropout

    def call(
        self,
        image_tokens,
        image_pooled,
        text_tokens,
        text_pooled,
        text_padding_mask=None,
        training=None,
    ):
        raise NotImplementedError(f"{type(self).__name__} must implement `call`.")

    def make_projections(self, activation=None):
        """Creates `image_projection` and `text_projection`: one Dense per modality
        into the shared `hidden_dim` space (built by the subclass)."""
        for modality in ("image", "text"):
            setattr(self, f"{modality}_projection", keras.layers.Dense(
                self.hidden_dim, activation=activation, dtype=self.dtype_policy, name=f"{modality}_projection"
            ))

    def padding_mask(self, text_tokens, text_padding_mask=None):
        """The text padding mask as floats `(batch, text_length)`, 1 = real token."""
        if text_padding_mask is None:
            return ops.ones_like(text_tokens[..., 0], dtype=self.compute_dtype)
        return ops.cast(text_padding_mask, self.compute_dtype)

    @staticmethod
    def masked_mean(tokens, mask):
        """Mean of `tokens` `(batch, length, dim)` over positions where `mask` is 1.

        `mask` is a float or bool tensor `(batch, length)`. A row without any
        real position gives zeros instead of NaN.
        """
        mask = ops.cast(mask, tokens.dtype)[..., None]
        total = ops.sum(tokens * mask, axis=1)
        count = ops.maximum(ops.sum(mask, axis=1), ops.cast(1.0, tokens.dtype))
        return total / count

    def compute_output_shape(
        self, image_tokens_shape, image_pooled_shape, text_tokens_shape, text_pooled_shape
    ):
        return (image_pooled_shape[0], self.hidden_dim)

    def get_config(self):
        config = super().get_config()
        config.update({"hidden_dim": self.hidden_dim, "dropout": self.dropout})
        return config


class WeightedModalities:
    """Mixin of the fusions that weight the two modalities (weighted sum, late).

    The layer sets `self.fusion_weights` (from `check_modality_weights`) and
    `self.weight_logits = None` in `__init__`, and calls
    `build_modality_weights()` in `build`.
    """

    def build_modality_weights(self):
        if self.fusion_weights == "learned":
            # Zeros: both modalities start with weight 0.5.
            self.weight_logits = self.add_weight(
                name="weight_logits", shape=(2,), initializer="zeros", dtype="float32"
            )

    @property
    def normalized_weights(self):
        """The current `(w_img, w_text)` as Python floats."""
        if self.fusion_weights != "learned":
            return self.fusion_weights
        if self.weight_logits is None:
            return (0.5, 0.5)
        w_img, w_text = modality_weights(self.fusion_weights, self.weight_logits)
        return float(ops.convert_to_numpy(w_img)), float(ops.convert_to_numpy(w_text))


def modality_weights(weights, logits=None):
    """The normalised pair `(w_img, w_text)` as scalar float32 tensors.

    Args:
        weights: `"learned"` or a fixed pair, as returned by
            `check_modality_weights`.
        logits: float variable `(2,)`, the learned logits; used when
            `weights == "learned"`.
    """
    if weights == "learned":
        # Softmax in float32: the two weights must sum to 1 exactly enough to
        # keep the output scale, also under mixed precision.
        normalised = ops.softmax(ops.cast(logits, "float32"))
        return normalised[0], normalised[1]
    return ops.convert_to_tensor(weights[0], "float32"), ops.convert_to_tensor(weights[1], "float32")
