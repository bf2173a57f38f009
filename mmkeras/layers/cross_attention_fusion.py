"""Cross-attention fusion: text tokens attend to image tokens (optionally both ways)."""

import keras
from keras import ops

from mmkeras.layers.cross_modal_attention import CrossModalAttention
from mmkeras.layers.fusion_layer import FusionLayer


@keras.saving.register_keras_serializable(package="mmkeras")
class _CrossAttentionBlock(keras.layers.Layer):
    """One post-LayerNorm block: cross-modal attention and a feed-forward network.

    `x = norm(query + attention(query, context))`, then
    `x = norm(x + ffn(x))`, as in the encoder-decoder blocks of Vaswani et
    al., 2017 without the self-attention sublayer. Used by
    `CrossAttentionFusion`, once per direction and layer.

    Args:
        num_heads: int, attention heads.
        intermediate_dim: int, hidden size of the feed-forward network.
        dropout: float, dropout on attention probabilities and residual branches.
        layer_norm_epsilon: float.
        **kwargs: base layer arguments.

    Call arguments:
        query: float tensor `(batch, query_length, hidden_dim)`.
        context: float tensor `(batch, context_length, context_dim)`.
        attention_mask: optional bool tensor broadcastable to `(batch,
            query_length, context_length)`, `True` = may attend.
        return_attention_scores: bool, also return the attention
            probabilities `(batch, num_heads, query_length, context_length)`.
        training: bool.

    Example:
    >>> block = _CrossAttentionBlock(num_heads=2, intermediate_dim=16)
    >>> tuple(block(keras.random.normal((2, 3, 8)), keras.random.normal((2, 4, 8))).shape)
    (2, 3, 8)
    """

    def __init__(self, num_heads, intermediate_dim, dropout=0.0, layer_norm_epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.dropout = dropout
        self.layer_norm_epsilon = layer_norm_epsilon
        self.attention = CrossModalAttention(
            num_heads, dropout=dropout, dtype=self.dtype_policy, name="attention"
        )
        self.attention_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, dtype=self.dtype_policy, name="attention_norm"
        )
        self.ffn_in = keras.layers.Dense(
            intermediate_dim, activation="gelu", dtype=self.dtype_policy, name="ffn_in"
        )
        self.ffn_out = None  # Built in build(): needs hidden_dim.
        self.ffn_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, dtype=self.dtype_policy, name="ffn_norm"
        )
        self.residual_dropout = keras.layers.Dropout(
            dropout, dtype=self.dtype_policy, name="residual_dropout"
        )

    def build(self, query_shape, context_shape):
        hidden_dim = query_shape[-1]
        self.attention.build(query_shape, context_shape)
        self.attention_norm.build(query_shape)
        self.ffn_in.build(query_shape)
        self.ffn_out = keras.layers.Dense(hidden_dim, dtype=self.dtype_policy, name="ffn_out")
        self.ffn_out.build(tuple(query_shape[:-1]) + (self.intermediate_dim,))
        self.ffn_norm.build(query_shape)
        self.built = True

    def call(self, query, context, attention_mask=None, return_attention_scores=False, training=None):
        attended, scores = self.attention(
            query,
            context,
            attention_mask=attention_mask,
            return_attention_scores=True,
            training=training,
        )
        x = self.attention_norm(query + self.residual_dropout(attended, training=training))
        x = self.ffn_norm(
            x + self.residual_dropout(self.ffn_out(self.ffn_in(x)), training=training)
        )
        return (x, scores) if return_attention_scores else x

    def compute_output_shape(self, query_shape, context_shape):
        return query_shape

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


@keras.saving.register_keras_serializable(package="mmkeras")
class CrossAttentionFusion(FusionLayer):
    """Fuses by letting text tokens attend to image tokens, then pooling the text.

    Text and image tokens are projected to `hidden_dim`; each of `num_layers`
    cross-attention blocks lets every text token attend to all image tokens
    through mmkeras' `CrossModalAttention` (residual, LayerNorm,
    feed-forward), as in the cross-attention of Vaswani et al., 2017. With
    `bidirectional=True` the image tokens attend to the real text tokens in
    the same layer as well (co-attention, Lu et al., 2019, "ViLBERT"): a
    hybrid of early and late fusion. The readout is the mean of the attended
    text tokens over real positions (concatenated with the mean of the
    attended image tokens when bidirectional), projected to `hidden_dim`.
    Padding positions never reach the output: they are left out of the
    readout and masked as keys of the image-to-text attention.

    Args:
        hidden_dim: int, width of the attended tokens and the fused vector;
            divisible by `num_heads`.
        num_heads: int, attention heads.
        num_layers: int, number of cross-attention blocks.
        intermediate_dim: int, feed-forward width; defaults to `4 * hidden_dim`.
        dropout: float, dropout on attention and residual branches.
        bidirectional: bool, also let image tokens attend to text tokens.
        layer_norm_epsilon: float.
        **kwargs: base layer arguments.

    Call arguments:
        image_tokens: float tensor `(batch, num_image_tokens, image_dim)`.
        image_pooled: float tensor `(batch, image_dim)`, unused.
        text_tokens: float tensor `(batch, text_length, text_dim)`.
        text_pooled: float tensor `(batch, text_dim)`, unused.
        text_padding_mask: optional bool tensor `(batch, text_length)`, `True`
            for real tokens.
        training: bool.
        return_attention_scores: bool, also return the text-to-image
            attention probabilities of every layer.

    Returns:
        The fused vector `(batch, hidden_dim)`; with `return_attention_scores`
        a tuple `(fused, scores)`, `scores` a list of `num_layers` tensors
        `(batch, num_heads, text_length, num_image_tokens)`.

    Example:
    >>> layer = CrossAttentionFusion(hidden_dim=8, num_heads=2, bidirectional=True)
    >>> fused, scores = layer(
    ...     keras.random.normal((2, 4, 6)), keras.random.normal((2, 6)),
    ...     keras.random.normal((2, 3, 5)), keras.random.normal((2, 5)),
    ...     return_attention_scores=True)
    >>> tuple(fused.shape), tuple(scores[0].shape)
    ((2, 8), (2, 2, 3, 4))
    """

    def __init__(
        self,
        hidden_dim,
        num_heads=4,
        num_layers=1,
        intermediate_dim=None,
        dropout=0.0,
        bidirectional=False,
        layer_norm_epsilon=1e-5,
        **kwargs,
    ):
        super().__init__(hidden_dim=hidden_dim, dropout=dropout, **kwargs)
        if not isinstance(num_heads, int) or num_heads < 1 or hidden_dim % num_heads:
            raise ValueError(
                "`num_heads` must be a positive int dividing `hidden_dim` "
                f"({hidden_dim}). Received: num_heads={num_heads}"
            )
        if not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(
                f"`num_layers` must be a positive int. Received: num_layers={num_layers}"
            )
        if intermediate_dim is not None and intermediate_dim < 1:
            raise ValueError(
                f"`intermediate_dim` must be positive. Received: intermediate_dim={intermediate_dim}"
            )
        self.num_heads = num_heads
        self.num_layers = num_layers
        self.intermediate_dim = intermediate_dim
        self.bidirectional = bool(bidirectional)
        self.layer_norm_epsilon = layer_norm_epsilon
        ffn_dim = intermediate_dim or 4 * hidden_dim

        def blocks(prefix):
            return [
                _CrossAttentionBlock(
                    num_heads,
                    ffn_dim,
                    dropout=dropout,
                    layer_norm_epsilon=layer_norm_epsilon,
                    dtype=self.dtype_policy,
                    name=f"{prefix}_{i}",
                )
                for i in range(num_layers)
            ]

        self.make_projections()
        self.text_blocks = blocks("text_to_image")
        self.image_blocks = blocks("image_to_text") if self.bidirectional else []
        self.output_projection = keras.layers.Dense(
            hidden_dim, dtype=self.dtype_policy, name="output_projection"
        )

    def build(self, image_tokens_shape, image_pooled_shape, text_tokens_shape, text_pooled_shape):
        self.text_projection.build(text_tokens_shape)
        self.image_projection.build(image_tokens_shape)
        text_shape = tuple(text_tokens_shape[:-1]) + (self.hidden_dim,)
        image_shape = tuple(image_tokens_shape[:-1]) + (self.hidden_dim,)
        for block in self.text_blocks:
            block.build(text_shape, image_shape)
        for block in self.image_blocks:
            block.build(image_shape, text_shape)
        readout_dim = self.hidden_dim * (2 if self.bidirectional else 1)
        self.output_projection.build((text_tokens_shape[0], readout_dim))
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
        mask = self.padding_mask(text_tokens, text_padding_mask)
        text = self.text_projection(text_tokens)
        image = self.image_projection(image_tokens)
        # Image queries may attend only to real text keys: (batch, 1, text_length)
        # broadcasts over the image queries.
        image_to_text_mask = ops.greater(mask, 0)[:, None, :]
        scores = []
        for i in range(self.num_layers):
            # Both directions read the previous layer's states (co-attention).
            new_text, layer_scores = self.text_blocks[i](
                text, image, return_attention_scores=True, training=training
            )
            if self.bidirectional:
                image = self.image_blocks[i](
                    image, text, attention_mask=image_to_text_mask, training=training
                )
            text = new_text
            scores.append(layer_scores)
        readout = self.masked_mean(text, mask)
        if self.bidirectional:
            readout = ops.concatenate([readout, ops.mean(image, axis=1)], axis=-1)
        fused = self.output_projection(readout)
        return (fused, scores) if return_attention_scores else fused

    def compute_output_spec(
        self,
        image_tokens,
        image_pooled,
        text_tokens,
        text_pooled,
        text_padding_mask=None,
        training=None,
        return_attention_scores=False,
    ):
        # Overridden (not only compute_output_shape) because the output
        # structure depends on `return_attention_scores`.
        fused = keras.KerasTensor((image_tokens.shape[0], self.hidden_dim), dtype=self.compute_dtype)
        if not return_attention_scores:
            return fused
        score_shape = (image_tokens.shape[0], self.num_heads, text_tokens.shape[1], image_tokens.shape[1])
        return fused, [
            keras.KerasTensor(score_shape, dtype=self.compute_dtype) for _ in range(self.num_layers)
        ]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "num_layers": self.num_layers,
                "intermediate_dim": self.intermediate_dim,
                "bidirectional": self.bidirectional,
                "layer_norm_epsilon": self.layer_norm_epsilon,
            }
        )
        return config
