"""Hostile and malformed requests must not hurt the server or the good requests.

Serves a captioner with `python -m serving.server` on 127.0.0.1 (server-side
batching on by default, so bad requests land in batches with good ones) and
runs two phases at `--concurrency`, `--rest_fraction` of the requests over
REST and the rest over gRPC:

1. good only: `2 * --requests` good single-image requests (JPEG and PNG,
   greyscale, RGBA, 1x1 and thin images among them): the baseline of the
   server's peak RSS;
2. the malformed run: `--requests` malformed requests and `--requests` good
   ones in a seeded random order. The malformed kinds: decompression bombs (a
   real 16000x16000 PNG zlib stream of ~750 KB that an unguarded decoder turns
   into 768 MB, and a JPEG whose frame header declares 12000x12000, under
   TensorFlow's own 512 MB JPEG limit), a bomb inside a batch of good images,
   truncated JPEGs, bit-flipped JPEGs, JPEG magic followed by garbage, random
   bytes, wrong dtype, wrong shape, an empty batch, a batch larger than the
   server's max_batch_size, a payload over --max_request_bytes, a missing
   input, an unknown model, version and signature.

Every good request must get the in-process answer (same caption, score within
`--score_rtol`); every malformed one must get its status (gRPC code or HTTP
status; bombs must name the declared size); none may hang (`--timeout`); the
server must answer afterwards and exit cleanly. Each phase has a fresh
server and as many requests; the server's RSS is sampled every 10 ms and its
high-water mark (VmHWM) read after the phase, so the peak of the malformed
run stands beside the peak with good traffic only.

    python benchmarks/serving_robustness.py                   # a tiny captioner exported here
    python benchmarks/serving_robustness.py --requests=500 --concurrency=32
    python benchmarks/serving_robustness.py --model_base_path=saved_models/captioner \\
        --model_name=captioner

An export without the `max_pixels` guard (one from before `serving.export`
wrote `mmkeras_export.json`) is refused: it would decode the bombs.

Ends with exactly one JSON line.
"""

import base64
import collections
import concurrent.futures
import json
import os
import random
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import grpc  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import serving_common  # noqa: E402
from serving import model_config  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model_base_path", "", "Model base path (versions inside); empty: export a tiny captioner.")
flags.DEFINE_string("model_name", "captioner", "Model name to serve.")
flags.DEFINE_string("signature", "serving_default", "Signature of the requests.")
flags.DEFINE_integer("requests", 10000, "Good requests in phase 1; malformed and good requests each in phase 2.")
flags.DEFINE_integer("concurrency", 32, "Concurrent requests.")
flags.DEFINE_float("rest_fraction", 0.2, "Fraction of requests sent over REST instead of gRPC.")
flags.DEFINE_integer("max_request_bytes", 4 << 20, "Server --max_request_bytes (oversized payloads exceed it).")
flags.DEFINE_integer("oversized_batch", 32, "Images in an oversized batch (more than max_batch_size=8).")
flags.DEFINE_bool("enable_batching", True, "Run the server with server-side batching.")
flags.DEFINE_list("kinds", [], "Malformed kinds to send (default: all of MALFORMED), e.g. png_bomb,jpeg_bomb.")
flags.DEFINE_integer("seed", 0, "Seed of the request order and of the malformed bytes.")
flags.DEFINE_float(
    "score_rtol", 1e-4, "Relative tolerance of good scores (batched matmuls differ in the last bits)."
)
flags.DEFINE_float("timeout", 120.0, "Seconds per request; a request that takes longer has hung.")

MAX_BATCH_SIZE = 8
BOMB_SIDE_PNG = 16000
BOMB_SIDE_JPEG = 12000
INVALID, OK = "INVALID_ARGUMENT", "OK"
# kind -> (accepted gRPC statuses, accepted HTTP statuses, fragment the error must hold).
MALFORMED = {
    "png_bomb": ({INVALID}, {400}, f"declares {BOMB_SIDE_PNG}x{BOMB_SIDE_PNG} pixels"),
    "jpeg_bomb": ({INVALID}, {400}, f"declares {BOMB_SIDE_JPEG}x{BOMB_SIDE_JPEG} pixels"),
    "bomb_in_batch": ({INVALID}, {400}, f"images[2] declares {BOMB_SIDE_PNG}x{BOMB_SIDE_PNG}"),
    "truncated_jpeg": ({INVALID}, {400}, ""),
    # Flipped bits in entropy-coded data often still decode (to other pixels).
    "bitflip_jpeg": ({INVALID, OK}, {400, 200}, ""),
    "jpeg_magic_garbage": ({INVALID}, {400}, ""),
    "random_bytes": ({INVALID}, {400}, "images"),
    "wrong_dtype": ({INVALID}, {400}, ""),
    "wrong_shape": ({INVALID}, {400}, ""),
    "empty_batch": ({OK, INVALID}, {200, 400}, ""),
    "oversized_batch": ({OK}, {200}, ""),
    "oversized_payload": ({"RESOURCE_EXHAUSTED"}, {413}, ""),
    "missing_input": ({INVALID}, {400}, ""),
    "unknown_model": ({"NOT_FOUND"}, {404}, ""),
    "unknown_version": ({"NOT_FOUND"}, {404}, ""),
    "unknown_signature": ({"FAILED_PRECONDITION"}, {400}, ""),
}


# ---------------------------------------------------------------------------
# Inputs.


def _encode(pixels, image_format):
    import tensorflow as tf

    if image_format == "png":
        return tf.io.encode_png(pixels).numpy()
    return tf.io.encode_jpeg(pixels, quality=90).numpy()


def good_images(rng):
    """Valid images of every shape the exports must take (issue 8)."""
    shapes = [
        ((96, 96, 3), "png"), ((60, 200, 3), "jpeg"), ((50, 300, 1), "png"), ((64, 64, 4), "png"),
        ((1, 1, 3), "png"), ((37, 500, 3), "jpeg"), ((80, 40, 1), "jpeg"), ((128, 96, 3), "jpeg"),
    ]
    return [_encode(rng.integers(0, 256, shape, dtype=np.uint8), fmt) for shape, fmt in shapes]


def _png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(side=BOMB_SIDE_PNG):
    """A complete, valid side x side RGB PNG of zeros: ~750 KB that decode to side*side*3 bytes."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + 3 * side)  # filter byte + one row
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def jpeg_bomb(side=BOMB_SIDE_JPEG):
    """A small JPEG whose SOF0 frame header declares side x side pixels."""
    data = bytearray(_encode(np.zeros((16, 16, 3), np.uint8), "jpeg"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", side, side)
    return bytes(data)


class Inputs:
    """The byte strings of every request kind, made once (bombs) or per request (seeded)."""

    def __init__(self, seed):
        rng = np.random.default_rng(seed)
        self.images = good_images(rng)
        self.png_bomb = png_bomb()
        self.jpeg_bomb = jpeg_bomb()
        self.jpegs = [image for image in self.images if image[:3] == b"\xff\xd8\xff"]

    def malformed_images(self, kind, rng):
        """The `images` input of a malformed request: a list of bytes, a numpy array, or None."""
        jpeg = self.jpegs[rng.integers(len(self.jpegs))]
        if kind == "png_bomb":
            return [self.png_bomb]
        if kind == "jpeg_bomb":
            return [self.jpeg_bomb]
        if kind == "bomb_in_batch":
            return [self.images[0], self.images[1], self.png_bomb]
        if kind == "truncated_jpeg":
            return [jpeg[: int(rng.integers(3, len(jpeg) - 2))]]
        if kind == "bitflip_jpeg":
            data = bytearray(jpeg)
            for position in rng.integers(3, len(data), size=int(rng.integers(1, 9))):
                data[position] ^= 1 << int(rng.integers(8))
            return [bytes(data)]
        if kind == "jpeg_magic_garbage":
            return [b"\xff\xd8\xff" + rng.bytes(int(rng.integers(0, 2000)))]
        if kind == "random_bytes":
            return [rng.bytes(int(rng.integers(0, 2000)))]
        if kind == "wrong_dtype":
            return np.array([1.0, 2.0], dtype=np.float32)
        if kind == "wrong_shape":
            return [[self.images[0]], [self.images[1]]]
        if kind == "empty_batch":
            return np.array([], dtype=object)
        if kind == "oversized_batch":
            return [self.images[i % len(self.images)] for i in range(FLAGS.oversized_batch)]
        if kind == "oversized_payload":
            return [b"\xff\xd8\xff" + b"\x00" * FLAGS.max_request_bytes]
        if kind == "missing_input":
            return None
        return [self.images[0]]  # unknown model, version, signature: good bytes


# ---------------------------------------------------------------------------
# Requests: each returns (status, detail, outputs or None).


def _grpc_call(stub, kind, images):
    import tensorflow as tf

    request = serving_common.predict_request(FLAGS.model_name, FLAGS.signature, None)
    if images is not None:
        dtype = None if isinstance(images, np.ndarray) and images.dtype != object else tf.string
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(images, dtype=dtype))
    if kind == "unknown_model":
        request.model_spec.name = FLAGS.model_name + "_missing"
    elif kind == "unknown_version":
        request.model_spec.version.value = 987654
    elif kind == "unknown_signature":
        request.model_spec.signature_name = "no_such_signature"
    try:
        response = stub.Predict(request, timeout=FLAGS.timeout)
    except grpc.RpcError as e:
        return e.code().name, e.details() or "", None
    outputs = {
        "captions": list(response.outputs["captions"].string_val),
        "scores": list(response.outputs["scores"].float_val),
    }
    return OK, "", outputs


def _b64(data):
    return {"b64": base64.b64encode(data).decode()}


def _rest_call(url, kind, images):
    model = FLAGS.model_name
    path = f"/v1/models/{model}:predict"
    body = {"signature_name": FLAGS.signature}
    if isinstance(images, np.ndarray) and images.dtype != object:
        body["instances"] = images.tolist()
    elif images is not None and len(images) and isinstance(images[0], list):
        body["instances"] = [[_b64(b) for b in row] for row in images]
    elif images is not None:
        body["inputs"] = {"images": [_b64(b) for b in images]}
    if kind == "unknown_model":
        path = f"/v1/models/{model}_missing:predict"
    elif kind == "unknown_version":
        path = f"/v1/models/{model}/versions/987654:predict"
    elif kind == "unknown_signature":
        body["signature_name"] = "no_such_signature"
    request = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=FLAGS.timeout) as response:
            status, payload = response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        status, payload = e.code, json.loads(e.read() or b"{}")
    except (socket.timeout, TimeoutError):
        return "DEADLINE_EXCEEDED", "REST request timed out", None
    if status != 200:
        return f"HTTP {status}", str(payload.get("error", payload)), None
    outputs = payload.get("outputs", payload.get("predictions"))
    if isinstance(outputs, list):  # row format
        outputs = {"captions": [row["captions"] for row in outputs], "scores": [row["scores"] for row in outputs]}
    outputs = {"captions": [c.encode() for c in outputs["captions"]], "scores": outputs["scores"]}
    return "HTTP 200", "", outputs


# ---------------------------------------------------------------------------
# Server memory.


def _proc_kb(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise ValueError(f"no {field} in /proc/{pid}/status")


class RSSSampler:
    """Samples a process's resident set size every `interval` seconds, per phase."""

    def __init__(self, pid, interval=0.01):
        self.pid = pid
        self.interval = interval
        self.phase = "startup"
        self.peaks = collections.defaultdict(int)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(self.interval):
            try:
                rss = _proc_kb(self.pid, "VmRSS")
            except (OSError, ValueError):
                return
            self.peaks[self.phase] = max(self.peaks[self.phase], rss)

    def high_water_mb(self):
        return round(_proc_kb(self.pid, "VmHWM") / 1024, 1)

    def peak_mb(self, phase):
        return round(self.peaks[phase] / 1024, 1)

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=5)


# ---------------------------------------------------------------------------
# The model.


def tiny_captioner(work_dir):
    """Exports an untrained tiny `ImageCaptioner` (real export path, with the guard)."""
    import keras

    from mmkeras.data.tokenizer import build_tokenizer, learn_vocabulary
    from serving.export import export_captioner
    from training import config as config_lib
    from training import named_experiments
    from training.tasks import caption as caption_task

    keras.utils.set_random_seed(FLAGS.seed)
    words = "a the red green blue small large square circle triangle on left right of picture".split()
    tokenizer = build_tokenizer(learn_vocabulary([" ".join(words)] * 4, 64, level="word"))
    cfg = config_lib.override(named_experiments.get_experiment("caption_tiny"), ["data.sequence_length=8"])
    model = caption_task.build_model(cfg, tokenizer)
    export_captioner(model, work_dir, FLAGS.model_name, version=1, num_beams=2)
    base_path = os.path.join(work_dir, FLAGS.model_name)
    return base_path, serving_common.latest_version_dir(base_path)


def _expected(version_dir, images):
    import tensorflow as tf

    function = serving_common.load_signature(version_dir, FLAGS.signature)
    answers = []
    for image in images:
        outputs = function(images=tf.constant([image]))
        answers.append((outputs["captions"].numpy()[0], float(outputs["scores"].numpy()[0])))
    return answers


# ---------------------------------------------------------------------------


def _server_args(work_dir, base_path):
    args = [
        "--port=0",
        "--rest_api_port=-1",
        f"--model_name={FLAGS.model_name}",
        f"--model_base_path={base_path}",
        "--file_system_poll_wait_seconds=0",
        f"--max_request_bytes={FLAGS.max_request_bytes}",
    ]
    if FLAGS.enable_batching:
        batching_file = model_config.write_batching_parameters(
            work_dir, max_batch_size=MAX_BATCH_SIZE, batch_timeout_micros=2000, num_batch_threads=2,
            max_enqueued_batches=1000,
        )
        args += ["--enable_batching", f"--batching_parameters_file={batching_file}"]
    return args


def run_phase(name, plan, inputs, answers, work_dir, base_path):
    """Sends `plan` to a fresh server; returns (results, figures of the phase)."""
    from serving.server import ServerProcess
    from tensorflow_serving.apis import get_model_status_pb2
    from tensorflow_serving.apis import model_service_pb2_grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    log_path = os.path.join(work_dir, f"server-{name.replace(' ', '-')}.log")
    server = ServerProcess(_server_args(work_dir, base_path), log_path=log_path).start()
    idle_mb = round(_proc_kb(server.process.pid, "VmRSS") / 1024, 1)
    sampler = RSSSampler(server.process.pid)
    sampler.phase = name
    channel = grpc.insecure_channel(
        server.grpc_address,
        options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)],
    )
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

    def run(item):
        kind, index, rest, seed = item
        rng = np.random.default_rng(seed)
        images = [inputs.images[index]] if kind == "good" else inputs.malformed_images(kind, rng)
        try:
            if rest:
                status, detail, outputs = _rest_call(server.rest_url, kind, images)
            else:
                status, detail, outputs = _grpc_call(stub, kind, images)
        except Exception as e:  # noqa: BLE001 - counted as unexpected.
            return kind, f"client error {type(e).__name__}", False, str(e)[:200]
        if kind == "good":
            if outputs is None:
                return kind, status, False, detail[:200]
            expected_caption, expected_score = answers[index]
            ok = outputs["captions"] == [expected_caption] and bool(
                np.isclose(outputs["scores"][0], expected_score, rtol=FLAGS.score_rtol, atol=1e-6))
            return kind, status, ok, f"got {outputs}, expected {expected_caption!r} {expected_score}"
        grpc_ok, http_ok, fragment = MALFORMED[kind]
        accepted = (int(status.split()[1]) in http_ok) if status.startswith("HTTP") else status in grpc_ok
        ok = accepted and (outputs is not None or fragment in detail)
        if ok and outputs is not None and kind == "oversized_batch":
            ok = len(outputs["captions"]) == FLAGS.oversized_batch
        return kind, status, ok, detail[:200]

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(FLAGS.concurrency) as pool:
        results = list(pool.map(run, plan))
    elapsed = time.perf_counter() - start
    sampler.phase = "after"
    peak_mb, high_water_mb = sampler.peak_mb(name), sampler.high_water_mb()

    alive = server.alive()
    if alive:
        try:
            status_request = get_model_status_pb2.GetModelStatusRequest()
            status_request.model_spec.name = FLAGS.model_name
            model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status_request, timeout=30)
            _, _, outputs = _grpc_call(stub, "good", [inputs.images[0]])
            alive = outputs is not None and outputs["captions"] == [answers[0][0]]
        except grpc.RpcError:
            alive = False
    channel.close()
    sampler.stop()
    exit_code = server.stop()
    good = [ok for kind, _, ok, _ in results if kind == "good"]
    malformed = [ok for kind, _, ok, _ in results if kind != "good"]
    figures = {
        "good_ok": sum(good), "good_total": len(good),
        "malformed_as_expected": sum(malformed), "malformed_total": len(malformed),
        "server_idle_rss_mb": idle_mb, "peak_rss_mb": peak_mb, "high_water_rss_mb": high_water_mb,
        "elapsed_s": round(elapsed, 1), "server_alive": bool(alive), "clean_exit": exit_code == 0,
    }
    print(f"{name}: {figures}", flush=True)
    return results, figures


def main(argv):
    del argv
    from serving.export import read_export_metadata

    work_dir = tempfile.mkdtemp(prefix="serving-robustness-")
    if FLAGS.model_base_path:
        base_path = os.path.abspath(FLAGS.model_base_path)
        try:
            version_dir = serving_common.latest_version_dir(base_path)
        except ValueError as e:
            raise app.UsageError(str(e))
    else:
        base_path, version_dir = tiny_captioner(work_dir)
    max_pixels = read_export_metadata(version_dir).get("max_pixels")
    if not max_pixels:
        raise app.UsageError(
            f"{version_dir} has no max_pixels guard (exported before serving.export wrote "
            "mmkeras_export.json): it would decode the bombs. Re-export it."
        )
    inputs = Inputs(FLAGS.seed)
    answers = _expected(version_dir, inputs.images)
    print(f"Serving {version_dir} (max_pixels={max_pixels}); PNG bomb {len(inputs.png_bomb)} bytes "
          f"declaring {BOMB_SIDE_PNG}x{BOMB_SIDE_PNG}", flush=True)

    rng = random.Random(FLAGS.seed)
    kinds = FLAGS.kinds or list(MALFORMED)
    unknown = sorted(set(kinds) - set(MALFORMED))
    if unknown:
        raise app.UsageError(f"Unknown --kinds {unknown}; known: {', '.join(MALFORMED)}")

    def item(kind, i):
        return kind, i % len(inputs.images), rng.random() < FLAGS.rest_fraction, rng.randrange(1 << 30)

    # Both phases send as many requests, each to a fresh server: the only
    # difference between their peaks is the malformed half.
    good_plan = [item("good", i) for i in range(2 * FLAGS.requests)]
    mixed_plan = [item("good", i) for i in range(FLAGS.requests)]
    mixed_plan += [item(kinds[i % len(kinds)], i) for i in range(FLAGS.requests)]
    rng.shuffle(mixed_plan)
    good_results, good_only = run_phase("good only", good_plan, inputs, answers, work_dir, base_path)
    mixed_results, malformed_run = run_phase("malformed run", mixed_plan, inputs, answers, work_dir, base_path)

    statuses = collections.defaultdict(collections.Counter)
    unexpected = collections.defaultdict(list)
    for kind, status, ok, detail in mixed_results:
        statuses[kind][status] += 1
        if not ok:
            unexpected[kind].append(f"{status}: {detail}")
    for kind, _, ok, detail in good_results:
        if not ok:
            unexpected["good (good only)"].append(detail)
    for kind, details in unexpected.items():
        print(f"{kind}: {len(details)} unexpected, e.g. {details[0]}", flush=True)
    hung = sum(1 for _, status, _, _ in good_results + mixed_results if status == "DEADLINE_EXCEEDED")
    if unexpected or hung:
        print(f"Server logs kept in {work_dir}", flush=True)
    else:
        shutil.rmtree(work_dir, ignore_errors=True)

    figures = {
        "requests": FLAGS.requests,
        "concurrency": FLAGS.concurrency,
        "rest_fraction": FLAGS.rest_fraction,
        "batching": FLAGS.enable_batching,
        "max_pixels": max_pixels,
        "kinds": kinds,
        "good_only": good_only,
        "malformed_run": malformed_run,
        "peak_rss_malformed_minus_good_only_mb": round(
            malformed_run["peak_rss_mb"] - good_only["peak_rss_mb"], 1),
        "hung": hung,
        "unexpected_by_kind": {kind: len(details) for kind, details in sorted(unexpected.items())},
        "statuses_by_kind": {kind: dict(sorted(counter.items())) for kind, counter in sorted(statuses.items())},
    }
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    app.run(main)
