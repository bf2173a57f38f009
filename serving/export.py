"""Exports mmkeras models as SavedModels that TensorFlow Serving can serve.

Serving functions take raw inputs (encoded image bytes, UTF-8 strings) and do
decoding, resizing, tokenization and generation inside the graph, with only core
TensorFlow and TensorFlow Text ops and no `jit_compile`, so the official
`tensorflow_model_server` binary loads them.

    python -m serving.export --model_dir=runs/caption --export_dir=saved_models
"""

import os
import shutil
import tempfile

import keras
import tensorflow as tf

from mmkeras.data.caption_pipeline import decode_images

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
    asset_objects = []
    for path in assets:
        asset = tf.saved_model.Asset(path)
        archive.track(asset)
        asset_objects.append(asset)
    for name, fn in endpoints.items():
        archive.add_endpoint(name, tf.function(fn, autograph=False), input_signature=[IMAGES_SPEC])
    tmp_path = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=export_base)
    try:
        archive.write_out(tmp_path, verbose=False)
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
    log-probability per generated token).
    """
    if model.tokenizer is None:
        raise ValueError("Cannot export a captioner without its tokenizer.")
    assets = [vocabulary_file] if vocabulary_file else []
    return write_saved_model(
        os.path.join(export_dir, model_name),
        version,
        track=[model],
        endpoints=captioner_endpoints(model),
        assets=assets,
    )
