"""Toy SavedModels with the mmkeras serving signatures, and inputs for them.

The real exports (`serving/export.py`) replace these models; the toys only keep
the signature contract of `DESIGN.md` so that a server, the client and the
serving benchmarks can be tried without training anything:

- captioner: `serving_default` and `beam_search`, `images` (encoded JPEG/PNG)
  -> `captions` (string [batch]), `scores` (float32 [batch]).
- classifier: `serving_default`, `images` + `texts` -> `labels` (string
  [batch]), `class_ids` (int64 [batch]), `probabilities` (float32
  [batch, classes]); `classification` (method tensorflow/serving/classify),
  `inputs` (serialized tf.Example with bytes features `image`, `text`) ->
  `classes` (string [batch, k]), `scores` (float32 [batch, k]), sorted by
  descending score.
- dual encoder: `embed_images` (`images`) and `embed_texts` (`texts`) ->
  `embeddings` (L2-normalised float32 [batch, dim]).

The toy captioner runs a fixed-length `tf.while_loop` after decoding the image,
so that, like a real autoregressive decoder, its cost is dominated by per-step
overhead and grows slowly with the batch size.
"""

import numpy as np
import tensorflow as tf

from serving.export import CLASSIFY_METHOD_NAME
from serving.export import set_signature_method_name

TOY_CLASS_NAMES = ("red", "green", "blue")
_COLOUR_NAMES = ("red", "green", "blue")
_IMAGE_SIZE = 32


def make_image_bytes(colour, size=64, image_format="png", seed=0):
    """Encodes a noisy single-colour RGB image as PNG or JPEG bytes.

    Args:
        colour: `(r, g, b)` in 0..255.
        size: height and width in pixels.
        image_format: `"png"` or `"jpeg"`.
        seed: seed of the pixel noise.
    """
    rng = np.random.default_rng(seed)
    pixels = np.asarray(colour, np.float32)[None, None, :] + rng.normal(
        0.0, 8.0, size=(size, size, 3)
    )
    pixels = np.clip(pixels, 0, 255).astype(np.uint8)
    if image_format == "png":
        return tf.io.encode_png(pixels).numpy()
    if image_format == "jpeg":
        return tf.io.encode_jpeg(pixels, quality=90).numpy()
    raise ValueError(f"Unknown image_format. Received: image_format={image_format}")


def _mean_colours(images):
    """[batch] encoded images -> [batch, 3] mean RGB in 0..1."""

    def decode(encoded):
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        image = tf.image.resize(image, [_IMAGE_SIZE, _IMAGE_SIZE])
        return tf.reduce_mean(image, axis=[0, 1]) / 255.0

    return tf.map_fn(
        decode, images, fn_output_signature=tf.TensorSpec([3], tf.float32)
    )


class ToyCaptioner(tf.Module):
    """Captions an image by its dominant colour and brightness.

    Scores come from a greedy-decoding-like `tf.while_loop` of `decode_steps`
    recurrent steps with a vocabulary projection, so that the cost per call,
    like a real decoder's, is mostly per-step overhead.
    """

    def __init__(self, hidden_dim=64, vocabulary_size=512, decode_steps=16, seed=0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.decode_steps = decode_steps
        self.w_in = tf.Variable(
            rng.normal(size=(3, hidden_dim)).astype(np.float32), name="w_in"
        )
        self.w_rec = tf.Variable(
            (rng.normal(size=(hidden_dim, hidden_dim)) / np.sqrt(hidden_dim)).astype(
                np.float32
            ),
            name="w_rec",
        )
        self.w_vocab = tf.Variable(
            (rng.normal(size=(hidden_dim, vocabulary_size)) / np.sqrt(hidden_dim)).astype(
                np.float32
            ),
            name="w_vocab",
        )

    def _caption(self, images, noun):
        colours = _mean_colours(images)
        drive = tf.matmul(colours, self.w_in)

        def step(i, state, log_prob):
            state = tf.tanh(tf.matmul(state, self.w_rec) + drive)
            logits = tf.matmul(state, self.w_vocab)
            log_prob += tf.reduce_max(tf.nn.log_softmax(logits), axis=-1)
            return i + 1, state, log_prob

        _, _, log_prob = tf.while_loop(
            lambda i, state, log_prob: i < self.decode_steps,
            step,
            (tf.constant(0), tf.tanh(drive), tf.zeros_like(drive[:, 0])),
        )
        scores = tf.exp(log_prob / float(self.decode_steps))
        colour = tf.gather(tf.constant(_COLOUR_NAMES), tf.argmax(colours, axis=-1))
        brightness = tf.where(
            tf.reduce_mean(colours, axis=-1) > 0.5, "bright", "dark"
        )
        captions = tf.strings.join(["a ", brightness, " ", colour, " ", noun])
        return {"captions": captions, "scores": scores}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def serving_default(self, images):
        return self._caption(images, "image")

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def beam_search(self, images):
        return self._caption(images, "picture")


class ToyClassifier(tf.Module):
    """Classifies an (image, text) pair by the image colour and text tokens."""

    def __init__(self, seed=0):
        super().__init__()
        rng = np.random.default_rng(seed)
        num_classes = len(TOY_CLASS_NAMES)
        # Colour features dominate, so that a red image is classified "red".
        self.w_image = tf.Variable(
            np.eye(3, num_classes, dtype=np.float32) * 8.0, name="w_image"
        )
        self.w_text = tf.Variable(
            rng.normal(size=(1, num_classes)).astype(np.float32) * 0.1, name="w_text"
        )
        self.class_names = tf.constant(TOY_CLASS_NAMES)

    def _probabilities(self, images, texts):
        import tensorflow_text as tf_text  # proves TF Text ops load in the server

        tokens = tf_text.WhitespaceTokenizer().tokenize(texts)
        num_tokens = tf.cast(tokens.row_lengths(), tf.float32)[:, None]
        logits = tf.matmul(_mean_colours(images), self.w_image) + tf.matmul(
            num_tokens, self.w_text
        )
        return tf.nn.softmax(logits, axis=-1)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.string, name="images"),
            tf.TensorSpec([None], tf.string, name="texts"),
        ]
    )
    def serving_default(self, images, texts):
        probabilities = self._probabilities(images, texts)
        class_ids = tf.argmax(probabilities, axis=-1)
        return {
            "labels": tf.gather(self.class_names, class_ids),
            "class_ids": class_ids,
            "probabilities": probabilities,
        }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classification(self, inputs):
        features = tf.io.parse_example(
            inputs,
            {
                "image": tf.io.FixedLenFeature([], tf.string),
                "text": tf.io.FixedLenFeature([], tf.string, default_value=""),
            },
        )
        probabilities = self._probabilities(features["image"], features["text"])
        top = tf.math.top_k(probabilities, k=len(TOY_CLASS_NAMES))
        return {
            "classes": tf.gather(self.class_names, top.indices),
            "scores": top.values,
        }


class ToyDualEncoder(tf.Module):
    """Embeds images by colour and texts by hashed tokens, L2-normalised."""

    def __init__(self, projection_dim=8, seed=0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.w_image = tf.Variable(
            rng.normal(size=(3, projection_dim)).astype(np.float32), name="w_image"
        )
        self.text_table = tf.Variable(
            rng.normal(size=(64, projection_dim)).astype(np.float32), name="text_table"
        )

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def embed_images(self, images):
        embeddings = tf.matmul(_mean_colours(images), self.w_image)
        return {"embeddings": tf.math.l2_normalize(embeddings, axis=-1)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="texts")])
    def embed_texts(self, texts):
        tokens = tf.strings.split(texts)
        ids = tf.strings.to_hash_bucket_fast(tokens, 64)
        embeddings = tf.reduce_sum(tf.gather(self.text_table, ids), axis=1)
        return {"embeddings": tf.math.l2_normalize(embeddings + 1e-6, axis=-1)}


# kind -> (tf.Module class, its signatures).
_TOYS = {
    "captioner": (ToyCaptioner, ("serving_default", "beam_search")),
    "classifier": (ToyClassifier, ("serving_default", "classification")),
    "dual_encoder": (ToyDualEncoder, ("embed_images", "embed_texts")),
}


def export_toy(kind, export_dir, **kwargs):
    """Saves a toy model of `kind` to `export_dir` (a version directory).

    Args:
        kind: "captioner", "classifier" (with a Classify-API `classification`
            signature) or "dual_encoder".
        export_dir: the version directory to write.
        **kwargs: constructor arguments of the toy model.

    Example:

        export_toy("captioner", "/tmp/models/captioner/1", decode_steps=4)
    """
    module_class, signature_names = _TOYS[kind]
    module = module_class(**kwargs)
    tf.saved_model.save(
        module,
        export_dir,
        signatures={
            name: getattr(module, name).get_concrete_function() for name in signature_names
        },
    )
    if kind == "classifier":
        set_signature_method_name(export_dir, "classification", CLASSIFY_METHOD_NAME)
    return export_dir


def make_example(image, text):
    """Serializes a tf.Example with the classification features."""
    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
        "text": tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[text.encode("utf-8")])
        ),
    }
    return tf.train.Example(
        features=tf.train.Features(feature=feature)
    ).SerializeToString()

