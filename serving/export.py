"""Exports mmkeras models as SavedModels that TensorFlow Serving can serve.

Serving functions take raw inputs (encoded image bytes, UTF-8 strings) and do
decoding, resizing, tokenization and generation inside the graph, with only core
TensorFlow and TensorFlow Text ops and no `jit_compile`, so the official
`tensorflow_model_server` binary loads them.

    python -m serving.export --model_dir=runs/caption --export_dir=saved_models
"""

import os
import shutil
import sys
import tempfile

import keras
import tensorflow as tf
from absl import app, flags

from mmkeras.data.caption_pipeline import decode_images
from serving import model_config

IMAGES_SPEC = tf.TensorSpec([None], tf.string, name="images")


def next_version(base_path):
    """One more than the highest integer version directory under `base_path`."""
    versions = [int(d) for d in os.listdir(base_path) if d.isdigit()] if os.path.isdir(base_path) else []
    return max(versions, default=0) + 1


def check_image_bytes(images):
    """Fails the request, naming the input, if an element is not a JPEG or PNG."""
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


def captioner_endpoints(model, num_beams=3):
    """The serving functions of an `ImageCaptioner`: greedy and beam search."""
    image_size = model.image_size

    def make(method):
        def serve(images):
            images = check_image_bytes(images)
            pixels = decode_images(images, image_size)
            outputs = model.generate_tokens(pixels, method=method, num_beams=num_beams)
            return {
                "captions": model.detokenize(outputs["token_ids"]),
                "scores": tf.cast(outputs["scores"], tf.float32),
            }

        return serve

    return {"serving_default": make("greedy"), "beam_search": make("beam")}


def write_saved_model(export_base, version, track, endpoints, assets=()):
    """Writes a SavedModel version atomically and returns its path.

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
    for name, fn in endpoints.items():
        archive.add_endpoint(name, tf.function(fn, autograph=False), input_signature=[IMAGES_SPEC])
    tmp_path = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=export_base)
    try:
        archive.write_out(tmp_path, verbose=False)
        # Vocabulary and label files go into the version's assets/ folder, so
        # they are copied, versioned and deleted together with the model. The
        # graph itself carries the tokenizer's compiled model, not the file.
        assets_dir = os.path.join(tmp_path, "assets")
        os.makedirs(assets_dir, exist_ok=True)
        for path in assets:
            shutil.copy(path, os.path.join(assets_dir, os.path.basename(path)))
        os.rename(tmp_path, final_path)
    except BaseException:
        shutil.rmtree(tmp_path, ignore_errors=True)
        raise
    return final_path


def export_captioner(model, export_dir, model_name="captioner", version=None, vocabulary_file=None):
    """Exports an `ImageCaptioner` to `<export_dir>/<model_name>/<version>/`.

    Signatures: `serving_default` (greedy) and `beam_search`, each taking
    `images` (tf.string, encoded JPEG/PNG, shape `[batch]`) and returning
    `captions` (tf.string `[batch]`) and `scores` (tf.float32 `[batch]`, mean
    log-probability per generated token). The vocabulary travels as an asset
    (`assets/vocabulary.txt`). `<export_dir>/models.config` and
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
            endpoints=captioner_endpoints(model),
            assets=[vocabulary_file],
        )
    write_serving_config(export_dir, model_name)
    return path


def write_serving_config(export_dir, model_name):
    """Adds `model_name` to TF Serving's `models.config` and writes batching parameters."""
    model_config.write_models_config(export_dir, {model_name: None})
    if not os.path.exists(os.path.join(export_dir, "batching_parameters.pbtxt")):
        model_config.write_batching_parameters(export_dir)


def export_model(model, export_dir, model_name=None, version=None, vocabulary_file=None):
    """Exports any mmkeras model with the signatures of its kind."""
    from mmkeras.models import ImageCaptioner

    if isinstance(model, ImageCaptioner):
        return export_captioner(model, export_dir, model_name or "captioner", version, vocabulary_file)
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


def main(argv):
    del argv
    if not FLAGS.model_dir:
        raise app.UsageError("--model_dir is required (a training run directory with model.keras).")
    path = os.path.join(FLAGS.model_dir, "model.keras")
    if not os.path.exists(path):
        print(f"error: {path} does not exist; train first with python -m training.train", file=sys.stderr)
        sys.exit(1)
    import mmkeras  # noqa: F401  (registers the serializable classes)

    model = keras.saving.load_model(path)
    vocabulary = os.path.join(FLAGS.model_dir, "vocabulary.txt")
    try:
        out = export_model(model, FLAGS.export_dir, FLAGS.name, FLAGS.version,
                           vocabulary if os.path.exists(vocabulary) else None)
    except (FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"Exported SavedModel: {out}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
