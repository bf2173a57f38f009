"""Serving overhead and server-side batching, measured against their baselines.

In one run, on one machine:
1. in-process latency: the SavedModel signature called in this process with one
   image (p50 / p99 over `--calls` calls after `--warmup`);
2. gRPC latency: the same request through `python -m serving.server` on
   loopback, batch 1 (the baseline's overhead is the server's);
3. throughput (requests/s) at `--concurrency` concurrent single-image clients,
   without and with server-side batching: two servers run side by side and are
   measured in alternating rounds.

In-process and gRPC calls alternate too, so that load from elsewhere on the
machine hits each figure and its baseline alike.

Bars: gRPC p50 within 1.5x of in-process p50; batching >= 2x the throughput
without batching at concurrency 16.

    python benchmarks/serving_load.py --toy
    python benchmarks/serving_load.py --model_base_path=saved_models/captioner \\
        --model_name=captioner

Ends with exactly one JSON line.
"""

import json
import os
import sys
import tempfile
import threading
import time

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
flags.DEFINE_string("signature", "serving_default", "Signature to call.")
flags.DEFINE_bool("toy", False, "Export the toy captioner (serving/toy_models.py) to a temp dir and use it.")
flags.DEFINE_integer("toy_decode_steps", 32, "Decoder steps of the toy captioner.")
flags.DEFINE_integer("toy_hidden_dim", 128, "Hidden size of the toy captioner.")
flags.DEFINE_string("image", "", "Image file to send; default a synthetic 224x224 JPEG.")
flags.DEFINE_integer("warmup", 20, "Untimed calls before each latency measurement.")
flags.DEFINE_integer("calls", 200, "Timed calls per latency measurement.")
flags.DEFINE_integer("concurrency", 16, "Concurrent clients for the throughput runs.")
flags.DEFINE_integer("requests_per_client", 20, "Requests per client per throughput round.")
flags.DEFINE_integer("rounds", 4, "Alternating throughput rounds per server.")
flags.DEFINE_integer("max_batch_size", 16, "Batching: max_batch_size.")
flags.DEFINE_integer("batch_timeout_micros", 5000, "Batching: batch_timeout_micros.")
flags.DEFINE_integer("num_batch_threads", 2, "Batching: num_batch_threads.")
flags.DEFINE_float("timeout", 120.0, "Seconds per request.")


def _percentiles(seconds):
    ms = np.asarray(seconds) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def _image_bytes():
    if FLAGS.image:
        with open(FLAGS.image, "rb") as f:
            return f.read()
    from serving import toy_models

    return toy_models.make_image_bytes((180, 90, 40), size=224, image_format="jpeg")


def _in_process_function(version_dir):
    import tensorflow as tf

    function = serving_common.load_signature(version_dir, FLAGS.signature)

    def call(image):
        outputs = function(images=tf.constant([image]))
        return {k: v.numpy() for k, v in outputs.items()}

    return call


def _request(image):
    return serving_common.predict_request(FLAGS.model_name, FLAGS.signature, [image])


def _latencies(in_process, stub, image):
    """Alternates in-process and gRPC calls, so both see the same machine load."""
    request = _request(image)
    for _ in range(FLAGS.warmup):
        in_process(image)
        stub.Predict(request, timeout=FLAGS.timeout)
    in_process_times, grpc_times = [], []
    for _ in range(FLAGS.calls):
        start = time.perf_counter()
        in_process(image)
        in_process_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        stub.Predict(request, timeout=FLAGS.timeout)
        grpc_times.append(time.perf_counter() - start)
    return in_process_times, grpc_times


def _throughput(stub, image):
    """(requests, seconds) of `concurrency` clients sending back to back."""
    barrier = threading.Barrier(FLAGS.concurrency + 1)
    errors = []
    request = _request(image)

    def client():
        barrier.wait()
        for _ in range(FLAGS.requests_per_client):
            try:
                stub.Predict(request, timeout=FLAGS.timeout)
            except grpc.RpcError as e:
                errors.append(e)

    threads = [threading.Thread(target=client) for _ in range(FLAGS.concurrency)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, e.g. {errors[0]}")
    return FLAGS.concurrency * FLAGS.requests_per_client, elapsed


def _serve(base_path, extra_args, log_path):
    from serving.server import ServerProcess

    args = [
        "--port=0",
        "--rest_api_port=0",
        f"--model_name={FLAGS.model_name}",
        f"--model_base_path={base_path}",
        "--file_system_poll_wait_seconds=0",
        *extra_args,
    ]
    return ServerProcess(args, log_path=log_path).start()


def main(argv):
    del argv
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    work_dir = tempfile.mkdtemp(prefix="serving-load-")
    try:
        base_path, version_dir = serving_common.model_to_serve(
            work_dir,
            FLAGS.model_base_path,
            FLAGS.model_name,
            FLAGS.toy,
            decode_steps=FLAGS.toy_decode_steps,
            hidden_dim=FLAGS.toy_hidden_dim,
        )
    except ValueError as e:
        raise app.UsageError(str(e))
    image = _image_bytes()
    in_process = _in_process_function(version_dir)

    batching_file = model_config.write_batching_parameters(
        work_dir,
        max_batch_size=FLAGS.max_batch_size,
        batch_timeout_micros=FLAGS.batch_timeout_micros,
        num_batch_threads=FLAGS.num_batch_threads,
        max_enqueued_batches=1000,
    )
    # Both servers run side by side and are measured in alternating rounds,
    # so that a burst of load from elsewhere hits both alike.
    servers = {}
    try:
        for batching in (False, True):
            extra = ["--enable_batching", f"--batching_parameters_file={batching_file}"]
            servers[batching] = _serve(
                base_path,
                extra if batching else [],
                os.path.join(work_dir, f"server-batching-{batching}.log"),
            )
        channels = {b: grpc.insecure_channel(s.grpc_address) for b, s in servers.items()}
        stubs = {
            b: prediction_service_pb2_grpc.PredictionServiceStub(c) for b, c in channels.items()
        }

        in_process_times, grpc_times = _latencies(in_process, stubs[False], image)
        inprocess_p50, inprocess_p99 = _percentiles(in_process_times)
        grpc_p50, grpc_p99 = _percentiles(grpc_times)
        print(f"in-process   p50 {inprocess_p50:.2f} ms  p99 {inprocess_p99:.2f} ms", flush=True)
        print(f"gRPC         p50 {grpc_p50:.2f} ms  p99 {grpc_p99:.2f} ms", flush=True)

        for stub in stubs.values():
            for _ in range(FLAGS.warmup):
                stub.Predict(_request(image), timeout=FLAGS.timeout)
        totals = {False: [0, 0.0], True: [0, 0.0]}
        for round_index in range(FLAGS.rounds):
            order = (False, True) if round_index % 2 == 0 else (True, False)
            for batching in order:
                requests, seconds = _throughput(stubs[batching], image)
                totals[batching][0] += requests
                totals[batching][1] += seconds
        rps = {b: n / t for b, (n, t) in totals.items()}
        for batching, key in ((False, "rps_no_batching"), (True, "rps_batching")):
            print(f"{key:<16} {rps[batching]:.1f} requests/s at concurrency {FLAGS.concurrency}")
        for channel in channels.values():
            channel.close()
    finally:
        for server in servers.values():
            server.stop()
    results = {
        "grpc_p50_ms": grpc_p50,
        "grpc_p99_ms": grpc_p99,
        "rps_batching": rps[True],
        "rps_no_batching": rps[False],
    }

    figures = {
        "inprocess_p50_ms": round(inprocess_p50, 3),
        "inprocess_p99_ms": round(inprocess_p99, 3),
        "grpc_p50_ms": round(results["grpc_p50_ms"], 3),
        "grpc_p99_ms": round(results["grpc_p99_ms"], 3),
        "rps_batching": round(results["rps_batching"], 1),
        "rps_no_batching": round(results["rps_no_batching"], 1),
    }
    figures["grpc_over_inprocess_p50"] = round(figures["grpc_p50_ms"] / figures["inprocess_p50_ms"], 3)
    figures["batching_speedup"] = round(figures["rps_batching"] / figures["rps_no_batching"], 3)
    figures["grpc_bar_ok"] = figures["grpc_over_inprocess_p50"] <= 1.5
    figures["batching_bar_ok"] = figures["batching_speedup"] >= 2.0
    figures["model"] = "toy_captioner" if FLAGS.toy else FLAGS.model_base_path
    figures["concurrency"] = FLAGS.concurrency
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    app.run(main)
