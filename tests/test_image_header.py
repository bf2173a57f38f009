"""Declared image sizes from headers, the guarded decode, and exports that refuse image bombs."""

import base64
import io
import json
import os
import re
import struct
import urllib.error
import urllib.request
import zlib

import grpc
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from mmkeras.data import image_header
from mmkeras.data.caption_pipeline import decode_image, decode_images

LIMIT = 40_000_000


def encode(array, image_format, mode=None):
    image = Image.fromarray(array)
    out = io.BytesIO()
    (image.convert(mode) if mode else image).save(out, image_format)
    return out.getvalue()


def noise(height, width, channels=3, seed=0):
    shape = (height, width) if channels == 1 else (height, width, channels)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width=16000, height=16000):
    """A valid PNG header declaring `width` x `height` RGB pixels, with a tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (1 + 3 * 64))  # one filtered row: what follows is missing
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def jpeg_declaring(width, height):
    """A real 16x16 JPEG whose SOF0 frame header is rewritten to declare `width` x `height`."""
    data = bytearray(tf.io.encode_jpeg(noise(16, 16)).numpy())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif_frames(data):
    """Offsets of the image descriptors of a GIF (a plain reference walk)."""
    position = 13 + (3 * 2 ** ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
    frames = []
    while data[position] in (0x21, 0x2C):
        if data[position] == 0x2C:
            frames.append(position)
            packed = data[position + 9]
            position += 11 + (3 * 2 ** ((packed & 7) + 1) if packed & 0x80 else 0)
        else:
            position += 2
        while data[position]:
            position += 1 + data[position]
        position += 1
    return frames


def animated_gif(height, width, num_frames):
    frames = [Image.fromarray(noise(height, width, seed=i)) for i in range(num_frames)]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:])
    return out.getvalue()


@pytest.fixture(scope="module")
def real_images():
    """(name, bytes, (height, width)) of ordinary images of every readable format."""
    top_down = bytearray(encode(noise(20, 30), "BMP"))
    top_down[22:26] = struct.pack("<i", -20)
    return [
        ("jpeg", tf.io.encode_jpeg(noise(37, 500)).numpy(), (37, 500)),
        ("grey jpeg", encode(noise(50, 300, 1), "JPEG"), (50, 300)),
        ("png", tf.io.encode_png(noise(300, 50)).numpy(), (300, 50)),
        ("grey png", encode(noise(50, 300, 1), "PNG"), (50, 300)),
        ("rgba png", encode(noise(64, 48, 4), "PNG"), (64, 48)),
        ("16-bit png", tf.io.encode_png(np.full((7, 9, 3), 40000, np.uint16)).numpy(), (7, 9)),
        ("1x1 png", tf.io.encode_png(noise(1, 1)).numpy(), (1, 1)),
        ("gif", encode(noise(41, 23), "GIF"), (41, 23)),
        ("bmp", encode(noise(33, 17), "BMP"), (33, 17)),
        ("top-down bmp", bytes(top_down), (20, 30)),
    ]


BATCH = [tf.TensorSpec([None], tf.string)]
# Traced once each, as an export traces them (graph-mode Assert messages).
read_headers = tf.function(image_header.read_image_headers, input_signature=BATCH)
check_sizes = tf.function(lambda images: image_header.check_image_sizes(images, LIMIT), input_signature=BATCH)
guarded_decode = tf.function(lambda images: decode_images(images, 32, max_pixels=LIMIT), input_signature=BATCH)
guarded_decode_one = tf.function(lambda image: decode_image(image, 32, max_pixels=LIMIT),
                                 input_signature=[tf.TensorSpec([], tf.string)])


def test_declared_sizes_of_real_images_match_their_decoded_shapes(real_images):
    images = tf.constant([data for _, data, _ in real_images])
    for read in (image_header.read_image_headers, read_headers):
        headers = read(images)
        for i, (name, data, (height, width)) in enumerate(real_images):
            decoded = tf.io.decode_image(data, channels=3, expand_animations=False).shape
            assert (headers["height"][i], headers["width"][i]) == (height, width) == decoded[:2], name
            assert headers["pixels"][i] == height * width, name
    assert headers["format"].numpy().tolist() == [image_header.FORMAT_NAMES.index(n) for n in (
        "JPEG", "JPEG", "PNG", "PNG", "PNG", "PNG", "PNG", "GIF", "BMP", "BMP")]
    one = image_header.read_image_header(real_images[0][1])
    assert (one["height"], one["width"]) == (37, 500) and one["height"].shape == ()


def test_gif_counts_every_frame_and_ignores_the_logical_screen():
    # TensorFlow decodes every frame into a canvas of the largest frame, so a
    # GIF whose logical screen claims 1x1 still decodes its frames.
    data = bytearray(animated_gif(40, 60, num_frames=3))
    data[6:10] = struct.pack("<HH", 1, 1)
    headers = read_headers(tf.constant([bytes(data)]))
    assert tf.io.decode_image(bytes(data), channels=3, expand_animations=False).shape == (40, 60, 3)
    assert (headers["height"][0], headers["width"][0], headers["pixels"][0]) == (40, 60, 3 * 40 * 60)

    frames = gif_frames(data)
    assert len(frames) == 3
    data[frames[2] + 5 : frames[2] + 9] = struct.pack("<HH", 16000, 16000)
    headers = read_headers(tf.constant([bytes(data)]))
    assert (headers["height"][0], headers["width"][0]) == (16000, 16000)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"declares 16000x16000 pixels \(256\.0"):
        check_sizes(tf.constant([bytes(data)]))


def test_bombs_are_refused_naming_position_and_declared_size(real_images):
    for bomb, size, megapixels in ((png_bomb(16000, 16000), "16000x16000", "256.0"),
                                   (jpeg_declaring(60000, 50000), "60000x50000", "3000.0")):
        batch = tf.constant([real_images[0][1], real_images[2][1], real_images[3][1], bomb])
        for check in (guarded_decode, check_sizes):
            with pytest.raises(tf.errors.InvalidArgumentError) as error:
                check(batch)
            message = error.value.message
            assert (f"Input images[3] declares {size} pixels ({megapixels} MP to decode), above the "
                    "limit of this model: 40.0 MP (max_pixels=40000000)") in message
            # Refused by the header check, not by a decoder that already allocated.
            assert re.search(r"\{\{node [^}]*Assert", message), message
        with pytest.raises(tf.errors.InvalidArgumentError, match=rf"Input images declares {size} pixels"):
            guarded_decode_one(tf.constant(bomb))


def test_the_limit_is_inclusive_and_validated(real_images):
    png = tf.constant([real_images[2][1]])  # 50 wide, 300 high
    assert image_header.check_image_sizes(png, 15000).shape == (1,)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"declares 50x300 pixels .*max_pixels=14999"):
        image_header.check_image_sizes(png, 14999)
    for bad in (0, -1, 1.5, True, None):
        with pytest.raises(ValueError, match="max_pixels must be a positive integer"):
            image_header.check_image_sizes(png, bad)


@pytest.mark.parametrize(
    "data, fragment",
    [
        (b"", "Input images[1] is not a JPEG, PNG, GIF or BMP image"),
        (bytes(np.random.default_rng(3).integers(0, 256, 400, dtype=np.uint8)), "is not a JPEG, PNG, GIF or BMP"),
        (b"RIFF\x10\x00\x00\x00WEBPVP8 ", "is not a JPEG, PNG, GIF or BMP"),
        (png_bomb()[:20], "Input images[1] has only 20 bytes, too few for the header of a PNG image"),
        (b"GIF89a\x01\x00", "has only 8 bytes, too few for the header of a GIF image"),
        (b"BM" + b"\x00" * 20, "has only 22 bytes, too few for the header of a BMP image"),
        (png_bomb()[:12] + b"IEND" + png_bomb()[16:], "is a PNG without an IHDR chunk at byte 12"),
    ],
    ids=["empty", "random-bytes", "webp", "short-png", "short-gif", "short-bmp", "png-without-ihdr"],
)
def test_unreadable_headers_fail_clearly(real_images, data, fragment):
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        read_headers(tf.constant([real_images[0][1], data]))
    assert fragment in error.value.message


def test_truncated_and_bit_flipped_jpegs_fail_as_invalid_arguments(real_images):
    jpeg = real_images[0][1]
    flipped = bytearray(jpeg)
    flipped[jpeg.index(b"\xff\xc0") + 1] ^= 0xFF  # the SOF0 marker itself
    for broken in (jpeg[:3], jpeg[:40], jpeg[: len(jpeg) // 2], bytes(flipped)):
        with pytest.raises(tf.errors.InvalidArgumentError):
            guarded_decode(tf.constant([broken]))


def test_guarded_decode_equals_the_unguarded_one(real_images):
    images = tf.constant([data for _, data, _ in real_images])
    guarded = guarded_decode(images).numpy()
    np.testing.assert_array_equal(guarded, decode_images(images, 32).numpy())
    for i, (name, data, _) in enumerate(real_images):
        np.testing.assert_array_equal(guarded_decode_one(tf.constant(data)).numpy(), guarded[i], err_msg=name)
    assert guarded_decode(tf.constant([], tf.string)).shape == (0, 32, 32, 3)
    # In a tf.data map, as training decodes.
    dataset = tf.data.Dataset.from_tensor_slices(images).map(lambda b: decode_image(b, 32, max_pixels=LIMIT))
    np.testing.assert_array_equal(np.stack(list(dataset.as_numpy_iterator())), guarded)


# ---------------------------------------------------------------------------
# A tiny (untrained) exported classifier: every odd image is served, bombs are
# refused with INVALID_ARGUMENT over gRPC and HTTP 400 over REST.


@pytest.fixture(scope="module")
def classifier_export(tmp_path_factory):
    import keras

    from mmkeras.data.text_preprocessor import text_preprocessor_from_vocabulary
    from mmkeras.data.tokenizer import learn_vocabulary
    from mmkeras.models import build_fusion_classifier
    from serving.export import export_classifier

    keras.utils.set_random_seed(0)
    texts = ["what colour is it", "is there a square", "what shape is this"]
    preprocessor = text_preprocessor_from_vocabulary(learn_vocabulary(texts * 3, 40), 8)
    model = build_fusion_classifier(
        num_classes=3, image_size=32, sequence_length=8, vocabulary_size=preprocessor.tokenizer.vocabulary_size(),
        hidden_dim=16, num_heads=2, intermediate_dim=32, dropout=0.0, fusion="concat",
        label_names=["red", "green", "blue"], text_preprocessor=preprocessor,
        image_encoder_kwargs={"stem_filters": (8, 16), "convs_per_stage": 1}, text_encoder_kwargs={"num_layers": 1},
    )
    export_dir = tmp_path_factory.mktemp("header_exports")
    return {"model": model, "path": export_classifier(model, str(export_dir)), "export_dir": export_dir}


def odd_images():
    """Images of issue 8: greyscale, alpha, one pixel, a thin JPEG (all JPEG/PNG, as exports take)."""
    return [
        encode(noise(50, 300, 1), "PNG"),
        encode(noise(40, 40, 4), "PNG"),
        tf.io.encode_png(noise(1, 1)).numpy(),
        tf.io.encode_jpeg(noise(37, 500)).numpy(),
    ]


def test_exported_classifier_serves_odd_images_and_refuses_bombs(classifier_export):
    from serving import model_config
    from serving.export import guard_image_bytes
    from serving.export import read_export_metadata
    from serving.export import serving_images

    model = classifier_export["model"]
    loaded = tf.saved_model.load(classifier_export["path"])
    serve = loaded.signatures["serving_default"]
    images, texts = odd_images(), ["what colour is it"] * 4
    out = serve(images=tf.constant(images), texts=tf.constant(texts))
    expected = model.probabilities_from_raw(tf.constant(images), tf.constant(texts)).numpy()
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-5)

    with pytest.raises(tf.errors.InvalidArgumentError, match=r"Input images\[2\] declares 16000x16000 pixels"):
        serve(images=tf.constant(images[:2] + [png_bomb()]), texts=tf.constant(texts[:3]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"declares 60000x50000 pixels"):
        serve(images=tf.constant([jpeg_declaring(60000, 50000)]), texts=tf.constant(texts[:1]))
    example = tf.train.Example(features=tf.train.Features(feature={
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png_bomb()])),
        "text": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"what colour"])),
    })).SerializeToString()
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"Input inputs\[0\] declares 16000x16000"):
        loaded.signatures["classification"](inputs=tf.constant([example]))

    # The limit is recorded beside the export; other limits are an export option.
    assert read_export_metadata(classifier_export["path"]) == {"max_pixels": LIMIT}
    assert guard_image_bytes(tf.constant(images[2:3]), max_pixels=1000).shape == (1,)
    assert serving_images(tf.constant(images[2:3]), 32, max_pixels=1000).shape == (1, 32, 32, 3)
    for guard in (guard_image_bytes, lambda x, max_pixels: serving_images(x, 32, max_pixels)):
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"declares 500x37 pixels.*max_pixels=1000"):
            guard(tf.constant(images[2:]), max_pixels=1000)
    # The metadata asset is no version to a lister.
    base_path = os.path.dirname(classifier_export["path"])
    assert model_config.version_dirs(base_path, loadable_only=True) == {1: classifier_export["path"]}


def _rest(url, payload):
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_served_export_answers_a_bomb_with_invalid_argument(classifier_export):
    from tensorflow_serving.apis import predict_pb2
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    from serving.model_config import ModelConfig
    from serving.server import ModelServer

    base_path = os.path.dirname(classifier_export["path"])
    server = ModelServer([ModelConfig("classifier", base_path)], grpc_port=0, rest_port=-1, poll_wait_seconds=0)
    with server, grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

        def request(images):
            message = predict_pb2.PredictRequest()
            message.model_spec.name = "classifier"
            message.inputs["images"].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string))
            message.inputs["texts"].CopyFrom(tf.make_tensor_proto(["what colour"] * len(images)))
            return message

        with pytest.raises(grpc.RpcError) as error:
            stub.Predict(request([odd_images()[0], png_bomb()]), timeout=120)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "Input images[1] declares 16000x16000 pixels (256.0 MP to decode)" in error.value.details()

        url = f"http://127.0.0.1:{server.rest_port}/v1/models/classifier:predict"
        bomb = {"b64": base64.b64encode(jpeg_declaring(60000, 50000)).decode()}
        status, body = _rest(url, {"inputs": {"images": [bomb], "texts": ["what colour"]}})
        assert status == 400 and "Input images[0] declares 60000x50000 pixels" in body["error"]

        # Good requests are still answered, over both.
        outputs = stub.Predict(request(odd_images()), timeout=120).outputs
        assert tf.make_ndarray(outputs["probabilities"]).shape == (4, 3)
        good = [{"b64": base64.b64encode(b).decode()} for b in odd_images()]
        status, body = _rest(url, {"inputs": {"images": good, "texts": ["what colour"] * 4}})
        assert status == 200, body


# ---------------------------------------------------------------------------
# Training on images of any size, aspect ratio, greyscale or with alpha (issue 8).


@pytest.mark.slow
def test_caption_training_takes_greyscale_alpha_and_odd_aspect_images(tmp_path):
    import keras

    from mmkeras.data.caption_pipeline import caption_dataset, eval_image_dataset
    from mmkeras.data.tokenizer import build_tokenizer, learn_vocabulary
    from training import config as config_lib
    from training import named_experiments
    from training.tasks import caption as caption_task

    images = {
        "grey.png": encode(noise(50, 300, 1), "PNG"),
        "alpha.png": encode(noise(40, 40, 4), "PNG"),
        "tall.jpg": encode(noise(500, 37), "JPEG"),
        "wide.jpg": tf.io.encode_jpeg(noise(37, 500)).numpy(),
        "dot.png": tf.io.encode_png(noise(1, 1)).numpy(),
        "palette.png": encode(noise(30, 30), "PNG", mode="P"),
        "rgb16.png": tf.io.encode_png(np.full((20, 10, 3), 50000, np.uint16)).numpy(),
        "grey.jpg": encode(noise(64, 20, 1), "JPEG"),
    }
    splits = {"grey.jpg": "validation", "dot.png": "test"}
    rows = ["image,caption,split"]
    for name, data in images.items():
        (tmp_path / name).write_bytes(data)
        rows.append(f"{name},a {name.split('.')[0]} picture,{splits.get(name, 'train')}")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    # The data path of `python -m training.train --data=csv:...` (its record
    # checks, image loader and tf.data pipeline) with a tiny model.
    cfg = config_lib.override(named_experiments.get_experiment("caption_tiny"), [f"data.spec=csv:{manifest}"])
    records, report, _ = caption_task.load_splits(cfg.data, seed=0)
    assert report.skipped_bad_examples == 0 and len(records["train"]) == 6
    tokenizer = build_tokenizer(learn_vocabulary([c for r in records["train"] for c in r.captions], 100))
    keras.utils.set_random_seed(0)
    model = caption_task.build_model(cfg, tokenizer)
    # Eager steps: what is under test is the input pipeline, and tracing the
    # train step would cost ten times the two steps.
    model.compile(optimizer=keras.optimizers.Adam(1e-3), run_eagerly=True)
    dataset = caption_dataset(records["train"], tokenizer, 32, cfg.data.sequence_length, batch_size=4,
                              training=True, augment=True)
    history = model.fit(dataset, steps_per_epoch=2, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][-1])
    # Evaluation decodes the other splits the same way.
    for split in ("validation", "test"):
        (batch,) = list(eval_image_dataset(records[split], 32, batch_size=4).as_numpy_iterator())
        assert batch.shape == (1, 32, 32, 3) and np.isfinite(batch).all()
