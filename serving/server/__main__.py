"""A local model server that speaks TensorFlow Serving's gRPC and REST protocols.

`python -m serving.server` is a drop-in stand-in for `tensorflow_model_server`
on machines where the official binary cannot be installed. It takes the flags of
`tensorflow_model_server` that matter for mmkeras and answers
`tensorflow.serving.PredictionService` (Predict, Classify, GetModelMetadata) and
`tensorflow.serving.ModelService` (GetModelStatus, HandleReloadConfigRequest)
over gRPC, and the `/v1/models/...` REST API over HTTP, with TF Serving's
request and response formats and status codes, so a client cannot tell the two
apart.

Single model:

    python -m serving.server --model_name=captioner \\
        --model_base_path=saved_models/captioner

Several models, the `models.config` that the TF Serving container also reads:

    python -m serving.server --model_config_file=saved_models/models.config \\
        --enable_batching --batching_parameters_file=saved_models/batching_parameters.pbtxt

In a `models.config` written for the container, base paths are `/models/<name>`.
When such a path does not exist on this machine, the server maps `/models/X` to
`X` under the folder that holds the config file (and relative base paths are
also resolved against that folder), so the same file works locally.

Lifecycle: every `--file_system_poll_wait_seconds` a background thread lists the
integer version directories under each base path (anything else, such as
`.tmp-3` or `3.tmp`, and directories without `saved_model.pb` are ignored),
loads the versions that the model's version policy asks for (default: the
highest) and unloads the others only after the new ones are loaded. A version
that fails to load is logged and skipped until its files change.

Batching (`--enable_batching`): concurrent requests for the same model version,
signature and per-example input shapes are concatenated along the batch
dimension into one model call (up to `max_batch_size`, waiting at most
`batch_timeout_micros`, on `num_batch_threads` threads) and the outputs are
split back. If a merged call fails, its requests are re-run one by one so that a
bad request only fails itself.

When the ports are bound the server prints one line to stdout,
`mmkeras-serving grpc_port=NNN rest_port=MMM` (0 when REST is disabled), so a
caller that asked for `--port=0` or `--rest_api_port=-1` can read the ports.
"""

import os
import signal
import threading

from absl import app
from absl import flags
from absl import logging
import tensorflow as tf

from serving import model_config
from serving.server.batching_config import BatchingParameters
from serving.server.batching_config import parse_batching_parameters
from serving.server.model_server import DEFAULT_MAX_REQUEST_BYTES
from serving.server.model_server import ModelServer
from serving.server.servables import import_tensorflow_text


def define_flags():
    """Defines the `tensorflow_model_server`-style flags (once)."""
    if "model_base_path" in flags.FLAGS:
        return
    flags.DEFINE_integer("port", 8500, "Port to listen on for gRPC API; 0 picks a free port.")
    flags.DEFINE_integer(
        "rest_api_port",
        8501,
        "Port to listen on for HTTP/REST API. 0 disables the REST API (as in "
        "tensorflow_model_server); -1 picks a free port.",
    )
    flags.DEFINE_string("host", "127.0.0.1", "Address to bind both APIs to.")
    flags.DEFINE_string(
        "model_name", "default", "Name of the model (ignored if --model_config_file is set)."
    )
    flags.DEFINE_string(
        "model_base_path",
        "",
        "Path to export: its integer subdirectories are versions (ignored if "
        "--model_config_file is set).",
    )
    flags.DEFINE_string(
        "model_config_file",
        "",
        "ModelServerConfig text proto (model_config_list). Base paths /models/X that "
        "do not exist here are read as X under the config file's folder.",
    )
    flags.DEFINE_integer(
        "model_config_file_poll_wait_seconds",
        0,
        "Seconds between checks of --model_config_file for changes; 0 reads it once.",
    )
    flags.DEFINE_bool("enable_batching", False, "Enable server-side batching.")
    flags.DEFINE_string(
        "batching_parameters_file",
        "",
        "BatchingParameters text proto (max_batch_size, batch_timeout_micros, "
        "num_batch_threads, max_enqueued_batches); implies --enable_batching.",
    )
    flags.DEFINE_float(
        "file_system_poll_wait_seconds",
        1.0,
        "Seconds between polls of the base paths for new or removed versions; "
        "<= 0 polls once at start-up.",
    )
    flags.DEFINE_integer(
        "max_request_bytes",
        DEFAULT_MAX_REQUEST_BYTES,
        "Largest accepted request in bytes: larger gRPC messages fail with "
        "RESOURCE_EXHAUSTED, larger REST bodies with HTTP 413.",
    )
    flags.DEFINE_integer("grpc_max_threads", 64, "Threads that handle gRPC requests.")
    flags.DEFINE_integer(
        "tensorflow_intra_op_parallelism", 0, "TensorFlow intra-op threads; 0 lets TF choose."
    )
    flags.DEFINE_integer(
        "tensorflow_inter_op_parallelism", 0, "TensorFlow inter-op threads; 0 lets TF choose."
    )


def server_from_flags(FLAGS):
    """A `ModelServer` (not started) configured by the command line."""
    if FLAGS.model_config_file:
        model_configs = model_config.load_model_config_file(FLAGS.model_config_file)
    elif FLAGS.model_base_path:
        model_configs = [
            model_config.ModelConfig(FLAGS.model_name, os.path.abspath(FLAGS.model_base_path))
        ]
    else:
        raise app.UsageError("Set --model_base_path or --model_config_file.")
    batching = None
    if FLAGS.batching_parameters_file:
        with open(FLAGS.batching_parameters_file) as f:
            batching = parse_batching_parameters(f.read())
    elif FLAGS.enable_batching:
        batching = BatchingParameters()
    return ModelServer(
        model_configs,
        host=FLAGS.host,
        grpc_port=FLAGS.port,
        rest_port=FLAGS.rest_api_port,
        batching_parameters=batching,
        poll_wait_seconds=FLAGS.file_system_poll_wait_seconds,
        max_request_bytes=FLAGS.max_request_bytes,
        grpc_max_threads=FLAGS.grpc_max_threads,
        model_config_file=FLAGS.model_config_file or None,
        config_poll_wait_seconds=FLAGS.model_config_file_poll_wait_seconds,
    )


def main(argv):
    del argv
    FLAGS = flags.FLAGS
    if FLAGS.tensorflow_intra_op_parallelism:
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.tensorflow_intra_op_parallelism)
    if FLAGS.tensorflow_inter_op_parallelism:
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.tensorflow_inter_op_parallelism)
    import_tensorflow_text()
    server = server_from_flags(FLAGS)
    stop = threading.Event()

    def on_signal(signum, frame):
        del frame
        logging.info("Received signal %d, shutting down", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    print(server.ports_line(), flush=True)
    while not stop.wait(1.0):
        pass
    server.stop()


if __name__ == "__main__":
    define_flags()
    app.run(main)
