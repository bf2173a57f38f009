"""Gated fusion: a learned per-dimension gate mixes the two modalities."""

import keras
from keras import ops

from mmkeras.layers.fusion_layer import FusionLayer


@keras.saving.register_keras_serializable(package="mmkeras")
class GatedFusion(FusionLayer):
    """Mixes projected modalities with a sigmoid gate: `z * h_img + (1 - z) * h_text`.

    Both pooled vectors are projected to `hidden_dim` (`h_img`, `h_text`),
    and `z = sigmoid(W [h_img; h_text] + b)` decides per dimension and per
    example which modality to trust, in the spirit of the Gated Multimodal
    Unit of Arevalo et al., 2017 ("Gated Multimodal Units for Information
    Fusion"; there the gate reads the raw inputs, here the projections, so the
    gate input has a fixed width whatever the encoders). Since `0 < z < 1`,
    every fused feature lies between the two projected features.

    Args:
        hidden_dim: int, width of the projections and of the fused vector.
        activation: activation of the two projections (`"tanh"` as in the GMU).
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
    >>> layer = GatedFusion(hidden_dim=8)
    >>> fused = layer(keras.random.normal((2, 4, 6)), keras.random.normal((2, 6)),
    ...               keras.random.normal((2, 3, 5)), keras.random.normal((2, 5)))
    >>> tuple(fused.shape)
    (2, 8)
    """

    def __init__(self, hidden_dim, activation="tanh", dropout=0.0, **kwargs):
        super().__init__(hidden_dim=hidden_dim, dropout=dropout, **kwargs)
        self.activation = keras.activations.get(activation)
        self.make_projections(self.activation)
        self.gate = keras.layers.Dense(
            hidden_dim, activation="sigmoid", dtype=self.dtype_policy, name="gate"
        )
        self.output_dropout = keras.layers.Dropout(
            dropout, dtype=self.dtype_policy, name="output_dropout"
        )

    def build(self, image_tokens_shape, image_pooled_shape, text_tokens_shape, text_pooled_shape):
        self.image_projection.build(image_pooled_shape)
        self.text_projection.build(text_pooled_shape)
        self.gate.build((image_pooled_shape[0], 2 * self.hidden_dim))
        self.built = True

    def project(self, image_pooled, text_pooled):
        """Returns `(h_img, h_text, z)`, each `(batch, hidden_dim)`."""
        h_img = self.image_projection(image_pooled)
        h_text = self.text_projection(text_pooled)
        z = self.gate(ops.concatenate([h_img, h_text], axis=-1))
        return h_img, h_text, z

    def call(
        self,
        image_tokens,
        image_pooled,
        text_tokens,
        text_pooled,
        text_padding_mask=None,
        training=None,
    ):
        h_img, h_text, z = self.project(image_pooled, text_pooled)
        fused = z * h_img + (1.0 - z) * h_text
        return self.output_dropout(fused, training=training)

    def get_config(self):
        config = super().get_config()
        config["activation"] = keras.activations.serialize(self.activation)
        return config
