"""One Transformer decoder block: causal self-attention, cross-modal attention, MLP."""

import keras
from keras import ops

from mmkeras.layers.cross_modal_attention import CrossModalAttention


@keras.saving.register_keras_serializable(package="mmkeras")
class TextDecoderBlock(keras.layers.Layer):
    """A pre-LayerNorm Transformer decoder block attending to image tokens.

    Pre-normalisation (Xiong et al., 2020, "On Layer Normalization in the
    Transformer Architecture") trains stably from scratch without a long warmup,
    which matters when there are no pretrained weights.

    Args:
        num_heads: int, attention heads in both attention sublayers.
        intermediate_dim: int, hidden size of the feed-forward sublayer.
        dropout: float, dropout rate on residual branches and attention.
        layer_norm_epsilon: float, epsilon of the layer normalisations.
        **kwargs: base layer arguments.

    Call arguments:
        text: float tensor `(batch, length, hidden_dim)`.
        image_tokens: float tensor `(batch, image_length, image_dim)`. May be
            `None` when `cross_attention_cache` is given.
        self_attention_mask: bool tensor `(batch, length, key_length)`.
        self_attention_cache / self_attention_cache_update_index: key/value
            cache of the self-attention, see `CrossModalAttention`.
        cross_attention_cache: precomputed image keys/values.
        return_attention_scores: bool, also return the cross-attention
            probabilities `(batch, num_heads, length, image_length)`.
        training: bool.

    Returns:
        The block output `(batch, length, hidden_dim)`, plus cross-attention
        scores if asked, plus the updated self-attention cache if one was given.

    Example:
    >>> block = TextDecoderBlock(num_heads=2, intermediate_dim=32)
    >>> tuple(block(keras.random.normal((2, 5, 16)), keras.random.normal((2, 9, 16))).shape)
    (2, 5, 16)
    """

    def __init__(
        self, num_heads, intermediate_dim, dropout=0.0, layer_norm_epsilon=1e-5, **kwargs
    ):
        super().__init__(**kwargs)
        if intermediate_dim < 1:
            raise ValueError(
                "`intermediate_dim` must be positive. "
                f"Received: intermediate_dim={intermediate_dim}"
            )
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.dropout = dropout
        self.layer_norm_epsilon = layer_norm_epsilon

        def norm(name):
            return keras.layers.LayerNormalization(
                epsilon=layer_norm_epsilon, dtype=self.dtype_policy, name=name
            )

        self.self_attention_norm = norm("self_attention_norm")
        self.self_attention = CrossModalAttention(
            num_heads, dropout=dropout, dtype=self.dtype_policy, name="self_attention"
        )
        self.cross_attention_norm = norm("cross_attention_norm")
        self.cross_attention = CrossModalAttention(
            num_heads, dropout=dropout, dtype=self.dtype_policy, name="cross_attention"
        )
        self.mlp_norm = norm("mlp_norm")
        self.mlp_intermediate = keras.layers.Dense(
            intermediate_dim, activation="gelu", dtype=self.dtype_policy, name="mlp_in"
        )
        self.mlp_output = None  # Built in build(): needs hidden_dim.
        self.residual_dropout = keras.layers.Dropout(
            dropout, dtype=self.dtype_policy, name="residual_dropout"
        )

    def build(self, text_shape, image_tokens_shape=None):
        hidden_dim = text_shape[-1]
        if image_tokens_shape is None:
            image_tokens_shape = (None, None, hidden_dim)
        self.self_attention_norm.build(text_shape)
        self.self_attention.build(text_shape, text_shape)
        self.cross_attention_norm.build(text_shape)
        self.cross_attention.build(text_shape, image_tokens_shape)
        self.mlp_norm.build(text_shape)
        self.mlp_intermediate.build(text_shape)
        self.mlp_output = keras.layers.Dense(
            hidden_dim, dtype=self.dtype_policy, name="mlp_out"
        )
        self.mlp_output.build(tuple(text_shape[:-1]) + (self.intermediate_dim,))
        self.built = True

    def call(
        self,
        text,
        image_tokens=None,
        self_attention_mask=None,
        self_attention_cache=None,
        self_attention_cache_update_index=None,
        cross_attention_cache=None,
        return_attention_scores=False,
        training=None,
    ):
        x = self.self_attention_norm(text)
        attended = self.self_attention(
            x,
            x,
            attention_mask=self_attention_mask,
            cache=self_attention_cache,
            cache_update_index=self_attention_cache_update_index,
            training=training,
        )
        if self_attention_cache is not None:
            attended, self_attention_cache = attended
        text = text + self.residual_dropout(attended, training=training)

        x = self.cross_attention_norm(text)
        cross = self.cross_attention(
            x,
            image_tokens,
            cache=cross_attention_cache,
            return_attention_scores=return_attention_scores,
            training=training,
        )
        scores = None
        if isinstance(cross, tuple):
            # (outputs, [scores], [cache]); the cross cache never changes.
            if return_attention_scores:
                scores = cross[1]
            cross = cross[0]
        text = text + self.residual_dropout(cross, training=training)

        x = self.mlp_output(self.mlp_intermediate(self.mlp_norm(text)))
        text = text + self.residual_dropout(x, training=training)

        results = (text,)
        if return_attention_scores:
            results += (scores,)
        if self_attention_cache is not None:
            results += (self_attention_cache,)
        return results[0] if len(results) == 1 else results

    def compute_output_shape(self, text_shape, image_tokens_shape=None):
        return text_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "dropout": self.dropout,
                "layer_norm_epsilon": self.layer_norm_epsilon,
            }
        )
        return config


def causal_mask(query_length, key_length, start_index=0):
    """Bool `(query_length, key_length)`: query `i` sees keys `<= start_index + i`."""
    rows = ops.arange(query_length)[:, None] + start_index
    cols = ops.arange(key_length)[None, :]
    return ops.greater_equal(rows, cols)
