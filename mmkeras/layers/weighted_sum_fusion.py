"""Weighted-sum fusion: a convex combination of projected pooled vectors."""

import keras
from keras import ops

from mmkeras.layers.fusion_layer import (
    FusionLayer,
    WeightedModalities,
    check_modality_weights,
    modality_weights,
)


@keras.saving.register_keras_serializable(package="mmkeras")
class WeightedSumFusion(WeightedModalities, FusionLayer):
    """Fuses `lambda_img * F_img + lambda_text * F_text` of projected pooled vectors.

    `F_img` and `F_text` are dense projections (with an activation) of the
    pooled vectors into `hidden_dim`. The two weights are either fixed, or
    learned as two logits normalised by a softmax, so they stay non-negative
    and sum to 1 and the layer can learn how much to trust each modality.
    A fixed weight of exactly 0 skips its branch, so that modality cannot
    influence the output at all (not even through NaN or inf values).

    Args:
        hidden_dim: int, width of the fused vector.
        weights: `"learned"`, or a pair `(lambda_img, lambda_text)` of
            non-negative floats summing to 1.
        activation: activation of the two projections.
        dropout: float, dropout on the fused vector.
        **kwargs: base layer arguments.

    Call arguments:
        image_tokens: float tensor `(batch, num_image_tokens, image_dim)`, unused.
        image_pooled: float tensor `(batch, image_dim)`.
        text_tokens: float tensor `(batch, text_length, text_dim)`, unused.
        text_pooled: float tensor `(batch, text_dim)`.
        text_padding_mask: optional bool tensor `(batch, text_length)`, unused.
        training: bool.

    Returns:
        Float tensor `(batch, hidden_dim)`.

    Example:
    >>> layer = WeightedSumFusion(hidden_dim=8, weights=(0.25, 0.75))
    >>> fused = layer(keras.random.normal((2, 4, 6)), keras.random.normal((2, 6)),
    ...               keras.random.normal((2, 3, 5)), keras.random.normal((2, 5)))
    >>> tuple(fused.shape), layer.normalized_weights
    ((2, 8), (0.25, 0.75))
    """

    def __init__(self, hidden_dim, weights="learned", activation="relu", dropout=0.0, **kwargs):
        super().__init__(hidden_dim=hidden_dim, dropout=dropout, **kwargs)
        # `self.weights` is the Keras list of variables; keep the argument apart.
        self.fusion_weights = check_modality_weights(weights)
        self.activation = keras.activations.get(activation)
        self.make_projections(self.activation)
        self.output_dropout = keras.layers.Dropout(
            dropout, dtype=self.dtype_policy, name="output_dropout"
        )
        self.weight_logits = None

    def build(self, image_tokens_shape, image_pooled_shape, text_tokens_shape, text_pooled_shape):
        self.image_projection.build(image_pooled_shape)
        self.text_projection.build(text_pooled_shape)
        self.build_modality_weights()
        self.built = True


    def call(
        self,
        image_tokens,
        image_pooled,
        text_tokens,
        text_pooled,
        text_padding_mask=None,
        training=None,
    ):
        w_img, w_text = modality_weights(self.fusion_weights, self.weight_logits)
        branches = []
        if self.fusion_weights == "learned" or self.fusion_weights[0] > 0.0:
            branches.append(ops.cast(w_img, self.compute_dtype) * self.image_projection(image_pooled))
        if self.fusion_weights == "learned" or self.fusion_weights[1] > 0.0:
            branches.append(ops.cast(w_text, self.compute_dtype) * self.text_projection(text_pooled))
        fused = branches[0] if len(branches) == 1 else branches[0] + branches[1]
        return self.output_dropout(fused, training=training)

    def get_config(self):
        config = super().get_config()
        weights = self.fusion_weights
        config.update(
            {
                "weights": weights if weights == "learned" else list(weights),
                "activation": keras.activations.serialize(self.activation),
            }
        )
        return config
