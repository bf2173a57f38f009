"""Graph fusion: a graph convolutional network over image and text tokens."""

import math

import keras
import numpy as np
from keras import ops

from mmkeras.layers.fusion_layer import FusionLayer


def grid_adjacency(num_tokens):
    """Adjacency `(num_tokens, num_tokens)` of image tokens, as a float32 array.

    Tokens on a square grid (`num_tokens` a perfect square, row-major order)
    are joined to their 4 neighbours; otherwise consecutive tokens form a
    chain. No self-loops: `normalize_adjacency` adds them.
    """
    adjacency = np.zeros((num_tokens, num_tokens), "float32")
    side = math.isqrt(num_tokens)
    if side * side == num_tokens:
        for row in range(side):
            for col in range(side):
                node = row * side + col
                if col + 1 < side:
                    adjacency[node, node + 1] = adjacency[node + 1, node] = 1.0
                if row + 1 < side:
                    adjacency[node, node + side] = adjacency[node + side, node] = 1.0
    else:
        for node in range(num_tokens - 1):
            adjacency[node, node + 1] = adjacency[node + 1, node] = 1.0
    return adjacency


def normalize_adjacency(adjacency, node_mask):
    """Symmetric normalisation `D^-1/2 (A + I) D^-1/2` over real nodes.

    Args:
        adjacency: float tensor `(batch, nodes, nodes)`, symmetric, no self-loops.
        node_mask: float tensor `(batch, nodes)`, 1 for real nodes. Padding
            nodes get no edges and no self-loop, so their rows and columns
            are zero and nothing flows to or from them.

    Returns:
        Float tensor `(batch, nodes, nodes)`.
    """
    node_mask = ops.cast(node_mask, adjacency.dtype)
    pair_mask = node_mask[:, :, None] * node_mask[:, None, :]
    with_loops = adjacency * pair_mask + node_mask[:, :, None] * ops.eye(
        ops.shape(adjacency)[-1], dtype=adjacency.dtype
    )
    degree = ops.sum(with_loops, axis=-1)
    # Padding nodes have degree 0: give them 0 instead of 1 / sqrt(0).
    safe = ops.where(degree > 0, degree, ops.ones_like(degree))
    inv_sqrt = ops.where(degree > 0, ops.rsqrt(safe), ops.zeros_like(degree))
    return inv_sqrt[:, :, None] * with_loops * inv_sqrt[:, None, :]


@keras.saving.register_keras_serializable(package="mmkeras")
class GCNFusion(FusionLayer):
    """Fuses modalities with a graph convolutional network over all tokens.

    The graph has one node per image grid token and per text token, both
    projected to `hidden_dim`. Edges: image tokens to their 4 neighbours on
    the square token grid (a chain if the token count is not a perfect
    square); each real text token to the next real one; and across
    modalities either every real text token to every image token
    (`"full"`) or each real text token to its `k` most cosine-similar image
    tokens (`"knn"`, symmetrised; similarity of the projected tokens, without
    gradient). Padding tokens get no edges. Each of `num_layers` graph
    convolutions computes `H' = act(Â H W)` with the normalised adjacency
    `Â = D^-1/2 (A + I) D^-1/2` of Kipf & Welling, 2017 ("Semi-Supervised
    Classification with Graph Convolutional Networks"). The readout is the
    mean over real nodes, projected to `hidden_dim`.

    Args:
        hidden_dim: int, width of the node states and of the fused vector.
        num_layers: int >= 1, number of graph convolutions.
        cross_modal_edges: `"full"` or `"knn"`.
        k: int, image neighbours per text token for `"knn"` (capped at the
            number of image tokens).
        activation: activation of each graph convolution.
        dropout: float, dropout on the node states before each convolution.
        **kwargs: base layer arguments.

    Call arguments:
        image_tokens: float tensor `(batch, num_image_tokens, image_dim)`, with
            a static `num_image_tokens`.
        image_pooled: float tensor `(batch, image_dim)`, unused.
        text_tokens: float tensor `(batch, text_length, text_dim)`.
        text_pooled: float tensor `(batch, text_dim)`, unused.
        text_padding_mask: optional bool tensor `(batch, text_length)`, `True`
            for real tokens.
        training: bool.

    Returns:
        Float tensor `(batch, hidden_dim)`.

    Example:
    >>> layer = GCNFusion(hidden_dim=8, cross_modal_edges="knn", k=2)
    >>> fused = layer(keras.random.normal((2, 4, 6)), keras.random.normal((2, 6)),
    ...               keras.random.normal((2, 3, 5)), keras.random.normal((2, 5)))
    >>> tuple(fused.shape)
    (2, 8)
    """

    def __init__(
        self,
        hidden_dim,
        num_layers=2,
        cross_modal_edges="full",
        k=4,
        activation="relu",
        dropout=0.0,
        **kwargs,
    ):
        super().__init__(hidden_dim=hidden_dim, dropout=dropout, **kwargs)
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(
                f"`num_layers` must be an int >= 1. Received: num_layers={num_layers}"
            )
        if cross_modal_edges not in ("full", "knn"):
            raise ValueError(
                "`cross_modal_edges` must be 'full' or 'knn'. "
                f"Received: cross_modal_edges={cross_modal_edges}"
            )
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"`k` must be a positive int. Received: k={k}")
        self.num_layers = num_layers
        self.cross_modal_edges = cross_modal_edges
        self.k = k
        self.activation = keras.activations.get(activation)
        self.make_projections()
        # No bias, as in H' = act(Â H W): a bias would also give padding
        # nodes a non-zero state (harmless, but it hides bugs in the masks).
        self.graph_layers = [
            keras.layers.Dense(
                hidden_dim, use_bias=False, dtype=self.dtype_policy, name=f"graph_conv_{i}"
            )
            for i in range(num_layers)
        ]
        self.node_dropout = keras.layers.Dropout(
            dropout, dtype=self.dtype_policy, name="node_dropout"
        )
        self.output_projection = keras.layers.Dense(
            hidden_dim, dtype=self.dtype_policy, name="output_projection"
        )

    def build(self, image_tokens_shape, image_pooled_shape, text_tokens_shape, text_pooled_shape):
        if image_tokens_shape[1] is None:
            raise ValueError(
                "`GCNFusion` needs a static number of image tokens to build the "
                f"grid graph. Received: image_tokens_shape={tuple(image_tokens_shape)}"
            )
        self.image_projection.build(image_tokens_shape)
        self.text_projection.build(text_tokens_shape)
        for layer in self.graph_layers:
            layer.build((None, None, self.hidden_dim))
        self.output_projection.build((image_tokens_shape[0], self.hidden_dim))
        self.built = True

    def normalized_adjacency(self, image_hidden, text_hidden, text_padding_mask=None):
        """The normalised adjacency `Â` of the token graph, float32.

        Args:
            image_hidden: float tensor `(batch, num_image_tokens, hidden_dim)`
                (projected image tokens; only their similarities are used).
            text_hidden: float tensor `(batch, text_length, hidden_dim)`.
            text_padding_mask: optional bool tensor `(batch, text_length)`.

        Returns:
            `(adjacency, node_mask)`: float32 tensors `(batch, nodes, nodes)`
            and `(batch, nodes)`; nodes are the image tokens, then the text
            tokens.
        """
        num_image = image_hidden.shape[1]
        if text_padding_mask is None:
            text_mask = ops.ones_like(text_hidden[..., 0], dtype="float32")
        else:
            text_mask = ops.cast(text_padding_mask, "float32")
        image_mask = ops.ones_like(image_hidden[..., 0], dtype="float32")
        ones = image_mask[:, :1, None]  # (batch, 1, 1), for broadcasting.

        image_image = ones * ops.convert_to_tensor(grid_adjacency(num_image))
        # Rank of each real token among the real tokens: consecutive real
        # tokens are joined even if padding sits between them.
        rank = ops.cumsum(text_mask, axis=-1)
        gap = ops.abs(rank[:, :, None] - rank[:, None, :])
        text_pairs = text_mask[:, :, None] * text_mask[:, None, :]
        text_text = ops.cast(ops.equal(gap, 1.0), "float32") * text_pairs

        if self.cross_modal_edges == "full":
            text_image = text_mask[:, :, None] * ops.ones_like(image_mask)[:, None, :]
        else:
            def unit(x):
                x = ops.cast(ops.stop_gradient(x), "float32")
                return x / ops.maximum(ops.norm(x, axis=-1, keepdims=True), 1e-12)

            similarity = ops.einsum("btd,bid->bti", unit(text_hidden), unit(image_hidden))
            _, nearest = ops.top_k(similarity, min(self.k, num_image))
            text_image = ops.sum(ops.one_hot(nearest, num_image, dtype="float32"), axis=2)
            text_image = ops.minimum(text_image, 1.0) * text_mask[:, :, None]
        # The cross block appears twice, transposed: the graph is undirected.
        adjacency = ops.concatenate(
            [
                ops.concatenate([image_image, ops.transpose(text_image, (0, 2, 1))], axis=-1),
                ops.concatenate([text_image, text_text], axis=-1),
            ],
            axis=1,
        )
        node_mask = ops.concatenate([image_mask, text_mask], axis=1)
        return normalize_adjacency(adjacency, node_mask), node_mask

    def call(
        self,
        image_tokens,
        image_pooled,
        text_tokens,
        text_pooled,
        text_padding_mask=None,
        training=None,
    ):
        image = self.image_projection(image_tokens)
        text = self.text_projection(text_tokens)
        adjacency, node_mask = self.normalized_adjacency(image, text, text_padding_mask)
        adjacency = ops.cast(adjacency, self.compute_dtype)
        nodes = ops.concatenate([image, text], axis=1)
        for layer in self.graph_layers:
            nodes = self.node_dropout(nodes, training=training)
            nodes = self.activation(ops.matmul(adjacency, layer(nodes)))
        return self.output_projection(self.masked_mean(nodes, node_mask))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_layers": self.num_layers,
                "cross_modal_edges": self.cross_modal_edges,
                "k": self.k,
                "activation": keras.activations.serialize(self.activation),
            }
        )
        return config
