"""Exports mmkeras models as SavedModels that TensorFlow Serving can serve.

Serving functions take raw inputs (encoded image bytes, UTF-8 strings) and do
decoding, resizing, tokenization and generation inside the graph, with only core
TensorFlow and TensorFlow Text ops and no `jit_compile`, so the official
`tensorflow_model_server` binary loads them.

    python -m serving.export --model_dir=runs/caption --export_dir=saved_models
"""

import json
import os
import shutil
import sys
import tempfile

import keras
import tensorflow as tf
from absl import app, flags

from mmkeras.data.caption_pipeline import decode_images
from mmkeras.data.image_header import check_image_sizes
from mmkeras.models.generation_constraints import check_generation_options
from serving import model_config

IMAGES_SPEC = tf.TensorSpec([None], tf.string, name="images")
TEXTS_SPEC = tf.TensorSpec([None], tf.string, name="texts")

# The most pixels (width * height, read from the header before decoding) an
# image sent to an export may declare. 40 MP passes 8K video frames (33 MP)
# and the usual 12-24 MP photos (full-resolution modes of 48+ MP phone
# sensors need a larger limit) and bounds one decoded image to 120 MB of
# uint8 RGB. TF Serving has no such guard, so it is in the graph.
DEFAULT_MAX_PIXELS = 40_000_000
# Written into every version's assets/: what the export was built with.
EXPORT_METADATA_FILENAME = "mmkeras_export.json"


def next_version(base_path):
    """One more than the highest integer version directory under `base_path`."""
    return max(model_config.version_dirs(base_path), default=0) + 1


def check_image_bytes(images):
    """Fails the request, naming the input, if an element is not a JPEG or PNG.

    Exports take JPEG and PNG only (the DESIGN contract), although
    `tf.io.decode_image` and `image_header` also read GIF and BMP: fewer
    decoders exposed to requests.
    """
    is_png = tf.equal(tf.strings.substr(images, 0, 8), b"\x89PNG\r\n\x1a\n")
    is_jpeg = tf.equal(tf.strings.substr(images, 0, 3), b"\xff\xd8\xff")
    valid = tf.logical_or(is_png, is_jpeg)
    bad = tf.where(tf.logical_not(valid))[:, 0]
    check = tf.debugging.Assert(
        tf.reduce_all(valid),
        [
            "Input 'images' must hold encoded JPEG or PNG images; these batch "
            "positions hold something else:",
            bad,
        ],
        summarize=16,
    )
    with tf.control_dependencies([check]):
        return tf.identity(images)


def guard_image_bytes(images, max_pixels=DEFAULT_MAX_PIXELS, input_name="images"):
    """`images` once each is a JPEG/PNG declaring at most `max_pixels` pixels.

    For serving functions whose model decodes the bytes itself (the
    classifiers' `probabilities_from_raw`): the decoder takes the returned
    tensor, so it runs only after both checks.
    """
    return check_image_sizes(check_image_bytes(images), max_pixels, input_name)


def serving_images(images, image_size, max_pixels=DEFAULT_MAX_PIXELS):
    """Encoded JPEG/PNG `(batch,)` -> float32 `(batch, image_size, image_size, 3)`, guarded.

    What every image input of an export goes through: `check_image_bytes`,
    then `decode_images` with the `max_pixels` header check, so a request
    with a decompression bomb fails with `InvalidArgumentError` (gRPC
    INVALID_ARGUMENT, HTTP 400) naming the batch position and the declared
    size, before anything large is allocated.
    """
    return decode_images(check_image_bytes(images), image_size, max_pixels=max_pixels)


def check_texts(texts):
    """Fails the request, naming the input, if a text is empty or only white space."""
    empty = tf.equal(tf.strings.length(tf.strings.strip(texts)), 0)
    bad = tf.where(empty)[:, 0]
    check = tf.debugging.Assert(
        tf.logical_not(tf.reduce_any(empty)),
        ["Input 'texts' must hold non-empty UTF-8 strings; these batch positions are empty:", bad],
        summarize=16,
    )
    with tf.control_dependencies([check]):
        return tf.identity(texts)


def check_same_batch(images, texts):
    """Fails the request if `images` and `texts` have different lengths."""
    check = tf.debugging.assert_equal(
        tf.shape(images)[0], tf.shape(texts)[0],
        message="Inputs 'images' and 'texts' must have the same batch size",
    )
    with tf.control_dependencies([check]):
        return tf.identity(images), tf.identity(texts)


def classifier_endpoints(model, max_pixels=DEFAULT_MAX_PIXELS):
    """The `serving_default` function of a `FusionClassifier` (or ensemble of them).

    Returns `labels` (tf.string `[batch]`; multi-label models join the
    predicted labels with `|`), `class_ids` (tf.int64 `[batch]`, the most
    probable class; `[batch, classes]` 0/1 decisions for multi-label models)
    and `probabilities` (tf.float32 `[batch, classes]`). Images declaring
    more than `max_pixels` pixels are refused before decoding.
    """
    label_names = tf.constant(model.label_names or [str(i) for i in range(model.num_classes)])

    def serve(images, texts):
        images, texts = check_same_batch(guard_image_bytes(images, max_pixels), check_texts(texts))
        probabilities = tf.cast(model.probabilities_from_raw(images, texts), tf.float32)
        decisions = tf.cast(model.decisions(probabilities), tf.int64)
        if model.multi_label:
            chosen = tf.ragged.boolean_mask(
                tf.broadcast_to(label_names, tf.shape(decisions)), tf.cast(decisions, tf.bool)
            )
            labels = tf.strings.reduce_join(chosen, axis=-1, separator="|")
        else:
            labels = tf.gather(label_names, decisions)
        return {"labels": labels, "class_ids": decisions, "probabilities": probabilities}

    def classification(inputs):
        # TF Serving's Classify API: serialized tf.Examples with `image` and
        # `text` bytes features -> every class with its score, best first.
        features = tf.io.parse_example(
            inputs,
            {"image": tf.io.FixedLenFeature([], tf.string), "text": tf.io.FixedLenFeature([], tf.string)},
        )
        images = guard_image_bytes(features["image"], max_pixels, input_name="inputs")
        texts = check_texts(features["text"])
        probabilities = tf.cast(model.probabilities_from_raw(images, texts), tf.float32)
        top = tf.math.top_k(probabilities, k=model.num_classes)
        return {"classes": tf.gather(label_names, top.indices), "scores": top.values}

    return {"serving_default": serve, "classification": classification}


CLASSIFY_METHOD_NAME = "tensorflow/serving/classify"
CLASSIFIER_SIGNATURES = {
    "serving_default": [IMAGES_SPEC, TEXTS_SPEC],
    "classification": [tf.TensorSpec([None], tf.string, name="inputs")],
}


def captioner_endpoints(model, num_beams=3, no_repeat_ngram_size=0, length_penalty=1.0,
                        max_pixels=DEFAULT_MAX_PIXELS):
    """The serving functions of an `ImageCaptioner`: greedy and beam search.

    The decoding options are baked into the graph: `no_repeat_ngram_size`
    into both signatures, `length_penalty` into `beam_search` only, so
    `serving_default` scores stay the mean log-probability per token. Both
    refuse images declaring more than `max_pixels` pixels before decoding.
    """
    check_generation_options(no_repeat_ngram_size, length_penalty)
    image_size = model.image_size

    def make(method, **options):
        def serve(images):
            pixels = serving_images(images, image_size, max_pixels)
            outputs = model.generate_tokens(
                pixels, method=method, no_repeat_ngram_size=no_repeat_ngram_size, **options
            )
            return {
                "captions": model.detokenize(outputs["token_ids"]),
                "scores": tf.cast(outputs["scores"], tf.float32),
            }

        return serve

    return {
        "serving_default": make("greedy"),
        "beam_search": make("beam", num_beams=num_beams, length_penalty=length_penalty),
    }


def set_signature_method_name(export_dir, signature_key, method_name):
    """Sets the `method_name` of one SignatureDef of a written SavedModel.

    Keras and `tf.saved_model.save` mark every signature
    `tensorflow/serving/predict`; TF Serving's Classify API only serves
    signatures marked `tensorflow/serving/classify`.
    """
    updater = tf.compat.v1.saved_model.signature_def_utils.MethodNameUpdater(export_dir)
    updater.replace_method_name(signature_key=signature_key, method_name=method_name, tags="serve")
    updater.save()


def track_tf_variables(archive):
    """Makes `archive` track the `tf.Variable`s inside Keras' variables, not the wrappers.

    `ExportArchive.track` lists Keras variable wrappers while the endpoints
    capture the `tf.Variable`s they wrap: two objects per weight, which
    TensorFlow saves twice (keras-team/keras#23553, Keras 3.15), so the
    SavedModel, and every server that loads it, would hold each weight twice.
    With the lists holding the wrapped variables, each weight is saved once.
    The lists live on the archive's private `_tf_trackable` (append-only
    `ListWrapper`s, so they are replaced, not edited); without it nothing
    changes, and `tests/test_export.py` says whether weights are stored twice.
    """
    trackable = getattr(archive, "_tf_trackable", None)
    if trackable is None:
        return
    for name in ("variables", "trainable_variables", "non_trainable_variables"):
        variables = getattr(trackable, name, [])
        setattr(trackable, name, [v.value if isinstance(getattr(v, "value", None), tf.Variable) else v
                                  for v in variables])


def write_saved_model(export_base, version, track, endpoints, assets=(), input_signatures=None,
                      method_names=None, metadata=None):
    """Writes a SavedModel version atomically and returns its path.

    `endpoints` maps signature names to functions; `input_signatures` maps
    them to their input specs (default: `images` only) and `method_names` to
    a SignatureDef method name other than Predict's. `metadata` (a JSON-able
    dict, e.g. `{"max_pixels": ...}`) is written to
    `assets/mmkeras_export.json` (see `read_export_metadata`).

    The version is written under a hidden temporary name in the same folder and
    renamed into place, so a server polling `export_base` never loads a
    half-written version.
    """
    os.makedirs(export_base, exist_ok=True)
    version = version or next_version(export_base)
    final_path = os.path.join(export_base, str(version))
    if os.path.exists(final_path):
        raise FileExistsError(
            f"Version {version} already exists at {final_path}; pick another --version."
        )
    archive = keras.export.ExportArchive()
    for resource in track:
        archive.track(resource)
    track_tf_variables(archive)
    for name, fn in endpoints.items():
        archive.add_endpoint(
            name, tf.function(fn, autograph=False),
            input_signature=(input_signatures or {}).get(name, [IMAGES_SPEC]),
        )
    tmp_path = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=export_base)
    try:
        archive.write_out(tmp_path, verbose=False)
        for name, method_name in (method_names or {}).items():
            set_signature_method_name(tmp_path, name, method_name)
        # Vocabulary and label files go into the version's assets/ folder, so
        # they are copied, versioned and deleted together with the model. The
        # graph itself carries the tokenizer's compiled model, not the file.
        assets_dir = os.path.join(tmp_path, "assets")
        os.makedirs(assets_dir, exist_ok=True)
        for path in assets:
            shutil.copy(path, os.path.join(assets_dir, os.path.basename(path)))
        if metadata is not None:
            with open(os.path.join(assets_dir, EXPORT_METADATA_FILENAME), "w", encoding="utf-8") as f:
                json.dump(metadata, f, indent=2, sort_keys=True)
                f.write("\n")
        os.rename(tmp_path, final_path)
    except BaseException:
        shutil.rmtree(tmp_path, ignore_errors=True)
        raise
    return final_path


def read_export_metadata(version_dir):
    """The `metadata` dict an export wrote (`{}` for exports from before it existed)."""
    path = os.path.join(version_dir, "assets", EXPORT_METADATA_FILENAME)
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def export_captioner(
    model, export_dir, model_name="captioner", version=None, vocabulary_file=None, num_beams=3,
    no_repeat_ngram_size=0, length_penalty=1.0, max_pixels=DEFAULT_MAX_PIXELS,
):
    """Exports an `ImageCaptioner` to `<export_dir>/<model_name>/<version>/`.

    Signatures: `serving_default` (greedy) and `beam_search` (`num_beams`), each taking
    `images` (tf.string, encoded JPEG/PNG, shape `[batch]`) and returning
    `captions` (tf.string `[batch]`) and `scores` (tf.float32 `[batch]`: summed
    log-probability / length ** length_penalty, see `ImageCaptioner.generate`;
    the mean log-probability per generated token for `serving_default`, and for
    `beam_search` with the default `length_penalty=1.0`). Both signatures
    block repeated n-grams of `no_repeat_ngram_size` (0: off); `beam_search`
    ranks its beams with `length_penalty`. Images declaring more than
    `max_pixels` pixels fail the request before decoding (`serving_images`).
    The vocabulary travels as an asset (`assets/vocabulary.txt`), the export
    options in `assets/mmkeras_export.json`. `<export_dir>/models.config` and
    `batching_parameters.pbtxt` are written or updated for TF Serving.
    """
    if model.tokenizer is None:
        raise ValueError("Cannot export a captioner without its tokenizer.")
    with tempfile.TemporaryDirectory() as scratch:
        if vocabulary_file is None:
            vocabulary_file = os.path.join(scratch, "vocabulary.txt")
            with open(vocabulary_file, "w", encoding="utf-8") as f:
                f.write("\n".join(model.tokenizer.get_vocabulary()) + "\n")
        path = write_saved_model(
            os.path.join(export_dir, model_name),
            version,
            track=[model],
            endpoints=captioner_endpoints(
                model, num_beams=num_beams, no_repeat_ngram_size=no_repeat_ngram_size,
                length_penalty=length_penalty, max_pixels=max_pixels,
            ),
            assets=[vocabulary_file],
            metadata={"max_pixels": max_pixels},
        )
    write_serving_config(export_dir, model_name)
    return path


def export_classifier(model, export_dir, model_name="classifier", version=None, assets=(),
                      max_pixels=DEFAULT_MAX_PIXELS):
    """Exports a `FusionClassifier` (or ensemble) to `<export_dir>/<model_name>/<version>/`.

    Signatures: `serving_default`: `images` (tf.string `[batch]`, encoded
    JPEG/PNG) and `texts` (tf.string `[batch]`, UTF-8) -> `labels`,
    `class_ids`, `probabilities` (see `classifier_endpoints`); and
    `classification` for TF Serving's Classify API (tf.Examples with `image`
    and `text` features -> `classes`, `scores`). Decoding,
    resizing and tokenization run in the graph; images declaring more than
    `max_pixels` pixels fail the request before decoding. `assets`
    (vocabulary, label list) are copied into the version's `assets/`, beside
    `mmkeras_export.json`.
    """
    with tempfile.TemporaryDirectory() as scratch:
        labels_file = os.path.join(scratch, "labels.txt")
        with open(labels_file, "w", encoding="utf-8") as f:
            f.write("\n".join(model.label_names or [str(i) for i in range(model.num_classes)]) + "\n")
        names = {os.path.basename(p) for p in assets}
        path = write_saved_model(
            os.path.join(export_dir, model_name),
            version,
            track=[model],
            endpoints=classifier_endpoints(model, max_pixels=max_pixels),
            assets=list(assets) + ([] if "labels.txt" in names else [labels_file]),
            input_signatures=CLASSIFIER_SIGNATURES,
            method_names={"classification": CLASSIFY_METHOD_NAME},
            metadata={"max_pixels": max_pixels},
        )
    write_serving_config(export_dir, model_name)
    return path


def dual_encoder_endpoints(model, max_pixels=DEFAULT_MAX_PIXELS):
    """The serving functions of a `DualEncoder`: `embed_images` and `embed_texts`.

    Both return `embeddings` (tf.float32 `[batch, projection_dim]`, unit
    norm), so a client's dot product of an image and a text embedding is the
    model's cosine similarity. Images declaring more than `max_pixels`
    pixels are refused before decoding.
    """

    def images_endpoint(images):
        pixels = serving_images(images, model.image_size, max_pixels)
        return {"embeddings": tf.cast(model.image_embeddings({"images": pixels}, training=False), tf.float32)}

    def texts_endpoint(texts):
        return {"embeddings": tf.cast(model.embed_raw_texts(check_texts(texts)), tf.float32)}

    return {"embed_images": images_endpoint, "embed_texts": texts_endpoint}


DUAL_ENCODER_SIGNATURES = {"embed_images": [IMAGES_SPEC], "embed_texts": [TEXTS_SPEC]}


def export_dual_encoder(model, export_dir, model_name="dual_encoder", version=None, assets=(),
                        max_pixels=DEFAULT_MAX_PIXELS):
    """Exports a `DualEncoder` to `<export_dir>/<model_name>/<version>/`.

    Signatures: `embed_images`: `images` (tf.string `[batch]`, encoded
    JPEG/PNG) -> `embeddings`; `embed_texts`: `texts` (tf.string `[batch]`,
    UTF-8) -> `embeddings` (see `dual_encoder_endpoints`). Decoding,
    resizing and tokenization run in the graph. `serving_default` is
    `embed_images` (Keras' export makes the first endpoint the default), so
    a request for texts names `embed_texts`.
    """
    if model.text_preprocessor is None:
        raise ValueError("Cannot export a DualEncoder without its text preprocessor.")
    path = write_saved_model(
        os.path.join(export_dir, model_name), version, track=[model],
        endpoints=dual_encoder_endpoints(model, max_pixels=max_pixels), assets=list(assets),
        input_signatures=DUAL_ENCODER_SIGNATURES, metadata={"max_pixels": max_pixels},
    )
    write_serving_config(export_dir, model_name)
    return path


def write_serving_config(export_dir, model_name):
    """Adds `model_name` to TF Serving's `models.config` and writes batching parameters."""
    model_config.write_models_config(export_dir, {model_name: None})
    if not os.path.exists(os.path.join(export_dir, "batching_parameters.pbtxt")):
        model_config.write_batching_parameters(export_dir)


def export_model(model, export_dir, model_name=None, version=None, vocabulary_file=None,
                 max_pixels=DEFAULT_MAX_PIXELS):
    """Exports any mmkeras model with the signatures of its kind."""
    from mmkeras.models import DualEncoder
    from mmkeras.models import FusionClassifier
    from mmkeras.models import ImageCaptioner

    if isinstance(model, DualEncoder):
        return export_dual_encoder(model, export_dir, model_name or "dual_encoder", version,
                                   [vocabulary_file] if vocabulary_file else [], max_pixels=max_pixels)
    if isinstance(model, ImageCaptioner):
        return export_captioner(model, export_dir, model_name or "captioner", version, vocabulary_file,
                                max_pixels=max_pixels)
    if isinstance(model, FusionClassifier) or hasattr(model, "probabilities_from_raw"):
        assets = [vocabulary_file] if vocabulary_file else []
        return export_classifier(model, export_dir, model_name or "classifier", version, assets,
                                 max_pixels=max_pixels)
    raise ValueError(
        f"Cannot export a {type(model).__name__}: no serving signatures are defined for it."
    )


FLAGS = flags.FLAGS


def define_flags():
    # Defined only when run as a program: training.train imports this module
    # and has flags of the same names.
    flags.DEFINE_string("model_dir", None, "Training run directory holding model.keras (from training.train).")
    flags.DEFINE_string("export_dir", "saved_models", "Export root: writes <export_dir>/<name>/<version>/.")
    flags.DEFINE_string("name", None, "Model name under export_dir (default: by kind, e.g. captioner).")
    flags.DEFINE_integer("version", None, "Integer version (default: one more than the highest existing).")
    flags.DEFINE_integer(
        "max_pixels", DEFAULT_MAX_PIXELS,
        "Most pixels (width * height, read from the header before decoding) a request image may "
        "declare; larger ones fail with INVALID_ARGUMENT.", lower_bound=1,
    )


def main(argv):
    del argv
    if not FLAGS.model_dir:
        raise app.UsageError("--model_dir is required (a training run directory with model.keras).")
    path = os.path.join(FLAGS.model_dir, "model.keras")
    if not os.path.exists(path):
        print(f"error: {path} does not exist; train first with python -m training.train", file=sys.stderr)
        sys.exit(1)
    import mmkeras  # noqa: F401  (registers the serializable classes)

    model = keras.saving.load_model(path, compile=False)  # export needs no optimizer
    vocabulary = os.path.join(FLAGS.model_dir, "vocabulary.txt")
    try:
        out = export_model(model, FLAGS.export_dir, FLAGS.name, FLAGS.version,
                           vocabulary if os.path.exists(vocabulary) else None, max_pixels=FLAGS.max_pixels)
    except (FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"Exported SavedModel: {out}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
