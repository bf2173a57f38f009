"""Malformed requests interleaved with good ones must not hurt the good ones.

Starts `python -m serving.server` (server-side batching on by default, so bad
requests also land in batches with good ones) and sends, at `--concurrency`,
`--good_requests` good single-image requests and `--bad_requests` malformed
ones in a seeded random order: non-image bytes, wrong dtype, wrong rank, a
missing input, an unknown model, an unknown version, an unknown signature and
an oversized payload; `--rest_fraction` of both go through the REST API.

Every good request must succeed with the in-process answer (same caption, score
within float tolerance) and every bad one must get its error code (gRPC status
or HTTP status); the server must still answer afterwards.

    python benchmarks/serving_robustness.py --toy
    python benchmarks/serving_robustness.py --model_base_path=saved_models/captioner \
        --model_name=captioner

Ends with exactly one JSON line.
"""

import base64
import collections
import concurrent.futures
import json
import os
import random
import sys
import tempfile
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import grpc  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import serving_common  # noqa: E402
from serving import model_config  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model_base_path", "saved_models/captioner", "Model base path (versions inside).")
flags.DEFINE_string("model_name", "captioner", "Model name to serve.")
flags.DEFINE_string("signature", "serving_default", "Signature of the good requests.")
flags.DEFINE_bool("toy", False, "Export the toy captioner (serving/toy_models.py) to a temp dir and use it.")
flags.DEFINE_integer("good_requests", 1000, "Good requests.")
flags.DEFINE_integer("bad_requests", 1000, "Malformed requests.")
flags.DEFINE_integer("concurrency", 8, "Concurrent requests.")
flags.DEFINE_float("rest_fraction", 0.2, "Fraction of requests sent over REST instead of gRPC.")
flags.DEFINE_integer("num_images", 8, "Distinct good images.")
flags.DEFINE_integer("max_request_bytes", 1 << 20, "Server --max_request_bytes (oversized requests exceed it).")
flags.DEFINE_bool("enable_batching", True, "Run the server with server-side batching.")
flags.DEFINE_integer("seed", 0, "Seed of the request order.")
flags.DEFINE_float(
    "score_rtol", 1e-4, "Relative tolerance of good scores (batched matmuls differ in the last bits)."
)
flags.DEFINE_float("timeout", 120.0, "Seconds per request.")
flags.DEFINE_float("max_seconds", 1800.0, "Stop sending after this many seconds.")

BAD_KINDS = (
    "non_image",
    "wrong_dtype",
    "wrong_rank",
    "missing_input",
    "unknown_model",
    "unknown_version",
    "unknown_signature",
    "oversized",
)
EXPECTED_GRPC = {
    "non_image": grpc.StatusCode.INVALID_ARGUMENT,
    "wrong_dtype": grpc.StatusCode.INVALID_ARGUMENT,
    "wrong_rank": grpc.StatusCode.INVALID_ARGUMENT,
    "missing_input": grpc.StatusCode.INVALID_ARGUMENT,
    "unknown_model": grpc.StatusCode.NOT_FOUND,
    "unknown_version": grpc.StatusCode.NOT_FOUND,
    "unknown_signature": grpc.StatusCode.FAILED_PRECONDITION,
    "oversized": grpc.StatusCode.RESOURCE_EXHAUSTED,
}
EXPECTED_HTTP = {
    "non_image": 400,
    "wrong_dtype": 400,
    "wrong_rank": 400,
    "missing_input": 400,
    "unknown_model": 404,
    "unknown_version": 404,
    "unknown_signature": 400,
    "oversized": 413,
}


def _images():
    from serving import toy_models

    rng = np.random.default_rng(FLAGS.seed)
    images = []
    for i in range(FLAGS.num_images):
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        image_format = "jpeg" if i % 2 else "png"
        images.append(toy_models.make_image_bytes(colour, size=96, image_format=image_format, seed=i))
    return images


def _expected(version_dir, images):
    import tensorflow as tf

    function = serving_common.load_signature(version_dir, FLAGS.signature)
    answers = []
    for image in images:
        outputs = function(images=tf.constant([image]))
        answers.append((outputs["captions"].numpy()[0], float(outputs["scores"].numpy()[0])))
    return answers


def _grpc_request(kind, image):
    images = [image]
    if kind == "non_image":
        images = [b"definitely not an image " + image[:16]]
    elif kind == "wrong_dtype":
        images = np.array([1.0, 2.0], dtype=np.float32)
    elif kind == "wrong_rank":
        images = [[image]]
    elif kind == "oversized":
        images = [b"\xff" * (FLAGS.max_request_bytes + 1024)]
    elif kind == "missing_input":
        images = None
    request = serving_common.predict_request(FLAGS.model_name, FLAGS.signature, images)
    if kind == "unknown_model":
        request.model_spec.name = FLAGS.model_name + "_missing"
    elif kind == "unknown_version":
        request.model_spec.version.value = 987654
    elif kind == "unknown_signature":
        request.model_spec.signature_name = "no_such_signature"
    return request


def _rest_call(url, kind, image):
    model = FLAGS.model_name
    path = f"/v1/models/{model}:predict"
    body = {"signature_name": FLAGS.signature, "instances": [{"b64": base64.b64encode(image).decode()}]}
    if kind == "non_image":
        body["instances"] = [{"b64": base64.b64encode(b"not an image").decode()}]
    elif kind == "wrong_dtype":
        body["instances"] = [1.5]
    elif kind == "wrong_rank":
        body["instances"] = [[{"b64": base64.b64encode(image).decode()}]]
    elif kind == "missing_input":
        body = {"signature_name": FLAGS.signature}
    elif kind == "unknown_model":
        path = f"/v1/models/{model}_missing:predict"
    elif kind == "unknown_version":
        path = f"/v1/models/{model}/versions/987654:predict"
    elif kind == "unknown_signature":
        body["signature_name"] = "no_such_signature"
    elif kind == "oversized":
        body["instances"] = [{"b64": base64.b64encode(b"\xff" * FLAGS.max_request_bytes).decode()}]
    request = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=FLAGS.timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def main(argv):
    del argv
    from serving.server import ServerProcess
    from tensorflow_serving.apis import get_model_status_pb2
    from tensorflow_serving.apis import model_service_pb2_grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    work_dir = tempfile.mkdtemp(prefix="serving-robustness-")
    try:
        base_path, version_dir = serving_common.model_to_serve(
            work_dir, FLAGS.model_base_path, FLAGS.model_name, FLAGS.toy
        )
    except ValueError as e:
        raise app.UsageError(str(e))
    images = _images()
    answers = _expected(version_dir, images)

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
            work_dir, max_batch_size=8, batch_timeout_micros=2000, num_batch_threads=2,
            max_enqueued_batches=1000,
        )
        args += ["--enable_batching", f"--batching_parameters_file={batching_file}"]
    server = ServerProcess(args, log_path=os.path.join(work_dir, "server.log")).start()

    rng = random.Random(FLAGS.seed)
    plan = [("good", i % len(images)) for i in range(FLAGS.good_requests)]
    plan += [(BAD_KINDS[i % len(BAD_KINDS)], i % len(images)) for i in range(FLAGS.bad_requests)]
    rng.shuffle(plan)
    plan = [(kind, image, rng.random() < FLAGS.rest_fraction) for kind, image in plan]

    channel = grpc.insecure_channel(
        server.grpc_address,
        options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)],
    )
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    deadline = time.monotonic() + FLAGS.max_seconds

    def run(item):
        kind, index, rest = item
        if time.monotonic() > deadline:
            return kind, False, "not sent: time limit"
        image = images[index]
        try:
            if rest:
                status, body = _rest_call(server.rest_url, "good" if kind == "good" else kind, image)
                if kind != "good":
                    ok = status == EXPECTED_HTTP[kind] and "error" in body
                    return kind, ok, f"HTTP {status}: {str(body)[:200]}"
                if status != 200:
                    return kind, False, f"HTTP {status}: {str(body)[:200]}"
                caption = body["predictions"][0]["captions"].encode()
                score = body["predictions"][0]["scores"]
            else:
                request = _grpc_request("good" if kind == "good" else kind, image)
                try:
                    response = stub.Predict(request, timeout=FLAGS.timeout)
                except grpc.RpcError as e:
                    if kind == "good":
                        return kind, False, f"{e.code().name}: {e.details()[:200]}"
                    ok = e.code() == EXPECTED_GRPC[kind]
                    return kind, ok, f"{e.code().name}: {e.details()[:200]}"
                if kind != "good":
                    return kind, False, "bad request succeeded"
                caption = response.outputs["captions"].string_val[0]
                score = response.outputs["scores"].float_val[0]
        except Exception as e:  # noqa: BLE001 - counted as a failure.
            return kind, False, f"{type(e).__name__}: {e}"
        expected_caption, expected_score = answers[index]
        ok = caption == expected_caption and bool(
            np.isclose(score, expected_score, rtol=FLAGS.score_rtol, atol=1e-6)
        )
        return kind, ok, f"got {caption!r} {score}, expected {expected_caption!r} {expected_score}"

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(FLAGS.concurrency) as pool:
        results = list(pool.map(run, plan))
    elapsed = time.perf_counter() - start

    counts = collections.Counter()
    failures = collections.defaultdict(list)
    for kind, ok, detail in results:
        counts[(kind, ok)] += 1
        if not ok:
            failures[kind].append(detail)
    for kind, details in failures.items():
        print(f"{kind}: {len(details)} failed, e.g. {details[0]}", flush=True)

    alive = server.alive()
    if alive:
        try:
            status_request = get_model_status_pb2.GetModelStatusRequest()
            status_request.model_spec.name = FLAGS.model_name
            model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status_request, timeout=30)
            response = stub.Predict(_grpc_request("good", images[0]), timeout=FLAGS.timeout)
            alive = response.outputs["captions"].string_val[0] == answers[0][0]
        except grpc.RpcError:
            alive = False
    channel.close()
    exit_code = server.stop()

    good_total = sum(1 for kind, _, _ in plan if kind == "good")
    figures = {
        "good_ok": counts[("good", True)],
        "good_total": good_total,
        "bad_rejected": sum(v for (kind, ok), v in counts.items() if kind != "good" and ok),
        "bad_total": len(plan) - good_total,
        "server_alive": bool(alive),
        "clean_exit": exit_code == 0,
        "elapsed_s": round(elapsed, 1),
        "rest_requests": sum(1 for _, _, rest in plan if rest),
        "batching": FLAGS.enable_batching,
        "bad_rejected_by_kind": {
            kind: counts[(kind, True)] for kind in BAD_KINDS
        },
    }
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    app.run(main)
