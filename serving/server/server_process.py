"""`ServerProcess`: `python -m serving.server` as a child process.

Tests, benchmarks and scripts start the server with `--port=0` and
`--rest_api_port=-1` and learn the ports it bound from the line it prints.
"""

import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time

from serving.server.model_server import parse_ports_line

# The folder that holds the `serving` package: the child process runs there
# and imports `serving` from it.
_IMPORT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class ServerProcess:
    """Runs `python -m serving.server` and reads the ports it prints.

    Args:
        args: command line flags, e.g. `["--port=0", "--rest_api_port=-1", ...]`.
        log_path: file that receives the server's stderr (its log).

    Example:

        with ServerProcess(["--port=0", "--rest_api_port=-1",
                            "--model_base_path=saved_models/captioner"]) as server:
            client = PredictionClient(server.grpc_address)
    """

    def __init__(self, args, log_path=None):
        self.args = list(args)
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix="mmkeras-server-", suffix=".log")
            os.close(fd)
        self.log_path = str(log_path)
        self.process = None
        self.grpc_port = None
        self.rest_port = None

    def start(self, timeout=180.0):
        env = dict(os.environ)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        env["PYTHONPATH"] = _IMPORT_ROOT + os.pathsep + env.get("PYTHONPATH", "")
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "serving.server", *self.args],
            cwd=_IMPORT_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        lines = queue.Queue()

        def read_stdout():
            for line in self.process.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=read_stdout, daemon=True).start()
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.stop(signal.SIGKILL)
                raise TimeoutError(f"server did not start; log:\n{self.log()}")
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(
                    f"server exited with {self.process.wait()}; log:\n{self.log()}"
                )
            ports = parse_ports_line(line)
            if ports:
                self.grpc_port, self.rest_port = ports
                return self

    @property
    def grpc_address(self):
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def rest_url(self):
        return f"http://127.0.0.1:{self.rest_port}"

    def alive(self):
        return self.process is not None and self.process.poll() is None

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self, sig=signal.SIGTERM, timeout=30.0):
        """Signals the server and returns its exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
