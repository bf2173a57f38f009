"""CLIP-style contrastive dual encoder: image and text towers in one embedding space."""

import math

import keras
from keras import ops

from mmkeras.layers.image_encoder import ImageEncoder
from mmkeras.layers.text_encoder import TextEncoder
from mmkeras.models import contrastive_losses
from mmkeras.models.image_text_model import ImageTextModel
from mmkeras.models.replica_utils import gather_over_replicas
from mmkeras.models.replica_utils import scale_for_replicas
from mmkeras.models.replica_utils import sum_over_replicas


@keras.saving.register_keras_serializable(package="mmkeras")
class ClipValue(keras.constraints.Constraint):
    """Clips a weight into `[min_value, max_value]` after every optimizer update.

    OpenCLIP clamps the log logit scale at log(100) the same way: in place,
    after the step, so the forward pass sees the parameter itself.
    """

    def __init__(self, min_value, max_value):
        self.min_value = float(min_value)
        self.max_value = float(max_value)

    def __call__(self, w):
        return ops.clip(w, self.min_value, self.max_value)

    def get_config(self):
        return {"min_value": self.min_value, "max_value": self.max_value}


@keras.saving.register_keras_serializable(package="mmkeras")
class DualEncoder(ImageTextModel):
    """Embeds images and texts into one L2-normalised space, trained contrastively.

    An `ImageEncoder` and a `TextEncoder` give pooled vectors; linear
    projection heads map both to `projection_dim`, and the embeddings are
    L2-normalised, so a dot product is a cosine similarity (CLIP, Radford et
    al., 2021). Training contrasts every image of the global batch with every
    text:

    - `loss="infonce"`: symmetric InfoNCE with a learnable inverse
      temperature; `log(logit_scale)` starts at `log(1 / 0.07)` and is kept
      within `[0, log(max_logit_scale)]` (100), as CLIP and OpenCLIP do.
    - `loss="sigmoid"`: SigLIP's pairwise sigmoid loss (Zhai et al., 2023),
      with a learnable scale (starts at `log 10`) and bias (starts at -10).

    Under a multi-replica strategy the embeddings of all replicas are
    gathered, so the negatives are those of the whole global batch, and the
    gradients equal a single device's on that batch. Captions that are the
    same token sequence count as positives of each other (see
    `contrastive_losses.positive_mask`). Temperature and bias are excluded
    from weight decay when the optimizer supports it.

    Args:
        image_encoder: an `ImageEncoder` (random, or a pretrained preset backbone).
        text_encoder: a `TextEncoder` (random, or a pretrained preset backbone).
        projection_dim: int, width of the shared embedding space.
        loss: `"infonce"` or `"sigmoid"`.
        logit_scale_init: float, initial inverse temperature (default
            `1 / 0.07` for InfoNCE, 10 for sigmoid).
        logit_bias_init: float, initial bias of the sigmoid loss.
        max_logit_scale: float, upper clip of the inverse temperature.
        text_preprocessor: optional `mmkeras.data.TextPreprocessor` (strings ->
            token ids and padding mask), saved with the model and used by the
            export and `embed_raw_texts`.
        image_size: int, images are resized to `(image_size, image_size)`.
        **kwargs: base model arguments.

    Call arguments:
        inputs: dict with `"images"` float `(batch, image_size, image_size, 3)`
            in `[0, 255]` (or `"image_features"`, a frozen image encoder's
            cached features) and/or `"token_ids"` int `(batch, length)` with
            `"padding_mask"` `(batch, length)` (and optionally a frozen text
            encoder's cached `"text_features"`, see `TextEncoder.features`).
        training: bool.

    Returns:
        A dict with `"image_embeddings"` and/or `"text_embeddings"`, float32
        `(batch, projection_dim)`, unit norm.

    Example:
    >>> model = DualEncoder(
    ...     ImageEncoder(hidden_dim=16, stem_filters=(8, 16)),
    ...     TextEncoder(vocabulary_size=30, sequence_length=6, hidden_dim=16,
    ...                 num_layers=1, num_heads=2, intermediate_dim=32),
    ...     projection_dim=8, image_size=32)
    >>> out = model({"images": keras.random.uniform((2, 32, 32, 3), maxval=255),
    ...              "token_ids": keras.ops.ones((2, 6), "int32"),
    ...              "padding_mask": keras.ops.ones((2, 6), "bool")})
    >>> tuple(out["image_embeddings"].shape), tuple(out["text_embeddings"].shape)
    ((2, 8), (2, 8))
    """

    def __init__(
        self,
        image_encoder,
        text_encoder,
        projection_dim=128,
        loss="infonce",
        logit_scale_init=None,
        logit_bias_init=-10.0,
        max_logit_scale=100.0,
        text_preprocessor=None,
        image_size=64,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if loss not in contrastive_losses.LOSSES:
            raise ValueError(f"`loss` must be one of {contrastive_losses.LOSSES}. Received: loss={loss!r}")
        if isinstance(projection_dim, bool) or not isinstance(projection_dim, int) or projection_dim < 1:
            raise ValueError(f"`projection_dim` must be a positive int. Received: projection_dim={projection_dim}")
        if logit_scale_init is None:
            logit_scale_init = 1.0 / 0.07 if loss == "infonce" else 10.0
        if not 1.0 <= float(logit_scale_init) <= float(max_logit_scale):
            raise ValueError(
                "`logit_scale_init` must be in [1, max_logit_scale]. "
                f"Received: logit_scale_init={logit_scale_init}, max_logit_scale={max_logit_scale}"
            )
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.projection_dim = projection_dim
        self.loss_name = loss
        self.logit_scale_init = float(logit_scale_init)
        self.logit_bias_init = float(logit_bias_init)
        self.max_logit_scale = float(max_logit_scale)
        self.text_preprocessor = text_preprocessor
        self.image_size = image_size
        self.image_projection = keras.layers.Dense(
            projection_dim, use_bias=False, dtype=self.dtype_policy, name="image_projection")
        self.text_projection = keras.layers.Dense(
            projection_dim, use_bias=False, dtype=self.dtype_policy, name="text_projection")
        self.retrieval_accuracy = keras.metrics.Mean(name="accuracy")

    # Building and saving.
    def build(self, inputs_shape):
        images_shape = tuple(inputs_shape["images"])
        tokens_shape = tuple(inputs_shape["token_ids"])
        if not self.image_encoder.built:
            self.image_encoder.build(images_shape)
        if not self.text_encoder.built:
            self.text_encoder.build(tokens_shape)
        self.image_projection.build(self.image_encoder.compute_output_shape(images_shape)["pooled"])
        self.text_projection.build(self.text_encoder.compute_output_shape(tokens_shape)["pooled"])
        # Learned in log space, so the scale stays positive.
        self.log_logit_scale = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(math.log(self.logit_scale_init)),
            constraint=ClipValue(0.0, math.log(self.max_logit_scale)), name="log_logit_scale",
        )
        self.logit_bias = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(self.logit_bias_init),
            trainable=self.loss_name == "sigmoid", name="logit_bias",
        )
        self.built = True

    def get_config(self):
        config = super().get_config()
        config.update({
            "image_encoder": keras.layers.serialize(self.image_encoder),
            "text_encoder": keras.layers.serialize(self.text_encoder),
            "projection_dim": self.projection_dim,
            "loss": self.loss_name,
            "logit_scale_init": self.logit_scale_init,
            "logit_bias_init": self.logit_bias_init,
            "max_logit_scale": self.max_logit_scale,
            "text_preprocessor": (
                keras.layers.serialize(self.text_preprocessor) if self.text_preprocessor is not None else None),
            "image_size": self.image_size,
        })
        return config

    def compile(self, *args, **kwargs):
        super().compile(*args, **kwargs)
        # CLIP decays neither the temperature nor biases and gains.
        optimizer = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        if getattr(optimizer, "weight_decay", None) and hasattr(optimizer, "exclude_from_weight_decay"):
            optimizer.exclude_from_weight_decay(var_list=[self.log_logit_scale, self.logit_bias])

    def compile_from_config(self, config):
        # Keras skips a custom `compile` when loading unless this is overridden;
        # the saved optimizer config goes through `compile` above.
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    # Forward pass.
    @property
    def logit_scale(self):
        """The inverse temperature `exp(log_logit_scale)` (float32 scalar)."""
        return ops.exp(ops.cast(self.log_logit_scale, "float32"))

    def _normalize(self, x):
        x = ops.cast(x, "float32")
        return x / ops.maximum(ops.sqrt(ops.sum(ops.square(x), axis=-1, keepdims=True)), 1e-12)

    def image_embeddings(self, inputs, training=None):
        """Unit-norm embeddings of `inputs["images"]` (or cached `"image_features"`)."""
        pooled = self.image_encoder.encode_inputs(inputs, training=training)["pooled"]
        return self._normalize(self.image_projection(pooled))

    def text_embeddings(self, token_ids, padding_mask=None, training=None):
        """Unit-norm embeddings of token ids `(batch, length)`."""
        return self.encode_texts({"token_ids": token_ids, "padding_mask": padding_mask}, training=training)

    def encode_texts(self, inputs, training=None):
        """Unit-norm embeddings of `inputs["token_ids"]` (or cached `"text_features"`) and `"padding_mask"`."""
        pooled = self.text_encoder.encode_inputs(inputs, training=training)["pooled"]
        return self._normalize(self.text_projection(pooled))

    def call(self, inputs, training=None):
        outputs = {}
        if "images" in inputs or "image_features" in inputs:
            outputs["image_embeddings"] = self.image_embeddings(inputs, training=training)
        if "token_ids" in inputs:
            outputs["text_embeddings"] = self.encode_texts(inputs, training=training)
        return outputs

    # Loss and metrics on the model: `fit` and the distributed loop share them.
    def _contrast(self, x, y_pred):
        local_image, local_text = y_pred["image_embeddings"], y_pred["text_embeddings"]
        all_image, offset = gather_over_replicas(local_image)
        all_text, _ = gather_over_replicas(local_text)
        token_ids = ops.cast(x["token_ids"], "int32")
        all_tokens, _ = gather_over_replicas(token_ids)
        positives = contrastive_losses.positive_mask(token_ids, all_tokens, offset)
        return local_image, local_text, all_image, all_text, positives

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        local_image, local_text, all_image, all_text, positives = self._contrast(x, y_pred)
        if self.loss_name == "infonce":
            terms = contrastive_losses.infonce_terms(
                local_image, local_text, all_image, all_text, self.logit_scale, positives)
        else:
            terms = contrastive_losses.sigmoid_terms(
                local_image, all_text, self.logit_scale, ops.cast(self.logit_bias, "float32"), positives)
        # The mean over the global batch: each replica divides its rows' sum
        # by the all-reduced row count.
        count = sum_over_replicas(ops.cast(ops.shape(local_image)[0], "float32"))
        loss = ops.sum(terms) / ops.maximum(count, 1.0)
        for extra in self.losses:
            loss = loss + scale_for_replicas(ops.cast(ops.sum(extra), loss.dtype))
        return loss

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        # In-batch retrieval accuracy: the best match of each image (text) is
        # one of its positives, over the global batch.
        local_image, local_text, all_image, all_text, positives = self._contrast(x, y_pred)
        self.retrieval_accuracy.update_state(
            contrastive_losses.retrieval_hits(local_image, local_text, all_image, all_text, positives))
        return self.get_metrics_result()

    # Raw inputs (export, search).
    def embed_raw_images(self, images, max_pixels=None):
        """Encoded JPEG/PNG bytes `(batch,)` -> embeddings `(batch, projection_dim)` (graph ops)."""
        from mmkeras.data.caption_pipeline import decode_images

        kwargs = {} if max_pixels is None else {"max_pixels": max_pixels}
        pixels = decode_images(images, self.image_size, **kwargs)
        return self.image_embeddings({"images": pixels}, training=False)

    def embed_raw_texts(self, texts):
        """UTF-8 strings `(batch,)` -> embeddings `(batch, projection_dim)` (graph ops)."""
        if self.text_preprocessor is None:
            raise ValueError("This DualEncoder has no `text_preprocessor`; embed token ids instead.")
        text = self.text_preprocessor(texts)
        return self.text_embeddings(text["token_ids"], text["padding_mask"], training=False)


def build_dual_encoder(
    image_size=64,
    sequence_length=16,
    vocabulary_size=None,
    hidden_dim=128,
    num_heads=4,
    intermediate_dim=256,
    dropout=0.1,
    projection_dim=128,
    loss="infonce",
    logit_scale_init=None,
    text_preprocessor=None,
    image_encoder_kwargs=None,
    text_encoder_kwargs=None,
    dtype=None,
):
    """Builds a `DualEncoder` from plain hyperparameters, with its weights (called once on zeros).

    `image_encoder_kwargs` and `text_encoder_kwargs` go to `ImageEncoder` and
    `TextEncoder` (stem, backbone class + kwargs or preset, layers, pooling).
    """
    image_encoder = ImageEncoder(
        hidden_dim=hidden_dim, dtype=dtype, name="image_encoder", **{"dropout": 0.0, **(image_encoder_kwargs or {})})
    text_kwargs = {"num_heads": num_heads, "intermediate_dim": intermediate_dim, "dropout": dropout}
    text_kwargs.update(text_encoder_kwargs or {})
    text_encoder = TextEncoder(
        vocabulary_size=vocabulary_size, sequence_length=sequence_length, hidden_dim=hidden_dim,
        dtype=dtype, name="text_encoder", **text_kwargs)
    model = DualEncoder(
        image_encoder, text_encoder, projection_dim=projection_dim, loss=loss,
        logit_scale_init=logit_scale_init, text_preprocessor=text_preprocessor, image_size=image_size,
        dtype=dtype, name="dual_encoder")
    model({
        "images": ops.zeros((1, image_size, image_size, 3)),
        "token_ids": ops.ones((1, sequence_length), "int32"),
        "padding_mask": ops.ones((1, sequence_length), "bool"),
    })
    return model
