"""Bilinear fusion: question-guided attention and a low-rank bilinear (Hadamard) product."""

import keras
from keras import ops

from mmkeras.layers.fusion_layer import FusionLayer


@keras.saving.register_keras_serializable(package="mmkeras")
class BilinearFusion(FusionLayer):
    """Multiplicative fusion: `z = tanh(W_v v) * tanh(W_t t)`, with attention glimpses.

    Low-rank bilinear pooling (MLB; Kim et al., 2017, "Hadamard Product for
    Low-rank Bilinear Pooling"): a bilinear map `v^T W_k t` per output `k`,
    restricted to rank one per dimension, is the element-wise product of two
    projections. The product lets one modality gate the other feature by
    feature, which a sum or a concatenation followed by a linear head cannot:
    "is there a red shape?" is a comparison of the asked colour with the seen
    one, a product of the two. `v` is the image, attended under the question:
    each of `num_glimpses` softmax distributions over the image tokens is
    scored from the same Hadamard product of every token with the text
    (`w_g^T (tanh(U x_i) * tanh(V t))`), and the glimpses are concatenated.
    With `num_glimpses=0` `v` is the pooled image vector.

    Args:
        hidden_dim: int, the rank: width of the two projections and of the
            fused vector.
        num_glimpses: int >= 0, attention distributions over the image tokens.
        dropout: float, dropout on the inputs of the products.
        **kwargs: base layer arguments.

    Call arguments:
        image_tokens: float tensor `(batch, num_image_tokens, image_dim)`.
        image_pooled: float tensor `(batch, image_dim)`, used when
            `num_glimpses=0`.
        text_tokens: float tensor `(batch, text_length, text_dim)`, unused.
        text_pooled: float tensor `(batch, text_dim)`.
        text_padding_mask: optional bool tensor `(batch, text_length)`, unused
            (the pooled text vector is already masked).
        training: bool.
        return_attention_scores: bool, also return the glimpses' attention
            `(batch, num_glimpses, num_image_tokens)`.

    Returns:
        Float tensor `(batch, hidden_dim)`, and the attention with
        `return_attention_scores`.

    Example:
    >>> layer = BilinearFusion(hidden_dim=8, num_glimpses=2)
    >>> fused = layer(keras.random.normal((2, 4, 6)), keras.random.normal((2, 6)),
    ...               keras.random.normal((2, 3, 5)), keras.random.normal((2, 5)))
    >>> tuple(fused.shape)
    (2, 8)
    """

    def __init__(self, hidden_dim, num_glimpses=2, dropout=0.0, **kwargs):
        super().__init__(hidden_dim=hidden_dim, dropout=dropout, **kwargs)
        if isinstance(num_glimpses, bool) or not isinstance(num_glimpses, int) or num_glimpses < 0:
            raise ValueError(
                f"`num_glimpses` must be an int >= 0. Received: num_glimpses={num_glimpses}"
            )
        self.num_glimpses = num_glimpses
        self.make_projections("tanh")
        if num_glimpses:
            self.attention_image = keras.layers.Dense(
                hidden_dim, activation="tanh", dtype=self.dtype_policy, name="attention_image"
            )
            self.attention_text = keras.layers.Dense(
                hidden_dim, activation="tanh", dtype=self.dtype_policy, name="attention_text"
            )
            self.attention_logits = keras.layers.Dense(
                num_glimpses, dtype=self.dtype_policy, name="attention_logits"
            )
        self.input_dropout = keras.layers.Dropout(
            dropout, dtype=self.dtype_policy, name="input_dropout"
        )

    def build(self, image_tokens_shape, image_pooled_shape, text_tokens_shape, text_pooled_shape):
        image_dim = image_tokens_shape[-1]
        self.text_projection.build(text_pooled_shape)
        if self.num_glimpses:
            self.attention_image.build(image_tokens_shape)
            self.attention_text.build(text_pooled_shape)
            self.attention_logits.build(tuple(image_tokens_shape[:-1]) + (self.hidden_dim,))
            self.image_projection.build((image_tokens_shape[0], self.num_glimpses * image_dim))
        else:
            self.image_projection.build(image_pooled_shape)
        self.built = True

    def call(
        self,
        image_tokens,
        image_pooled,
        text_tokens,
        text_pooled,
        text_padding_mask=None,
        training=None,
        return_attention_scores=False,
    ):
        text = self.input_dropout(text_pooled, training=training)
        attention = None
        if self.num_glimpses:
            tokens = self.input_dropout(image_tokens, training=training)
            joint = self.attention_image(tokens) * self.attention_text(text)[:, None, :]
            # Softmax over the image tokens (axis 1), one distribution a glimpse.
            attention = ops.softmax(self.attention_logits(joint), axis=1)
            glimpses = ops.einsum("bng,bnd->bgd", attention, image_tokens)
            image = ops.reshape(glimpses, (-1, self.num_glimpses * image_tokens.shape[-1]))
            attention = ops.transpose(attention, (0, 2, 1))
        else:
            image = self.input_dropout(image_pooled, training=training)
        fused = self.image_projection(image) * self.text_projection(text)
        return (fused, attention) if return_attention_scores else fused

    def get_config(self):
        config = super().get_config()
        config["num_glimpses"] = self.num_glimpses
        return config
