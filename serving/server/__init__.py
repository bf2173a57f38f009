"""A local model server that speaks TensorFlow Serving's gRPC and REST protocols.

`python -m serving.server` (see `__main__.py`) is a drop-in stand-in for
`tensorflow_model_server`; `ModelServer` runs the same server in-process. One
module a job:

    status.py           ServingError and TF Serving's gRPC -> HTTP status table
    batching_config.py  BatchingParameters and its text-proto parser
    tensor_codec.py     TensorProto <-> numpy (the one dtype table)
    json_codec.py       REST JSON <-> numpy and tf.Example
    servables.py        a loaded SavedModel version and its signatures
    versions.py         ModelManager: which versions are loaded and served
    batcher.py          server-side batching
    core.py             ServingCore: requests -> responses, for both front ends
    grpc_service.py     PredictionService and ModelService over gRPC
    rest.py             the /v1/models REST API and its HTTP server
    model_server.py     ModelServer: both front ends around one core
    server_process.py   ServerProcess: the server as a child process
    __main__.py         the command line

`models.config` reading and version directory listing live in
`serving/model_config.py`, shared with the exporter.
"""

from serving.model_config import ModelConfig
from serving.server.batcher import Batcher
from serving.server.batching_config import BatchingParameters
from serving.server.batching_config import parse_batching_parameters
from serving.server.core import ServingCore
from serving.server.grpc_service import ModelServicer
from serving.server.grpc_service import PredictionServicer
from serving.server.model_server import DEFAULT_MAX_REQUEST_BYTES
from serving.server.model_server import PORTS_LINE_PREFIX
from serving.server.model_server import ModelServer
from serving.server.model_server import parse_ports_line
from serving.server.rest import RestApi
from serving.server.servables import Servable
from serving.server.servables import Signature
from serving.server.server_process import ServerProcess
from serving.server.status import ServingError
from serving.server.versions import ModelManager

__all__ = [
    "DEFAULT_MAX_REQUEST_BYTES",
    "PORTS_LINE_PREFIX",
    "Batcher",
    "BatchingParameters",
    "ModelConfig",
    "ModelManager",
    "ModelServer",
    "ModelServicer",
    "PredictionServicer",
    "RestApi",
    "Servable",
    "ServerProcess",
    "ServingCore",
    "ServingError",
    "Signature",
    "parse_batching_parameters",
    "parse_ports_line",
]
