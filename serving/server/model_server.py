"""`ModelServer`: the gRPC and REST servers around one `ServingCore`."""

import concurrent.futures
import os
import re
import threading

from absl import logging
import grpc
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import prediction_service_pb2_grpc

from serving import model_config
from serving.server import rest
from serving.server.batcher import Batcher
from serving.server.core import ServingCore
from serving.server.grpc_service import ModelServicer
from serving.server.grpc_service import PredictionServicer
from serving.server.versions import ModelManager

PORTS_LINE_PREFIX = "mmkeras-serving"
DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024
_PORTS_LINE_RE = re.compile(re.escape(PORTS_LINE_PREFIX) + r" grpc_port=(\d+) rest_port=(\d+)")


def parse_ports_line(line):
    """(grpc_port, rest_port) from a `ModelServer.ports_line()`, or None for another line."""
    match = _PORTS_LINE_RE.match(line)
    return (int(match.group(1)), int(match.group(2))) if match else None


class ModelServer:
    """gRPC + REST model server; usable in-process (start/stop) or as `main`.

    Args:
        model_configs: list of `ModelConfig`.
        host: address to bind, 127.0.0.1 by default.
        grpc_port: gRPC port; 0 picks a free port.
        rest_port: REST port; 0 disables REST, -1 picks a free port.
        batching_parameters: `BatchingParameters` to enable server-side
            batching, or None.
        poll_wait_seconds: seconds between base path polls; <= 0 polls once.
        max_request_bytes: largest accepted request (gRPC message or HTTP body).
        grpc_max_threads: gRPC handler threads.
        model_config_file: if set with `config_poll_wait_seconds` > 0, the file
            is re-read when it changes.
    """

    def __init__(
        self,
        model_configs,
        host="127.0.0.1",
        grpc_port=0,
        rest_port=-1,
        batching_parameters=None,
        poll_wait_seconds=1.0,
        max_request_bytes=DEFAULT_MAX_REQUEST_BYTES,
        grpc_max_threads=64,
        model_config_file=None,
        config_poll_wait_seconds=0,
    ):
        self.host = host
        self._requested_grpc_port = grpc_port
        self._requested_rest_port = rest_port
        self.max_request_bytes = max_request_bytes
        self.grpc_max_threads = grpc_max_threads
        self.manager = ModelManager(model_configs, poll_wait_seconds=poll_wait_seconds)
        self.batcher = Batcher(batching_parameters) if batching_parameters else None
        self.core = ServingCore(self.manager, self.batcher)
        self.grpc_port = None
        self.rest_port = 0
        self._grpc_server = None
        self._http_server = None
        self._http_thread = None
        self._model_config_file = model_config_file
        self._config_poll_wait_seconds = config_poll_wait_seconds
        self._config_mtime = None
        self._stop = threading.Event()
        self._config_thread = None

    def _address(self, port):
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{port}"

    def start(self):
        self.manager.start()
        self._grpc_server = grpc.server(
            concurrent.futures.ThreadPoolExecutor(
                max_workers=self.grpc_max_threads, thread_name_prefix="grpc"
            ),
            options=[
                ("grpc.max_receive_message_length", self.max_request_bytes),
                ("grpc.max_send_message_length", -1),
                ("grpc.so_reuseport", 0),
            ],
        )
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionServicer(self.core), self._grpc_server
        )
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelServicer(self.core), self._grpc_server
        )
        self.grpc_port = self._grpc_server.add_insecure_port(
            self._address(self._requested_grpc_port)
        )
        if not self.grpc_port:
            raise OSError(f"Cannot bind gRPC to {self._address(self._requested_grpc_port)}")
        self._grpc_server.start()
        logging.info("Running gRPC ModelServer at %s", self._address(self.grpc_port))
        if self._requested_rest_port != 0:
            port = max(self._requested_rest_port, 0)
            self._http_server = rest.make_http_server(
                self.host, port, self.core, self.max_request_bytes
            )
            self.rest_port = self._http_server.server_address[1]
            self._http_thread = threading.Thread(
                target=self._http_server.serve_forever, name="rest", daemon=True
            )
            self._http_thread.start()
            logging.info("Exporting HTTP/REST API at %s", self._address(self.rest_port))
        if self._model_config_file and self._config_poll_wait_seconds > 0:
            self._config_mtime = os.stat(self._model_config_file).st_mtime_ns
            self._config_thread = threading.Thread(
                target=self._config_loop, name="config-poller", daemon=True
            )
            self._config_thread.start()
        return self

    def _config_loop(self):
        while not self._stop.wait(self._config_poll_wait_seconds):
            try:
                mtime = os.stat(self._model_config_file).st_mtime_ns
                if mtime == self._config_mtime:
                    continue
                self._config_mtime = mtime
                self.manager.set_configs(model_config.load_model_config_file(self._model_config_file))
                logging.info("Reloaded model config %s", self._model_config_file)
                self.manager.poll_once()
            except Exception:  # noqa: BLE001 - keep serving the old config.
                logging.exception("Cannot reload %s", self._model_config_file)

    def ports_line(self):
        """The line that `python -m serving.server` prints once the ports are bound."""
        return f"{PORTS_LINE_PREFIX} grpc_port={self.grpc_port} rest_port={self.rest_port}"

    def stop(self, grace=2.0):
        self._stop.set()
        if self._http_server is not None:
            self._http_server.shutdown()
            self._http_server.server_close()
        if self._grpc_server is not None:
            self._grpc_server.stop(grace).wait()
        self.manager.stop()
        if self.batcher is not None:
            self.batcher.stop()
        logging.info("Server stopped")

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
