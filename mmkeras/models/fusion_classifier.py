"""Image + text classification (and VQA) with a pluggable fusion layer."""

import keras
from keras import ops

from mmkeras.layers.fusion import get_fusion
from mmkeras.layers.image_encoder import ImageEncoder
from mmkeras.layers.text_encoder import TextEncoder
from mmkeras.models.image_text_model import ImageTextModel
from mmkeras.models.replica_utils import scale_for_replicas
from mmkeras.models.replica_utils import sum_over_replicas


@keras.saving.register_keras_serializable(package="mmkeras")
class FusionClassifier(ImageTextModel):
    """Predicts labels from an image and a text through a fusion layer.

    An `ImageEncoder` and a `TextEncoder` encode the two inputs into tokens
    and pooled vectors; a fusion layer (`mmkeras.layers.FUSION_LAYERS`:
    concat, add, weighted sum, gated, cross-attention, GCN, late) combines
    them, and a dense head gives one logit per class (late fusion gives the
    logits itself). Single-label data uses a softmax and cross-entropy;
    multi-label data a sigmoid per label, binary cross-entropy, and
    per-label decision thresholds (`thresholds`, tunable on validation data).

    Modality dropout (`modality_dropout`, in the spirit of ModDrop, Neverova
    et al., 2015): during training a fraction of the examples loses one whole
    modality (image or text, at even odds): its encoder outputs are zeroed,
    exactly as when a caller marks it missing with `image_present` /
    `text_present`. The model so learns to answer from either input alone,
    and the modality ablation of the evaluation (`accuracy_image_only`,
    `accuracy_text_only`) measures the same blanking.

    Args:
        image_encoder: an `ImageEncoder`.
        text_encoder: a `TextEncoder`.
        fusion: a fusion layer (see `mmkeras.layers.fusion`).
        num_classes: int, number of labels.
        label_names: optional list of `num_classes` label strings (exported).
        multi_label: bool, sigmoid per label instead of one softmax.
        text_preprocessor: optional `mmkeras.data.TextPreprocessor` (strings ->
            token ids and padding mask); saved with the model and used by
            `preprocess` and the export.
        image_size: int, images are resized to `(image_size, image_size)`.
        modality_dropout: float in [0, 1), fraction of training examples that
            lose one modality.
        head_dropout: float, dropout before the classification head.
        head_hidden_dim: int, width of a GELU hidden layer of the head (0: a
            linear head on the fused vector). VQA heads are usually two-layer
            MLPs (Anderson et al., 2018): a linear head on a pooled vector
            cannot combine two of its features non-linearly (e.g. "the asked
            colour is present" with "the question is negated").
        **kwargs: base model arguments.

    Call arguments:
        inputs: dict with `"images"` float `(batch, image_size, image_size, 3)`
            in `[0, 255]`, `"token_ids"` int `(batch, length)`,
            `"padding_mask"` bool `(batch, length)`, and optionally
            `"image_present"` / `"text_present"` float `(batch,)` (1 = present,
            0 = missing). Frozen encoders' cached features may stand in:
            `"image_features"` for `"images"` (`ImageEncoder.features`), and
            `"text_features"` next to the token ids (`TextEncoder.features`).
        training: bool.

    Returns:
        A dict with `"logits"` `(batch, num_classes)`.

    Example:
    >>> from mmkeras.layers import ConcatFusion, ImageEncoder, TextEncoder
    >>> model = FusionClassifier(
    ...     ImageEncoder(hidden_dim=16, stem_filters=(8, 16)),
    ...     TextEncoder(vocabulary_size=30, sequence_length=6, hidden_dim=16,
    ...                 num_layers=1, num_heads=2, intermediate_dim=32),
    ...     ConcatFusion(hidden_dim=16), num_classes=3, image_size=32)
    >>> outputs = model({"images": keras.random.uniform((2, 32, 32, 3), maxval=255),
    ...                  "token_ids": keras.ops.ones((2, 6), "int32"),
    ...                  "padding_mask": keras.ops.ones((2, 6), "bool")})
    >>> tuple(outputs["logits"].shape)
    (2, 3)
    """

    NESTED_LAYERS = ImageTextModel.NESTED_LAYERS + ("fusion",)

    def __init__(
        self,
        image_encoder,
        text_encoder,
        fusion,
        num_classes,
        label_names=None,
        multi_label=False,
        text_preprocessor=None,
        image_size=64,
        modality_dropout=0.0,
        head_dropout=0.1,
        head_hidden_dim=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(head_hidden_dim, bool) or not isinstance(head_hidden_dim, int) or head_hidden_dim < 0:
            raise ValueError(f"`head_hidden_dim` must be an int >= 0. Received: head_hidden_dim={head_hidden_dim}")
        if not isinstance(num_classes, int) or num_classes < 2 and not multi_label or num_classes < 1:
            raise ValueError(
                "`num_classes` must be an int >= 2 (>= 1 for multi-label). "
                f"Received: num_classes={num_classes}"
            )
        if label_names is not None and len(label_names) != num_classes:
            raise ValueError(
                f"`label_names` must have `num_classes` ({num_classes}) entries. "
                f"Received: {len(label_names)} label names"
            )
        if not 0.0 <= modality_dropout < 1.0:
            raise ValueError(
                f"`modality_dropout` must be in [0, 1). Received: modality_dropout={modality_dropout}"
            )
        if getattr(fusion, "produces_logits", False) and getattr(fusion, "num_classes", num_classes) != num_classes:
            raise ValueError(
                f"The late-fusion layer predicts {fusion.num_classes} classes, but "
                f"num_classes={num_classes}."
            )
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.fusion = fusion
        self.num_classes = num_classes
        self.label_names = list(label_names) if label_names is not None else None
        self.multi_label = bool(multi_label)
        self.text_preprocessor = text_preprocessor
        self.image_size = image_size
        self.modality_dropout = modality_dropout
        self.head_dropout = head_dropout
        self.head_hidden_dim = head_hidden_dim
        self.dropout_layer = keras.layers.Dropout(head_dropout, dtype=self.dtype_policy, name="head_dropout")
        self.head = None
        self.head_hidden = None
        if not getattr(fusion, "produces_logits", False):
            self.head = keras.layers.Dense(num_classes, dtype=self.dtype_policy, name="head")
            if head_hidden_dim:
                self.head_hidden = keras.layers.Dense(
                    head_hidden_dim, activation="gelu", dtype=self.dtype_policy, name="head_hidden"
                )
        self.seed_generator = keras.random.SeedGenerator(0, name="modality_dropout_seed")
        self.accuracy_metric = (
            keras.metrics.BinaryAccuracy(name="accuracy")
            if self.multi_label
            else keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        )

    # Building and saving.
    def build(self, inputs_shape):
        images_shape = tuple(inputs_shape["images"])
        tokens_shape = tuple(inputs_shape["token_ids"])
        if not self.image_encoder.built:
            self.image_encoder.build(images_shape)
        if not self.text_encoder.built:
            self.text_encoder.build(tokens_shape)
        image_out = self.image_encoder.compute_output_shape(images_shape)
        text_out = self.text_encoder.compute_output_shape(tokens_shape)
        if not self.fusion.built:
            self.fusion.build(image_out["tokens"], image_out["pooled"], text_out["tokens"], text_out["pooled"])
        if self.head is not None:
            fused_shape = self.fusion.compute_output_shape(
                image_out["tokens"], image_out["pooled"], text_out["tokens"], text_out["pooled"]
            )
            fused_shape = tuple(fused_shape)
            if self.head_hidden is not None:
                self.head_hidden.build(fused_shape)
                fused_shape = fused_shape[:-1] + (self.head_hidden_dim,)
            self.head.build(fused_shape)
        # Per-label decision thresholds of multi-label models (0.5 until tuned);
        # weights, so that they are saved and exported with the model.
        self.thresholds = self.add_weight(
            shape=(self.num_classes,), initializer=keras.initializers.Constant(0.5),
            trainable=False, name="thresholds",
        )
        self.built = True

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "image_encoder": keras.layers.serialize(self.image_encoder),
                "text_encoder": keras.layers.serialize(self.text_encoder),
                "fusion": keras.layers.serialize(self.fusion),
                "num_classes": self.num_classes,
                "label_names": self.label_names,
                "multi_label": self.multi_label,
                "text_preprocessor": (
                    keras.layers.serialize(self.text_preprocessor) if self.text_preprocessor is not None else None
                ),
                "image_size": self.image_size,
                "modality_dropout": self.modality_dropout,
                "head_dropout": self.head_dropout,
                "head_hidden_dim": self.head_hidden_dim,
            }
        )
        return config

    # Forward pass.
    def _presence(self, inputs, batch, training):
        image_present = inputs.get("image_present")
        text_present = inputs.get("text_present")
        image_present = ops.ones((batch,), self.compute_dtype) if image_present is None else ops.cast(
            image_present, self.compute_dtype)
        text_present = ops.ones((batch,), self.compute_dtype) if text_present is None else ops.cast(
            text_present, self.compute_dtype)
        if training and self.modality_dropout > 0:
            drop = keras.random.uniform((batch,), seed=self.seed_generator) < self.modality_dropout
            drop_image = keras.random.uniform((batch,), seed=self.seed_generator) < 0.5
            keep_image = ops.cast(ops.logical_not(ops.logical_and(drop, drop_image)), self.compute_dtype)
            keep_text = ops.cast(
                ops.logical_not(ops.logical_and(drop, ops.logical_not(drop_image))), self.compute_dtype
            )
            image_present, text_present = image_present * keep_image, text_present * keep_text
        return image_present, text_present

    def call(self, inputs, training=None):
        token_ids = inputs["token_ids"]
        padding_mask = inputs.get("padding_mask")
        if padding_mask is None:
            padding_mask = ops.not_equal(token_ids, 0)
        padding_mask = ops.cast(padding_mask, "bool")
        image = self.image_encoder.encode_inputs(inputs, training=training)
        text = self.text_encoder.encode_inputs(
            {**inputs, "token_ids": token_ids, "padding_mask": padding_mask}, training=training)
        batch = ops.shape(token_ids)[0]
        image_present, text_present = self._presence(inputs, batch, training)
        # A missing modality contributes zeros, whatever the fusion does with them.
        image_tokens = image["tokens"] * ops.cast(image_present[:, None, None], image["tokens"].dtype)
        image_pooled = image["pooled"] * ops.cast(image_present[:, None], image["pooled"].dtype)
        text_tokens = text["tokens"] * ops.cast(text_present[:, None, None], text["tokens"].dtype)
        text_pooled = text["pooled"] * ops.cast(text_present[:, None], text["pooled"].dtype)
        fused = self.fusion(
            image_tokens, image_pooled, text_tokens, text_pooled,
            text_padding_mask=padding_mask, training=training,
        )
        if self.head is None:
            logits = fused
        else:
            if self.head_hidden is not None:
                fused = self.head_hidden(self.dropout_layer(fused, training=training))
            logits = self.head(self.dropout_layer(fused, training=training))
        # Losses and probabilities in float32, also under mixed precision.
        return {"logits": ops.cast(logits, "float32")}

    def probabilities(self, logits):
        """Softmax (single-label) or per-label sigmoid (multi-label) of `logits`."""
        return ops.sigmoid(logits) if self.multi_label else ops.softmax(logits, axis=-1)

    def decisions(self, probabilities):
        """Class ids `(batch,)`, or multi-hot int `(batch, num_classes)` at `thresholds`."""
        if self.multi_label:
            # Strict, as `mmkeras.metrics.classification.best_thresholds` tunes them.
            return ops.cast(probabilities > ops.cast(self.thresholds, probabilities.dtype), "int64")
        return ops.argmax(probabilities, axis=-1)

    # Loss and metrics live on the model so that `fit` and the custom
    # distributed loop share one definition of the training step.
    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        logits = y_pred["logits"] if isinstance(y_pred, dict) else y_pred
        if self.multi_label:
            per_example = ops.mean(
                keras.losses.binary_crossentropy(
                    ops.expand_dims(ops.cast(y, logits.dtype), -1),
                    ops.expand_dims(logits, -1),
                    from_logits=True,
                ),
                axis=-1,
            )
        else:
            per_example = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
        weights = ops.ones_like(per_example) if sample_weight is None else ops.cast(sample_weight, per_example.dtype)
        # The mean over the examples of the *global* batch: each replica
        # divides its sum by the all-reduced example count.
        count = sum_over_replicas(ops.sum(weights))
        loss = ops.sum(per_example * weights) / ops.maximum(count, 1.0)
        for extra in self.losses:
            loss = loss + scale_for_replicas(ops.cast(ops.sum(extra), loss.dtype))
        return loss

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        logits = y_pred["logits"] if isinstance(y_pred, dict) else y_pred
        if self.multi_label:
            self.accuracy_metric.update_state(y, ops.sigmoid(logits), sample_weight=sample_weight)
        else:
            self.accuracy_metric.update_state(y, logits, sample_weight=sample_weight)
        return self.get_metrics_result()

    # Raw inputs (export and `classify`).
    def preprocess(self, images, texts):
        """Encoded JPEG/PNG bytes `(batch,)` and strings `(batch,)` -> model inputs (graph ops)."""
        from mmkeras.data.caption_pipeline import decode_images

        if self.text_preprocessor is None:
            raise ValueError("This FusionClassifier has no `text_preprocessor`; pass token ids instead.")
        text = self.text_preprocessor(texts)
        return {"images": decode_images(images, self.image_size), **text}

    def probabilities_from_raw(self, images, texts):
        """Probabilities `(batch, num_classes)` of encoded images and strings (graph ops)."""
        return self.probabilities(self(self.preprocess(images, texts), training=False)["logits"])

    def classify(self, images, texts):
        """Labels of raw inputs: `(label strings or lists, probabilities numpy array)`."""
        import numpy as np

        probabilities = ops.convert_to_numpy(self.probabilities_from_raw(images, texts))
        names = self.label_names or [str(i) for i in range(self.num_classes)]
        decisions = ops.convert_to_numpy(self.decisions(probabilities))
        if self.multi_label:
            labels = [[names[j] for j in np.flatnonzero(row)] for row in decisions]
        else:
            labels = [names[i] for i in decisions]
        return labels, probabilities


def fusion_arguments(fusion, hidden_dim, num_classes, num_heads=4, intermediate_dim=256, dropout=0.1,
                     fusion_weights="learned", fusion_num_layers=1, bidirectional=False,
                     gcn_cross_modal_edges="full"):
    """Constructor arguments of the fusion layer named `fusion` from plain settings."""
    args = {"hidden_dim": hidden_dim, "dropout": dropout}
    if fusion in ("weighted_sum", "late"):
        args["weights"] = fusion_weights
    if fusion == "cross_attention":
        args.update(num_heads=num_heads, num_layers=fusion_num_layers, intermediate_dim=intermediate_dim,
                    bidirectional=bidirectional)
    if fusion == "gcn":
        args.update(num_layers=fusion_num_layers, cross_modal_edges=gcn_cross_modal_edges)
    if fusion == "late":
        args["num_classes"] = num_classes
    return args


def build_fusion_classifier(
    num_classes,
    image_size=64,
    sequence_length=16,
    vocabulary_size=None,
    hidden_dim=128,
    num_heads=4,
    intermediate_dim=256,
    dropout=0.1,
    fusion="concat",
    fusion_weights="learned",
    fusion_num_layers=1,
    fusion_bidirectional=False,
    gcn_cross_modal_edges="full",
    modality_dropout=0.0,
    head_hidden_dim=0,
    label_names=None,
    multi_label=False,
    text_preprocessor=None,
    image_encoder_kwargs=None,
    text_encoder_kwargs=None,
    dtype=None,
):
    """Builds a `FusionClassifier` from plain hyperparameters, with its weights.

    `fusion_weights` is `"learned"` or a pair `(image, text)` of fixed weights
    (for `weighted_sum` and `late`). `image_encoder_kwargs` and
    `text_encoder_kwargs` go to `ImageEncoder` and `TextEncoder` (stem,
    backbone class + kwargs or preset, layers, pooling). Returns a built model
    (called once on zeros).
    """
    image_encoder = ImageEncoder(
        hidden_dim=hidden_dim, dtype=dtype, name="image_encoder", **{"dropout": 0.0, **(image_encoder_kwargs or {})}
    )
    text_kwargs = {"num_heads": num_heads, "intermediate_dim": intermediate_dim, "dropout": dropout}
    text_kwargs.update(text_encoder_kwargs or {})
    text_encoder = TextEncoder(
        vocabulary_size=vocabulary_size, sequence_length=sequence_length, hidden_dim=hidden_dim,
        dtype=dtype, name="text_encoder", **text_kwargs,
    )
    fusion_layer = get_fusion(
        fusion,
        dtype=dtype,
        name=f"{fusion}_fusion",
        **fusion_arguments(
            fusion, hidden_dim, num_classes, num_heads, intermediate_dim, dropout, fusion_weights,
            fusion_num_layers, fusion_bidirectional, gcn_cross_modal_edges,
        ),
    )
    model = FusionClassifier(
        image_encoder, text_encoder, fusion_layer, num_classes, label_names=label_names,
        multi_label=multi_label, text_preprocessor=text_preprocessor, image_size=image_size,
        modality_dropout=modality_dropout, head_dropout=dropout, head_hidden_dim=head_hidden_dim, dtype=dtype,
        name="fusion_classifier",
    )
    model(
        {
            "images": ops.zeros((1, image_size, image_size, 3)),
            "token_ids": ops.ones((1, sequence_length), "int32"),
            "padding_mask": ops.ones((1, sequence_length), "bool"),
        }
    )
    return model
