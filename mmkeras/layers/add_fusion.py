"""Additive fusion: the sum of separately projected pooled vectors."""

import keras

from mmkeras.layers.fusion_layer import FusionLayer


@keras.saving.register_keras_serializable(package="mmkeras")
class AddFusion(FusionLayer):
    """Sums per-modality projections: `Z = f_v(I) + f_t(T)`.

    `f_v` and `f_t` are dense layers with an activation. The activation sits
    inside each branch on purpose: a linear projection followed by a sum
    would be exactly `ConcatFusion` (`W [I; T] = W_v I + W_t T`); here each
    modality is mapped into the shared space on its own before the two
    vectors are added, which requires that space to be common to both.

    Args:
        hidden_dim: int, width of the shared space and of the fused vector.
        activation: activation of each branch projection.
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
    >>> layer = AddFusion(hidden_dim=8)
    >>> fused = layer(keras.random.normal((2, 4, 6)), keras.random.normal((2, 6)),
    ...               keras.random.normal((2, 3, 5)), keras.random.normal((2, 5)))
    >>> tuple(fused.shape)
    (2, 8)
    """

    def __init__(self, hidden_dim, activation="relu", dropout=0.0, **kwargs):
        super().__init__(hidden_dim=hidden_dim, dropout=dropout, **kwargs)
        self.activation = keras.activations.get(activation)
        self.make_projections(self.activation)
        self.output_dropout = keras.layers.Dropout(
            dropout, dtype=self.dtype_policy, name="output_dropout"
        )

    def build(self, image_tokens_shape, image_pooled_shape, text_tokens_shape, text_pooled_shape):
        self.image_projection.build(image_pooled_shape)
        self.text_projection.build(text_pooled_shape)
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
        fused = self.image_projection(image_pooled) + self.text_projection(text_pooled)
        return self.output_dropout(fused, training=training)

    def get_config(self):
        config = super().get_config()
        config["activation"] = keras.activations.serialize(self.activation)
        return config
