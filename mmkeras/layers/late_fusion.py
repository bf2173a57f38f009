"""Late fusion: one classifier head per modality, logits averaged with weights."""

import keras
from keras import ops

from mmkeras.layers.fusion_layer import (
    FusionLayer,
    WeightedModalities,
    check_modality_weights,
    modality_weights,
)


@keras.saving.register_keras_serializable(package="mmkeras")
class LateFusion(WeightedModalities, FusionLayer):
    """Classifies each modality on its own and averages the logits.

    Each pooled vector goes through its own small head (dense `hidden_dim`
    with ReLU, dropout, dense `num_classes`), and the two logit vectors are
    combined as `w_img * logits_img + w_text * logits_text`. The weights are
    fixed, or learned as two softmax-normalised logits. Unlike the other
    fusion layers it returns class logits (`produces_logits = True`), so a
    classifier uses its output directly instead of adding a head.

    Args:
        num_classes: int, number of output classes.
        hidden_dim: int, width of the hidden layer of each head.
        weights: `"learned"`, or a pair `(w_img, w_text)` of non-negative
            floats summing to 1.
        dropout: float, dropout inside each head.
        **kwargs: base layer arguments.

    Call arguments:
        image_tokens: float tensor `(batch, num_image_tokens, image_dim)`, unused.
        image_pooled: float tensor `(batch, image_dim)`.
        text_tokens: float tensor `(batch, text_length, text_dim)`, unused.
        text_pooled: float tensor `(batch, text_dim)`.
        text_padding_mask: optional bool tensor `(batch, text_length)`, unused.
        training: bool.

    Returns:
        Float logits `(batch, num_classes)`.

    Example:
    >>> layer = LateFusion(num_classes=3, hidden_dim=8)
    >>> logits = layer(keras.random.normal((2, 4, 6)), keras.random.normal((2, 6)),
    ...                keras.random.normal((2, 3, 5)), keras.random.normal((2, 5)))
    >>> tuple(logits.shape)
    (2, 3)
    """

    produces_logits = True

    def __init__(self, num_classes, hidden_dim, weights="learned", dropout=0.0, **kwargs):
        super().__init__(hidden_dim=hidden_dim, dropout=dropout, **kwargs)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(
                f"`num_classes` must be a positive int. Received: num_classes={num_classes}"
            )
        self.num_classes = num_classes
        # `self.weights` is the Keras list of variables; keep the argument apart.
        self.fusion_weights = check_modality_weights(weights)

        def head(prefix):
            return [
                keras.layers.Dense(
                    hidden_dim, activation="relu", dtype=self.dtype_policy, name=f"{prefix}_hidden"
                ),
                keras.layers.Dropout(dropout, dtype=self.dtype_policy, name=f"{prefix}_dropout"),
                keras.layers.Dense(num_classes, dtype=self.dtype_policy, name=f"{prefix}_logits"),
            ]

        self.image_head = head("image")
        self.text_head = head("text")
        self.weight_logits = None

    def build(self, image_tokens_shape, image_pooled_shape, text_tokens_shape, text_pooled_shape):
        for head, shape in ((self.image_head, image_pooled_shape), (self.text_head, text_pooled_shape)):
            hidden, dropout, logits = head
            hidden.build(shape)
            logits.build((shape[0], self.hidden_dim))
        self.build_modality_weights()
        self.built = True


    @staticmethod
    def _run_head(head, x, training):
        hidden, dropout, logits = head
        return logits(dropout(hidden(x), training=training))

    def head_logits(self, image_pooled, text_pooled, training=None):
        """Returns the logits of each head, `(image_logits, text_logits)`."""
        return (
            self._run_head(self.image_head, image_pooled, training),
            self._run_head(self.text_head, text_pooled, training),
        )

    def call(
        self,
        image_tokens,
        image_pooled,
        text_tokens,
        text_pooled,
        text_padding_mask=None,
        training=None,
    ):
        image_logits, text_logits = self.head_logits(image_pooled, text_pooled, training)
        w_img, w_text = modality_weights(self.fusion_weights, self.weight_logits)
        return (
            ops.cast(w_img, self.compute_dtype) * image_logits
            + ops.cast(w_text, self.compute_dtype) * text_logits
        )

    def compute_output_shape(
        self, image_tokens_shape, image_pooled_shape, text_tokens_shape, text_pooled_shape
    ):
        return (image_pooled_shape[0], self.num_classes)

    def get_config(self):
        config = super().get_config()
        weights = self.fusion_weights
        config.update(
            {
                "num_classes": self.num_classes,
                "weights": weights if weights == "learned" else list(weights),
            }
        )
        return config
