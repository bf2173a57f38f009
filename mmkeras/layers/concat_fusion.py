"""Early fusion: concatenate the pooled image and text vectors, then project."""

import keras
from keras import ops

from mmkeras.layers.fusion_layer import FusionLayer


@keras.saving.register_keras_serializable(package="mmkeras")
class ConcatFusion(FusionLayer):
    """Concatenates the pooled vectors and projects them: `act(W [I; T] + b)`.

    The simplest early fusion: one dense layer sees both modalities at once,
    so it can learn any linear interaction of their features.

    Args:
        hidden_dim: int, width of the fused vector.
        activation: activation of the projection.
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
    >>> layer = ConcatFusion(hidden_dim=8)
    >>> fused = layer(keras.random.normal((2, 4, 6)), keras.random.normal((2, 6)),
    ...               keras.random.normal((2, 3, 5)), keras.random.normal((2, 5)))
    >>> tuple(fused.shape)
    (2, 8)
    """

    def __init__(self, hidden_dim, activation="relu", dropout=0.0, **kwargs):
        super().__init__(hidden_dim=hidden_dim, dropout=dropout, **kwargs)
        self.activation = keras.activations.get(activation)
        self.projection = keras.layers.Dense(
            hidden_dim, activation=self.activation, dtype=self.dtype_policy, name="projection"
        )
        self.output_dropout = keras.layers.Dropout(
            dropout, dtype=self.dtype_policy, name="output_dropout"
        )

    def build(self, image_tokens_shape, image_pooled_shape, text_tokens_shape, text_pooled_shape):
        self.projection.build((image_pooled_shape[0], image_pooled_shape[-1] + text_pooled_shape[-1]))
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
        fused = self.projection(ops.concatenate([image_pooled, text_pooled], axis=-1))
        return self.output_dropout(fused, training=training)

    def get_config(self):
        config = super().get_config()
        config["activation"] = keras.activations.serialize(self.activation)
        return config
