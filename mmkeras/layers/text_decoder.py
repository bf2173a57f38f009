"""Transformer text decoder conditioned on image tokens, with a key/value cache."""

import keras
import keras_hub
from keras import ops

from mmkeras.layers.text_decoder_block import TextDecoderBlock, causal_mask


@keras.saving.register_keras_serializable(package="mmkeras")
class TextDecoder(keras.layers.Layer):
    """Autoregressive Transformer decoder over text, attending to image tokens.

    Token and learned position embeddings feed `num_layers` pre-LayerNorm blocks
    of causal self-attention, `CrossModalAttention` over the image tokens and a
    feed-forward network (Vaswani et al., 2017). Output logits reuse the token
    embedding matrix (Press & Wolf, 2017), which halves the parameters of small
    vocabularies' heads and trains faster from scratch.

    Args:
        vocabulary_size: int, number of token ids.
        sequence_length: int, maximum number of tokens (position embeddings).
        hidden_dim: int, width of the decoder.
        num_layers: int, number of decoder blocks.
        num_heads: int, attention heads.
        intermediate_dim: int, feed-forward hidden size.
        dropout: float, dropout rate.
        layer_norm_epsilon: float.
        **kwargs: base layer arguments.

    Call arguments:
        token_ids: int tensor `(batch, length)`, `length <= sequence_length`.
        image_tokens: float tensor `(batch, image_length, image_dim)`.
        padding_mask: optional bool/int tensor `(batch, length)`; padded keys
            are never attended to.
        return_attention_scores: bool; also return a list with each block's
            cross-attention probabilities `(batch, heads, length, image_length)`.
        training: bool.

    Returns:
        Logits `(batch, length, vocabulary_size)` (float32), and the score list
        if asked.

    Example:
    >>> decoder = TextDecoder(vocabulary_size=20, sequence_length=8, hidden_dim=16,
    ...                       num_layers=1, num_heads=2, intermediate_dim=32)
    >>> logits = decoder(ops.ones((2, 8), "int32"), keras.random.normal((2, 4, 16)))
    >>> tuple(logits.shape)
    (2, 8, 20)
    """

    def __init__(
        self,
        vocabulary_size,
        sequence_length,
        hidden_dim=128,
        num_layers=2,
        num_heads=4,
        intermediate_dim=512,
        dropout=0.1,
        layer_norm_epsilon=1e-5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for arg, value in (
            ("vocabulary_size", vocabulary_size),
            ("sequence_length", sequence_length),
            ("hidden_dim", hidden_dim),
            ("num_layers", num_layers),
            ("num_heads", num_heads),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{arg}` must be a positive int. Received: {arg}={value}")
        if hidden_dim % num_heads:
            raise ValueError(
                "`hidden_dim` must be divisible by `num_heads`. "
                f"Received: hidden_dim={hidden_dim}, num_heads={num_heads}"
            )
        self.vocabulary_size = vocabulary_size
        self.sequence_length = sequence_length
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.dropout = dropout
        self.layer_norm_epsilon = layer_norm_epsilon

        self.token_embedding = keras_hub.layers.ReversibleEmbedding(
            vocabulary_size,
            hidden_dim,
            tie_weights=True,
            embeddings_initializer=keras.initializers.RandomNormal(stddev=0.02),
            dtype=self.dtype_policy,
            name="token_embedding",
        )
        self.position_embedding = keras_hub.layers.PositionEmbedding(
            sequence_length, dtype=self.dtype_policy, name="position_embedding"
        )
        self.embedding_dropout = keras.layers.Dropout(
            dropout, dtype=self.dtype_policy, name="embedding_dropout"
        )
        self.blocks = [
            TextDecoderBlock(
                num_heads,
                intermediate_dim,
                dropout=dropout,
                layer_norm_epsilon=layer_norm_epsilon,
                dtype=self.dtype_policy,
                name=f"block_{i}",
            )
            for i in range(num_layers)
        ]
        self.final_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, dtype=self.dtype_policy, name="final_norm"
        )

    def build(self, token_ids_shape, image_tokens_shape=None):
        hidden_shape = tuple(token_ids_shape) + (self.hidden_dim,)
        self.token_embedding.build(token_ids_shape)
        self.position_embedding.build(hidden_shape)
        for block in self.blocks:
            block.build(hidden_shape, image_tokens_shape)
        self.final_norm.build(hidden_shape)
        self.built = True

    @property
    def head_dim(self):
        return self.hidden_dim // self.num_heads

    def _embed(self, token_ids, start_index=0, training=None):
        x = self.token_embedding(token_ids)
        x = x + self.position_embedding(x, start_index=start_index)
        return self.embedding_dropout(x, training=training)

    def _logits(self, hidden):
        # Logits in float32: the softmax cross-entropy and sampling need it.
        return ops.cast(self.token_embedding(hidden, reverse=True), "float32")

    def call(
        self,
        token_ids,
        image_tokens,
        padding_mask=None,
        return_attention_scores=False,
        training=None,
    ):
        length = ops.shape(token_ids)[1]
        mask = causal_mask(length, length)[None, :, :]
        if padding_mask is not None:
            mask = ops.logical_and(mask, ops.cast(padding_mask, "bool")[:, None, :])
        x = self._embed(token_ids, training=training)
        all_scores = []
        for block in self.blocks:
            x = block(
                x,
                image_tokens,
                self_attention_mask=mask,
                return_attention_scores=return_attention_scores,
                training=training,
            )
            if return_attention_scores:
                x, scores = x
                all_scores.append(scores)
        logits = self._logits(self.final_norm(x))
        if return_attention_scores:
            return logits, all_scores
        return logits

    def initial_cache(self, batch_size, max_length):
        """Empty self-attention cache for generation.

        Returns a tuple with one `(key, value)` pair of zeros `(batch_size,
        num_heads, max_length, head_dim)` per block (heads first, as
        `CrossModalAttention` caches keys and values).
        """
        shape = (batch_size, self.num_heads, max_length, self.head_dim)
        return tuple(
            (ops.zeros(shape, self.compute_dtype), ops.zeros(shape, self.compute_dtype))
            for _ in self.blocks
        )

    def image_cache(self, image_tokens):
        """Image keys/values of every block's cross-attention, projected once.

        They never change during generation, so they stay out of the loop
        state: one projection per caption instead of one per generated token.
        """
        return tuple(block.cross_attention.compute_cache(image_tokens) for block in self.blocks)

    def call_with_cache(
        self, token_ids, cache, cache_update_index, image_cache, return_attention_scores=False
    ):
        """Runs the decoder on new tokens, reading and updating the cache.

        Args:
            token_ids: int tensor `(batch, new_length)` of tokens at positions
                `cache_update_index ...`.
            cache: self-attention cache from `initial_cache` (or a previous call).
            cache_update_index: int scalar, position of `token_ids[:, 0]`.
            image_cache: from `image_cache`.
            return_attention_scores: bool; also return a list with each
                block's cross-attention probabilities `(batch, heads,
                new_length, image_length)`.

        Returns:
            `(logits, hidden_states, cache)` for the new positions, and the
            score list if asked.
        """
        new_length = ops.shape(token_ids)[1]
        max_length = ops.shape(cache[0][0])[2]
        x = self._embed(token_ids, start_index=cache_update_index)
        mask = causal_mask(new_length, max_length, start_index=cache_update_index)
        mask = mask[None, :, :]
        updated = []
        all_scores = []
        for block, layer_cache, layer_image_cache in zip(self.blocks, cache, image_cache):
            outputs = block(
                x,
                self_attention_mask=mask,
                self_attention_cache=layer_cache,
                self_attention_cache_update_index=cache_update_index,
                cross_attention_cache=layer_image_cache,
                return_attention_scores=return_attention_scores,
            )
            if return_attention_scores:
                x, scores, layer_cache = outputs
                all_scores.append(scores)
            else:
                x, layer_cache = outputs
            updated.append(layer_cache)
        hidden = self.final_norm(x)
        if return_attention_scores:
            return self._logits(hidden), hidden, tuple(updated), all_scores
        return self._logits(hidden), hidden, tuple(updated)

    def compute_output_shape(self, token_ids_shape, image_tokens_shape=None):
        return tuple(token_ids_shape) + (self.vocabulary_size,)

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
                "layer_norm_epsilon": self.layer_norm_epsilon,
            }
        )
        return config
