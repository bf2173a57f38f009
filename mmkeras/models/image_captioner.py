"""Image captioning model: image encoder + Transformer decoder with cross-attention."""

import keras
import keras_hub
import tensorflow as tf
from keras import ops

from mmkeras.data.tokenizer import detokenize_generated
from mmkeras.models.caption_attention import token_attention
from mmkeras.models.caption_search import search
from mmkeras.models.generation_constraints import check_generation_options
from mmkeras.layers.image_encoder import ImageEncoder
from mmkeras.layers.text_decoder import TextDecoder
from mmkeras.models.replica_utils import scale_for_replicas
from mmkeras.models.replica_utils import sum_over_replicas
from mmkeras.models.self_critical import self_critical_train_step

GENERATION_METHODS = ("greedy", "beam", "top_k")


class _FunctionCache:
    """Compiled generate functions, kept out of Keras/TF object tracking."""

    def __init__(self):
        self.functions = {}


def _unknown_token_id(tokenizer):
    """The tokenizer's out-of-vocabulary id, or None (no tokenizer, or none defined)."""
    token = getattr(tokenizer, "oov_token", None)
    if tokenizer is None or token is None:
        return None
    try:
        return int(tokenizer.token_to_id(token))
    except (KeyError, ValueError):
        return None


@keras.saving.register_keras_serializable(package="mmkeras")
class ImageCaptioner(keras.Model):
    """Generates captions for images (Vinyals et al., 2015; Xu et al., 2015).

    An `ImageEncoder` turns each image into grid tokens, and a `TextDecoder`
    predicts the caption token by token while attending to them through
    `CrossModalAttention`. Training uses teacher forcing: inputs are the caption
    shifted right, targets the caption, and padding is masked out of the loss and
    of the token accuracy. `generate()` runs greedy, beam or top-k decoding as a
    single compiled `while` loop with a key/value cache: each step feeds one
    token and reuses the keys and values of all earlier ones.

    Args:
        image_encoder: an `ImageEncoder`.
        text_decoder: a `TextDecoder`.
        tokenizer: optional `keras_hub` `WordPieceTokenizer`; needed by
            `caption()` and saved with the model (its vocabulary travels as an
            asset of the `.keras` file).
        image_size: int, images are resized to `(image_size, image_size)`
            before the encoder; recorded for preprocessing and export.
        start_token_id, end_token_id, pad_token_id: ints, special token ids.
            Generation never emits padding, the start token or the
            tokenizer's out-of-vocabulary token (`[UNK]`).
        **kwargs: base model arguments.

    Call arguments:
        inputs: dict with `"images"` float `(batch, image_size, image_size, 3)`
            in `[0, 255]`, `"token_ids"` int `(batch, length)` and optionally
            `"padding_mask"` `(batch, length)`; training batches of
            self-critical training (`enable_self_critical`) also carry
            `"image_index"`, which `train_step` takes out.
        training: bool.

    Returns:
        A dict with `"logits"` `(batch, length, vocabulary_size)`.

    Example:
    >>> captioner = ImageCaptioner(
    ...     ImageEncoder(hidden_dim=16, stem_filters=(8, 16)),
    ...     TextDecoder(vocabulary_size=20, sequence_length=6, hidden_dim=16,
    ...                 num_layers=1, num_heads=2, intermediate_dim=32),
    ...     image_size=32)
    >>> images = keras.random.uniform((2, 32, 32, 3), maxval=255)
    >>> tuple(captioner.generate(images)["token_ids"].shape)
    (2, 6)
    """

    def __init__(
        self,
        image_encoder,
        text_decoder,
        tokenizer=None,
        image_size=64,
        start_token_id=2,
        end_token_id=3,
        pad_token_id=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if text_decoder.hidden_dim != image_encoder.hidden_dim:
            # Cross-attention could bridge widths, but equal widths keep the
            # pooled image vector usable by the decoder and later heads.
            raise ValueError(
                "The image encoder and text decoder must have the same hidden_dim. "
                f"Received: {image_encoder.hidden_dim} and {text_decoder.hidden_dim}"
            )
        self.image_encoder = image_encoder
        self.text_decoder = text_decoder
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.start_token_id = start_token_id
        self.end_token_id = end_token_id
        self.pad_token_id = pad_token_id
        self.token_accuracy = keras.metrics.SparseCategoricalAccuracy(
            name="token_accuracy"
        )
        # Mean CIDEr-D of the sampled captions, in self-critical steps only.
        self.reward_tracker = keras.metrics.Mean(name="reward")
        self._self_critical = None
        self._generate_functions = _FunctionCache()

    def build(self, inputs_shape):
        images_shape = inputs_shape["images"]
        # Deserialized sublayers arrive built already (their own build configs).
        if not self.image_encoder.built:
            self.image_encoder.build(images_shape)
        tokens_shape = self.image_encoder.compute_output_shape(images_shape)["tokens"]
        if not self.text_decoder.built:
            self.text_decoder.build(inputs_shape["token_ids"], tokens_shape)
        self.built = True

    def get_build_config(self):
        return {
            "images_shape": [None, self.image_size, self.image_size, 3],
            "token_ids_shape": [None, self.text_decoder.sequence_length],
        }

    def build_from_config(self, config):
        # Called by `keras.saving.load_model` before weights are restored.
        self.build(
            {
                "images": tuple(config["images_shape"]),
                "token_ids": tuple(config["token_ids_shape"]),
            }
        )

    def call(self, inputs, training=None):
        image_tokens = self.image_encoder.encode_inputs(inputs, training=training)["tokens"]
        logits = self.text_decoder(
            inputs["token_ids"],
            image_tokens,
            padding_mask=inputs.get("padding_mask"),
            training=training,
        )
        return {"logits": logits}

    def compute_attention_maps(self, images, token_ids):
        """Cross-attention of each caption token over the image grid.

        Returns a list (one per decoder block) of `(batch, heads, length,
        image_tokens)` attention probabilities.
        """
        image_tokens = self.image_encoder(images, training=False)["tokens"]
        _, scores = self.text_decoder(
            token_ids, image_tokens, return_attention_scores=True, training=False
        )
        return scores

    # Loss and metrics live on the model so that `fit` and the custom
    # distributed loop share one definition of the training step.
    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return self._token_loss(y, y_pred, sample_weight)

    def _token_loss(self, y, y_pred, sample_weight=None, counted=None):
        """Weighted cross-entropy summed over tokens / the global count of `counted` tokens.

        `counted` defaults to `sample_weight` (teacher forcing: 1.0 on real
        targets); self-critical steps pass signed advantages as weights and
        count the real tokens of the samples.
        """
        logits = y_pred["logits"] if isinstance(y_pred, dict) else y_pred
        if sample_weight is None:
            sample_weight = ops.cast(ops.not_equal(y, self.pad_token_id), "float32")
        per_token = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
        weights = ops.cast(sample_weight, per_token.dtype)
        counted = weights if counted is None else ops.cast(counted, per_token.dtype)
        # The mean over the real tokens of the *global* batch: each replica
        # divides its sum by the token count of all replicas, and the
        # optimizer's all-reduce sums the replicas' gradients. (Dividing by the
        # local count and by the number of replicas, as Keras losses do, would
        # weight a replica's tokens by how many others it happened to get.)
        tokens = sum_over_replicas(ops.sum(counted))
        loss = ops.sum(per_token * weights) / ops.maximum(tokens, 1.0)
        for extra in self.losses:
            loss = loss + scale_for_replicas(ops.cast(ops.sum(extra), loss.dtype))
        return loss

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        logits = y_pred["logits"] if isinstance(y_pred, dict) else y_pred
        if sample_weight is None:
            sample_weight = ops.cast(ops.not_equal(y, self.pad_token_id), "float32")
        self.token_accuracy.update_state(y, logits, sample_weight=sample_weight)
        return self.get_metrics_result()

    @property
    def metrics(self):
        metrics = super().metrics
        if self._self_critical is None:
            return [m for m in metrics if m is not self.reward_tracker]
        return metrics

    # Self-critical sequence training.
    def enable_self_critical(self, reward, from_step=0, num_samples=5):
        """Trains with self-critical sequence training from optimizer step `from_step` on.

        Until `from_step`, `train_step` is teacher forcing; from then on
        each step samples `num_samples` captions for each of the first
        `batch // num_samples` images of the batch, scores them with
        `reward`, and weights each sample's log-likelihood by its reward
        minus the mean reward of the image's other samples
        (`mmkeras.models.self_critical`). The batch's inputs must then
        carry `"image_index"` (int `(batch,)`), the key `reward` looks
        references up by. Metrics: `reward` (mean reward of the samples)
        from `from_step` on; `token_accuracy` counts teacher-forcing steps
        only. The step calls `reward` through `tf.numpy_function`, so it
        cannot be XLA-compiled. `disable_self_critical()` turns it off.

        Args:
            reward: `(image_index, token_ids) -> float32 rewards`, numpy in
                and out, e.g. `mmkeras.models.self_critical.CIDErReward`.
            from_step: int >= 0, the first self-critical optimizer step.
            num_samples: int >= 2, captions sampled per image.
        """
        if not callable(reward):
            raise ValueError(f"`reward` must be callable. Received: reward={reward!r}")
        if from_step < 0:
            raise ValueError(f"`from_step` must be >= 0. Received: from_step={from_step}")
        if num_samples < 2:
            raise ValueError(
                "`num_samples` must be >= 2 (the baseline is the mean of the other "
                f"samples). Received: num_samples={num_samples}"
            )
        self._self_critical = (reward, int(from_step), int(num_samples))
        self.train_function = None  # retrace: the step's graph changes

    def disable_self_critical(self):
        """Back to teacher forcing at every step."""
        self._self_critical = None
        self.train_function = None

    def train_step(self, data):
        if self._self_critical is None:
            return super().train_step(data)
        return self_critical_train_step(self, data, *self._self_critical)

    # Generation.
    def _sampler(self, method, num_beams, k, temperature, seed):
        if method in ("greedy", "beam"):
            return None  # see caption_search.greedy_search and beam_search
        return keras_hub.samplers.TopKSampler(k=k, seed=seed, temperature=temperature)

    @property
    def unk_token_id(self):
        """The tokenizer's out-of-vocabulary id, or None.

        Looked up when asked: a captioner loaded from a `.keras` file gets
        its tokenizer's vocabulary only after construction.
        """
        return _unknown_token_id(self.tokenizer)

    @property
    def special_token_ids(self):
        """`{"start", "end", "pad", "unk"}`: the ids decoding treats specially (`"unk"` may be None)."""
        return {"start": self.start_token_id, "end": self.end_token_id, "pad": self.pad_token_id,
                "unk": self.unk_token_id}

    def generate_tokens(
        self,
        images,
        method="greedy",
        max_length=None,
        num_beams=3,
        k=5,
        temperature=1.0,
        seed=None,
        use_cache=True,
        sampler=None,
        no_repeat_ngram_size=0,
        length_penalty=1.0,
    ):
        """Graph-friendly generation body; `generate()` compiles and caches it.

        Returns a dict with `"token_ids"` `(batch, max_length)` (starting with
        the start token, padded after the end token) and `"scores"` `(batch,)`
        (see `generate()`).
        """
        check_generation_options(no_repeat_ngram_size, length_penalty)
        if method not in GENERATION_METHODS:
            raise ValueError(
                f"`method` must be one of {GENERATION_METHODS}. Received: method={method}"
            )
        max_length = max_length or self.text_decoder.sequence_length
        if not 2 <= max_length <= self.text_decoder.sequence_length:
            raise ValueError(
                "`max_length` must be between 2 and the decoder's sequence_length "
                f"({self.text_decoder.sequence_length}). Received: max_length={max_length}"
            )
        vocabulary_size = self.text_decoder.vocabulary_size
        if method == "top_k" and not 1 <= k <= vocabulary_size:
            raise ValueError(
                f"`k` must be between 1 and the vocabulary size ({vocabulary_size}). "
                f"Received: k={k}"
            )
        if method == "beam" and not 1 <= num_beams <= vocabulary_size:
            raise ValueError(f"`num_beams` must be between 1 and {vocabulary_size}. Received: num_beams={num_beams}")
        image_tokens = self.image_encoder(images, training=False)["tokens"]
        return search(
            self.text_decoder, image_tokens, self.special_token_ids, method, max_length, num_beams=num_beams,
            sampler=sampler or self._sampler(method, num_beams, k, temperature, seed), use_cache=use_cache,
            no_repeat_ngram_size=no_repeat_ngram_size, length_penalty=length_penalty,
        )

    def generate(
        self,
        images,
        method="greedy",
        max_length=None,
        num_beams=3,
        k=5,
        temperature=1.0,
        seed=None,
        use_cache=True,
        no_repeat_ngram_size=0,
        length_penalty=1.0,
        jit_compile=False,
    ):
        """Generates caption token ids for a batch of images.

        Runs as one compiled graph (a `tf.function` traced once per setting and
        reused), so there is no per-token Python loop.

        Args:
            images: float `(batch, image_size, image_size, 3)` in `[0, 255]`.
            method: `"greedy"`, `"beam"` or `"top_k"`.
            max_length: int, total length including the start token; defaults
                to the decoder's `sequence_length`.
            num_beams: int, beams for `"beam"`.
            k, temperature, seed: sampling settings for `"top_k"`.
            use_cache: bool; `False` recomputes the decoder over the whole
                sequence at each step (for benchmarks and tests only).
            no_repeat_ngram_size: int; if > 0, a token that would complete an
                n-gram of this size already in the caption gets logit -1e9
                (as Hugging Face's option; every method). 0 turns it off.
            length_penalty: float; captions are scored by summed
                log-probability / length ** length_penalty, length counting
                the generated tokens up to and including the end token. Beam
                search ranks its beams by this score; 1.0 (the default) is the
                mean per token, 0.0 the raw sum (what beam search ranked by
                before this option), larger values favour longer captions.
            jit_compile: bool; compile the generation graph with XLA (in
                process only: exported serving graphs never use XLA, which
                the official TensorFlow Serving binary does not run). XLA
                fuses the many small ops of each decoding step; compiling
                takes seconds, once per setting and batch shape.
                `benchmarks/caption_speed.py` reports speed with and without.

        Returns:
            A dict with `"token_ids"` `(batch, max_length)` (start token first,
            padding after the end token) and `"scores"` `(batch,)`: that
            length-penalised log-probability of each returned caption. The
            log-probabilities are the decoder's own: generation constraints
            (padding/start never generated, `no_repeat_ngram_size`) mask
            tokens out without renormalising the others.
        """
        check_generation_options(no_repeat_ngram_size, length_penalty)
        key = (method, max_length, num_beams, k, temperature, seed, use_cache,
               no_repeat_ngram_size, length_penalty, bool(jit_compile))
        if key not in self._generate_functions.functions:
            # The sampler (and its seed variable) must exist outside the trace.
            sampler = self._sampler(method, num_beams, k, temperature, seed)

            def generate_fn(images):
                return self.generate_tokens(
                    images,
                    method=method,
                    max_length=max_length,
                    num_beams=num_beams,
                    k=k,
                    temperature=temperature,
                    seed=seed,
                    use_cache=use_cache,
                    sampler=sampler,
                    no_repeat_ngram_size=no_repeat_ngram_size,
                    length_penalty=length_penalty,
                )

            self._generate_functions.functions[key] = tf.function(
                generate_fn, reduce_retracing=True, jit_compile=bool(jit_compile)
            )
        images = ops.convert_to_tensor(images, dtype=self.compute_dtype)
        if not self.built:
            # A fresh captioner builds on its first call; generating first
            # must build it too, outside the traced function.
            self.build({"images": tuple(images.shape), "token_ids": (None, self.text_decoder.sequence_length)})
        return self._generate_functions.functions[key](images)

    def detokenize(self, token_ids):
        """Turns generated token ids into caption strings (`tf.string` tensor)."""
        if self.tokenizer is None:
            raise ValueError("This ImageCaptioner has no tokenizer; pass `tokenizer=`.")
        return detokenize_generated(
            self.tokenizer, token_ids, self.end_token_id, self.start_token_id
        )

    def caption(self, images, method="greedy", **kwargs):
        """Returns a list of caption strings for a batch of images.

        `kwargs` go to `generate()` (`num_beams`, `no_repeat_ngram_size`,
        `length_penalty`, ...).
        """
        outputs = self.generate(images, method=method, **kwargs)
        captions = self.detokenize(outputs["token_ids"])
        return [c.decode("utf-8") for c in ops.convert_to_numpy(captions).tolist()]

    def caption_with_attention(self, images, method="greedy", **kwargs):
        """Captions, and where in the image the decoder looked for each word.

        Generates as `caption()` does (`kwargs` go to `generate()`), then
        reads the decoder's `CrossModalAttention` probabilities for the
        generated tokens with `token_attention()`: the scores of the step that
        emitted each token, also for beam search (the returned beam's prefix
        is the history it had), without a second generation graph and
        without changing the exported one.

        Args:
            images: float `(batch, image_size, image_size, 3)` in `[0, 255]`.
            method: `"greedy"`, `"beam"` or `"top_k"`.

        Returns:
            The dict of `token_attention()` for the generated token ids.
        """
        outputs = self.generate(images, method=method, **kwargs)
        return self.token_attention(images, outputs["token_ids"])

    def token_attention(self, images, token_ids):
        """The cross-attention paid to the image for each token of given captions.

        See `mmkeras.models.caption_attention.token_attention`.
        """
        return token_attention(self, images, token_ids)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "image_encoder": keras.layers.serialize(self.image_encoder),
                "text_decoder": keras.layers.serialize(self.text_decoder),
                "tokenizer": (
                    keras.layers.serialize(self.tokenizer) if self.tokenizer else None
                ),
                "image_size": self.image_size,
                "start_token_id": self.start_token_id,
                "end_token_id": self.end_token_id,
                "pad_token_id": self.pad_token_id,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for name in ("image_encoder", "text_decoder", "tokenizer"):
            if config.get(name) is not None:
                config[name] = keras.layers.deserialize(config[name])
        return cls(**config)


def build_image_captioner(
    vocabulary_size,
    sequence_length,
    image_size=64,
    hidden_dim=128,
    num_layers=2,
    num_heads=4,
    intermediate_dim=512,
    dropout=0.1,
    stem_filters=(32, 64, 128),
    convs_per_stage=2,
    backbone_class=None,
    backbone_kwargs=None,
    backbone_preset=None,
    stem_norm="batch",
    image_dropout=0.0,
    tokenizer=None,
    start_token_id=2,
    end_token_id=3,
    pad_token_id=0,
    dtype=None,
):
    """Builds an `ImageCaptioner` from plain hyperparameters, with its weights.

    `dropout` is the decoder's; `image_dropout` the image encoder's, on its
    output tokens. Returns a built model (called once on zeros), so
    summaries, checkpoints and weight loading work before the first training
    step.
    """
    encoder = ImageEncoder(
        hidden_dim=hidden_dim,
        dropout=image_dropout,
        stem_filters=stem_filters,
        convs_per_stage=convs_per_stage,
        stem_norm=stem_norm,
        backbone_class=backbone_class,
        backbone_kwargs=backbone_kwargs,
        backbone_preset=backbone_preset,
        dtype=dtype,
        name="image_encoder",
    )
    decoder = TextDecoder(
        vocabulary_size=vocabulary_size,
        sequence_length=sequence_length,
        hidden_dim=hidden_dim,
        num_layers=num_layers,
        num_heads=num_heads,
        intermediate_dim=intermediate_dim,
        dropout=dropout,
        dtype=dtype,
        name="text_decoder",
    )
    model = ImageCaptioner(
        encoder,
        decoder,
        tokenizer=tokenizer,
        image_size=image_size,
        start_token_id=start_token_id,
        end_token_id=end_token_id,
        pad_token_id=pad_token_id,
        dtype=dtype,
        name="image_captioner",
    )
    model(
        {
            "images": ops.zeros((1, image_size, image_size, 3)),
            "token_ids": ops.zeros((1, sequence_length), "int32"),
            "padding_mask": ops.ones((1, sequence_length), "int32"),
        }
    )
    return model
