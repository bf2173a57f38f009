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

    python -m serving.server --model_name=captioner \
        --model_base_path=saved_models/captioner

Several models, the `models.config` that the TF Serving container also reads:

    python -m serving.server --model_config_file=saved_models/models.config \
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

import base64
import collections
import concurrent.futures
import dataclasses
import functools
import http.server
import json
import math
import os
import re
import signal
import socket
import threading
import time
import urllib.parse

from absl import app
from absl import flags
from absl import logging
import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import descriptor_pb2
from google.protobuf import descriptor_pool
from google.protobuf import json_format
from google.protobuf import message_factory
from google.protobuf import text_format
from google.protobuf import wrappers_pb2
from tensorflow.core.example import example_pb2
from tensorflow.core.framework import tensor_pb2
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import classification_pb2
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import model_management_pb2
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD_NAME = "tensorflow/serving/predict"
CLASSIFY_METHOD_NAME = "tensorflow/serving/classify"
REGRESS_METHOD_NAME = "tensorflow/serving/regress"
SIGNATURE_DEF_FIELD = "signature_def"
CONTAINER_MODELS_ROOT = "/models/"
PORTS_LINE_PREFIX = "mmkeras-serving"
DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024

# Keep the pre-mapped container root in one place: the docker-compose file
# mounts the export directory there.
_VERSION_DIR_RE = re.compile(r"^[0-9]+$")

# TensorFlow Serving's own status -> HTTP mapping (model_servers/http_server.cc).
_HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}
_GRPC_CODE_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}
# Largest tensor that a request may describe without sending every value.
_MAX_BROADCAST_ELEMENTS = 1 << 22

# DataType -> (numpy dtype, TensorProto value field) for the typed fields that
# TF Serving fills in responses (Tensor::AsProtoField).
_NUMERIC_FIELDS = {
    types_pb2.DT_FLOAT: (np.float32, "float_val"),
    types_pb2.DT_DOUBLE: (np.float64, "double_val"),
    types_pb2.DT_INT32: (np.int32, "int_val"),
    types_pb2.DT_INT16: (np.int16, "int_val"),
    types_pb2.DT_INT8: (np.int8, "int_val"),
    types_pb2.DT_UINT8: (np.uint8, "int_val"),
    types_pb2.DT_UINT16: (np.uint16, "int_val"),
    types_pb2.DT_INT64: (np.int64, "int64_val"),
    types_pb2.DT_UINT32: (np.uint32, "uint32_val"),
    types_pb2.DT_UINT64: (np.uint64, "uint64_val"),
    types_pb2.DT_BOOL: (np.bool_, "bool_val"),
}


class ServingError(Exception):
    """A request error with the gRPC status code that TF Serving would return."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self):
        return _HTTP_STATUS.get(self.code, 500)


def _dtype_name(dtype_enum):
    """DT_FLOAT -> "float", as in TensorFlow's DataTypeString."""
    try:
        return types_pb2.DataType.Name(dtype_enum)[len("DT_") :].lower()
    except ValueError:
        return str(dtype_enum)


def _shape_string(dims):
    return "[" + ",".join(str(d) for d in dims) + "]"


def _clean_tf_message(message):
    """Drops the eager "Graph execution error / Detected at node" preamble."""
    marker = "<stack traces unavailable>"
    if marker in message:
        message = message.split(marker, 1)[1]
    elif message.startswith("Graph execution error:"):
        message = message[len("Graph execution error:") :]
    return message.strip()


# ---------------------------------------------------------------------------
# Configuration files.


@dataclasses.dataclass(frozen=True)
class BatchingParameters:
    """Server-side batching options (TF Serving's BatchingParameters).

    Defaults are TF Serving's when a field is omitted from the file, except
    `num_batch_threads`, which TF Serving sets to the number of cores.
    """

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    num_batch_threads: int = dataclasses.field(
        default_factory=lambda: os.cpu_count() or 1
    )
    max_enqueued_batches: int = 10


def _batching_parameters_message_class():
    """Builds the BatchingParameters proto class at run time.

    tensorflow-serving-api does not ship `session_bundle_config_pb2`, so the
    message (tensorflow_serving/servables/tensorflow/session_bundle_config.proto)
    is declared here with the same field names and numbers, in a private pool.
    """
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="mmkeras_serving/session_bundle_config.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    message = file_proto.message_type.add(name="BatchingParameters")
    label_optional = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    label_repeated = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
    type_message = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
    for name, number, type_name in (
        ("max_batch_size", 1, ".google.protobuf.Int64Value"),
        ("batch_timeout_micros", 2, ".google.protobuf.Int64Value"),
        ("max_enqueued_batches", 3, ".google.protobuf.Int64Value"),
        ("num_batch_threads", 4, ".google.protobuf.Int64Value"),
        ("thread_pool_name", 5, ".google.protobuf.StringValue"),
    ):
        message.field.add(
            name=name,
            number=number,
            label=label_optional,
            type=type_message,
            type_name=type_name,
        )
    message.field.add(
        name="allowed_batch_sizes",
        number=6,
        label=label_repeated,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
    )
    message.field.add(
        name="pad_variable_length_inputs",
        number=7,
        label=label_optional,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
    )
    pool.Add(file_proto)
    descriptor = pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters")
    return message_factory.GetMessageClass(descriptor)


def parse_batching_parameters(text):
    """Parses a BatchingParameters text proto into `BatchingParameters`.

    Accepts the files that `--batching_parameters_file` of TF Serving takes,
    e.g. `max_batch_size { value: 64 } batch_timeout_micros { value: 2000 }`.
    Fields that only TF Serving uses (allowed_batch_sizes, padding, ...) are
    accepted and ignored.
    """
    message = _batching_parameters_message_class()()
    text_format.Parse(text, message, allow_unknown_field=True)
    kwargs = {}
    for field in (
        "max_batch_size",
        "batch_timeout_micros",
        "num_batch_threads",
        "max_enqueued_batches",
    ):
        if message.HasField(field):
            kwargs[field] = int(getattr(message, field).value)
    params = BatchingParameters(**kwargs)
    if params.max_batch_size < 1 or params.num_batch_threads < 1:
        raise ValueError(
            "max_batch_size and num_batch_threads must be >= 1. Received: "
            f"{params}"
        )
    if params.batch_timeout_micros < 0 or params.max_enqueued_batches < 1:
        raise ValueError(
            "batch_timeout_micros must be >= 0 and max_enqueued_batches >= 1. "
            f"Received: {params}"
        )
    return params


@dataclasses.dataclass
class ModelConfig:
    """One served model: name, local base path, version policy and labels."""

    name: str
    base_path: str
    # ("latest", n) | ("all",) | ("specific", frozenset of versions)
    version_policy: tuple = ("latest", 1)
    version_labels: dict = dataclasses.field(default_factory=dict)


def resolve_base_path(base_path, config_dir):
    """Maps a base path from a container `models.config` to this machine.

    An existing path is used as is. Otherwise `/models/X` becomes
    `<config_dir>/X` and a relative path is resolved against `config_dir`.
    """
    if os.path.isabs(base_path):
        if os.path.exists(base_path) or config_dir is None:
            return base_path
        if base_path.startswith(CONTAINER_MODELS_ROOT):
            return os.path.join(config_dir, base_path[len(CONTAINER_MODELS_ROOT) :])
        return base_path
    if config_dir is not None:
        return os.path.normpath(os.path.join(config_dir, base_path))
    return os.path.abspath(base_path)


def model_configs_from_proto(server_config, config_dir=None):
    """ModelServerConfig proto -> list of `ModelConfig`."""
    if server_config.WhichOneof("config") != "model_config_list":
        raise ValueError("Only model_config_list model server configs are supported.")
    models = []
    for config in server_config.model_config_list.config:
        if not config.name:
            raise ValueError(f"A model config has no name: {config}")
        if config.model_platform not in ("", "tensorflow"):
            raise ValueError(
                f"Model {config.name}: only model_platform \"tensorflow\" is "
                f"supported. Received: {config.model_platform}"
            )
        policy_kind = config.model_version_policy.WhichOneof("policy_choice")
        if policy_kind == "all":
            policy = ("all",)
        elif policy_kind == "specific":
            policy = ("specific", frozenset(config.model_version_policy.specific.versions))
        elif policy_kind == "latest":
            policy = ("latest", max(1, config.model_version_policy.latest.num_versions))
        else:
            policy = ("latest", 1)
        models.append(
            ModelConfig(
                name=config.name,
                base_path=resolve_base_path(config.base_path, config_dir),
                version_policy=policy,
                version_labels=dict(config.version_labels),
            )
        )
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ValueError(f"Duplicate model names in config: {names}")
    return models


def load_model_config_file(path):
    """Reads a `model_config_list` text proto file into `ModelConfig`s."""
    server_config = model_server_config_pb2.ModelServerConfig()
    with open(path) as f:
        text_format.Parse(f.read(), server_config)
    return model_configs_from_proto(
        server_config, config_dir=os.path.dirname(os.path.abspath(path))
    )


# ---------------------------------------------------------------------------
# Tensors: TensorProto <-> numpy, JSON <-> numpy.


def tensor_proto_to_ndarray(proto):
    """TensorProto -> numpy array (object array of bytes for DT_STRING)."""
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    size = math.prod(shape)
    if proto.dtype == types_pb2.DT_STRING:
        values = proto.string_val
        if len(values) == size:
            array = np.empty(len(values), dtype=object)
            array[:] = list(values)
            return array.reshape(shape)
    elif proto.dtype in _NUMERIC_FIELDS:
        np_dtype, field = _NUMERIC_FIELDS[proto.dtype]
        if proto.tensor_content:
            if len(proto.tensor_content) == size * np.dtype(np_dtype).itemsize:
                return np.frombuffer(proto.tensor_content, dtype=np_dtype).reshape(shape)
        else:
            values = getattr(proto, field)
            if len(values) == size:
                return np.asarray(values, dtype=np_dtype).reshape(shape)
    # Rare layouts (half, complex, one value broadcast to the shape, ...):
    # TensorFlow's parser, but never let a tiny proto claim a huge shape.
    if size > _MAX_BROADCAST_ELEMENTS:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"Tensor of shape {_shape_string(shape)} has {size} elements but the "
            "request does not hold them",
        )
    try:
        return tf.make_ndarray(proto)
    except Exception as e:  # noqa: BLE001 - any parse failure is the client's.
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"Cannot parse tensor of dtype {_dtype_name(proto.dtype)} and shape "
            f"{_shape_string(shape)}: {e}",
        ) from e


def ndarray_to_tensor_proto(array, dtype_enum, proto=None):
    """numpy array -> TensorProto with typed value fields (like TF Serving)."""
    proto = proto if proto is not None else tensor_pb2.TensorProto()
    proto.dtype = dtype_enum
    for d in array.shape:
        proto.tensor_shape.dim.add(size=d)
    if dtype_enum == types_pb2.DT_STRING:
        proto.string_val.extend(array.ravel().tolist())
    elif dtype_enum in _NUMERIC_FIELDS:
        getattr(proto, _NUMERIC_FIELDS[dtype_enum][1]).extend(array.ravel().tolist())
    else:
        proto.CopyFrom(tf.make_tensor_proto(array))
    return proto


def _json_shape(value):
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _json_leaf(value, dtype_enum):
    if dtype_enum == types_pb2.DT_STRING:
        if isinstance(value, str):
            return value.encode("utf-8")
        if isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str):
            try:
                return base64.b64decode(value["b64"], validate=True)
            except ValueError:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT, "Unable to base64 decode"
                ) from None
    elif dtype_enum == types_pb2.DT_BOOL:
        if isinstance(value, bool):
            return value
    elif dtype_enum in (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE, types_pb2.DT_HALF):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
    elif dtype_enum in _NUMERIC_FIELDS:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    raise ServingError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"JSON Value: {json.dumps(value)} is not of expected type: "
        f"{_dtype_name(dtype_enum)}",
    )


def json_to_ndarray(value, dtype_enum):
    """A JSON value (nested lists, `{"b64": ...}` for bytes) -> numpy array."""
    shape = _json_shape(value)
    flat = []

    def walk(node, level):
        if isinstance(node, list):
            if level >= len(shape) or len(node) != shape[level]:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Encountered list at unexpected size: {len(node)} at level: "
                    f"{level} expected shape: {_shape_string(shape)}",
                )
            for item in node:
                walk(item, level + 1)
        else:
            if level != len(shape):
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"JSON Value: {json.dumps(node)} found at incorrect level: "
                    f"{level + 1} in the JSON DOM. Expected at level: {len(shape)}",
                )
            flat.append(_json_leaf(node, dtype_enum))

    walk(value, 0)
    if dtype_enum == types_pb2.DT_STRING:
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
    else:
        np_dtype = tf.dtypes.as_dtype(dtype_enum).as_numpy_dtype
        array = np.asarray(flat, dtype=np_dtype)
    return array.reshape(shape)


def _json_values(array, as_bytes):
    """numpy array -> (nested) Python values ready for json.dumps."""
    if array.dtype == object:
        if as_bytes:
            flat = [{"b64": base64.b64encode(v).decode("ascii")} for v in array.ravel()]
        else:
            flat = [v.decode("utf-8", errors="replace") for v in array.ravel()]
        converted = np.empty(len(flat), dtype=object)
        converted[:] = flat
        return converted.reshape(array.shape).tolist()
    if array.dtype == np.float32:
        # Shortest float32 text, as TF Serving writes it (0.1, not 0.100000001).
        return (
            np.asarray([float(str(v)) for v in array.ravel()], dtype=np.float64)
            .reshape(array.shape)
            .tolist()
        )
    return array.tolist()


# ---------------------------------------------------------------------------
# Servables: one loaded SavedModel version.


@dataclasses.dataclass(frozen=True)
class _TensorSpec:
    key: str
    dtype: int
    dims: tuple  # None for unknown rank; -1 for unknown dimensions.


class Signature:
    """A SignatureDef of a loaded SavedModel and the function that runs it."""

    def __init__(self, name, signature_def, function):
        self.name = name
        self.signature_def = signature_def
        self.method_name = signature_def.method_name
        self.function = function
        self.inputs = {k: self._spec(k, v) for k, v in signature_def.inputs.items()}
        self.outputs = {k: self._spec(k, v) for k, v in signature_def.outputs.items()}
        self.input_keys = frozenset(self.inputs)

    @staticmethod
    def _spec(key, tensor_info):
        shape = tensor_info.tensor_shape
        dims = None if shape.unknown_rank else tuple(d.size for d in shape.dim)
        return _TensorSpec(key, tensor_info.dtype, dims)

    def check_input_keys(self, keys):
        keys = set(keys)
        if keys == self.input_keys:
            return
        extra = sorted(keys - self.input_keys)
        missing = sorted(self.input_keys - keys)
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input size does not match signature: {len(keys)}!={len(self.input_keys)} "
            f"len({{{','.join(sorted(keys))}}}) != len({{{','.join(sorted(self.input_keys))}}}). "
            f"Sent extra: {{{','.join(extra)}}}. Missing but required: {{{','.join(missing)}}}.",
        )

    def check_input_dtype(self, key, dtype_enum):
        expected = self.inputs[key].dtype
        if dtype_enum != expected:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Expects input '{key}' to be {_dtype_name(expected)} "
                f"({types_pb2.DataType.Name(expected)}) but "
                f"{_dtype_name(dtype_enum)} ({types_pb2.DataType.Name(dtype_enum)}) "
                f"is provided",
            )

    def check_input_shape(self, key, shape):
        dims = self.inputs[key].dims
        if dims is None:
            return
        if len(shape) != len(dims) or any(
            d >= 0 and d != s for d, s in zip(dims, shape)
        ):
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Input '{key}' expects shape {_shape_string(dims)} "
                f"(rank {len(dims)}, -1 is any size) but got shape "
                f"{_shape_string(shape)}",
            )

    def output_keys(self, output_filter):
        if not output_filter:
            return list(self.outputs)
        seen = set()
        for alias in output_filter:
            if alias not in self.outputs:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"output tensor alias not found in signature: {alias} Outputs "
                    f"expected to be in the set {{{','.join(sorted(self.outputs))}}}.",
                )
            if alias in seen:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"duplicate output tensor alias: {alias}",
                )
            seen.add(alias)
        return list(output_filter)

    def __call__(self, inputs):
        """Runs the function on numpy inputs; returns numpy outputs."""
        try:
            outputs = self.function(**inputs)
        except tf.errors.OpError as e:
            code = _GRPC_CODE_BY_NUMBER.get(e.error_code, grpc.StatusCode.INTERNAL)
            raise ServingError(code, _clean_tf_message(e.message)) from None
        except (TypeError, ValueError) as e:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        return {k: v.numpy() for k, v in outputs.items()}


class Servable:
    """One loaded version of a model."""

    def __init__(self, name, version, path):
        self.name = name
        self.version = version
        self.path = path
        _import_tensorflow_text()
        # Kept alive for as long as the servable is: the signatures' functions
        # reference its variables.
        self._loaded = tf.saved_model.load(path, tags=["serve"])
        meta_graph = _read_serve_meta_graph(path)
        self.signature_def_map = get_model_metadata_pb2.SignatureDefMap()
        self.signatures = {}
        for key, signature_def in meta_graph.signature_def.items():
            self.signature_def_map.signature_def[key].CopyFrom(signature_def)
            if key in self._loaded.signatures:
                self.signatures[key] = Signature(
                    key, signature_def, self._loaded.signatures[key]
                )

    def signature(self, name):
        name = name or DEFAULT_SIGNATURE
        signature = self.signatures.get(name)
        if signature is None:
            raise ServingError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f'Serving signature key "{name}" not found.',
            )
        return signature


def _read_serve_meta_graph(path):
    saved_model = saved_model_pb2.SavedModel()
    pb_path = os.path.join(path, "saved_model.pb")
    if os.path.exists(pb_path):
        with open(pb_path, "rb") as f:
            saved_model.ParseFromString(f.read())
    else:
        with open(os.path.join(path, "saved_model.pbtxt")) as f:
            text_format.Parse(f.read(), saved_model)
    for meta_graph in saved_model.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            return meta_graph
    raise ValueError(f"No MetaGraph with tag 'serve' in {path}")


# ---------------------------------------------------------------------------
# Model lifecycle.

State = get_model_status_pb2.ModelVersionStatus.State


def _list_versions(base_path):
    """{version: (path, fingerprint)} of the loadable version directories."""
    versions = {}
    try:
        entries = os.listdir(base_path)
    except OSError:
        return versions
    for entry in entries:
        if not _VERSION_DIR_RE.match(entry):
            continue
        path = os.path.join(base_path, entry)
        if not (
            os.path.isfile(os.path.join(path, "saved_model.pb"))
            or os.path.isfile(os.path.join(path, "saved_model.pbtxt"))
        ):
            continue
        versions[int(entry)] = (path, _fingerprint(path))
    return versions


def _fingerprint(path):
    """Size and mtime of every file: a retry key for versions that failed."""
    items = []
    for root, _, files in os.walk(path):
        for name in files:
            try:
                st = os.stat(os.path.join(root, name))
            except OSError:
                continue
            relative = os.path.relpath(os.path.join(root, name), path)
            items.append((relative, st.st_size, st.st_mtime_ns))
    return tuple(sorted(items))


def _aspired(policy, versions):
    if policy[0] == "all":
        return set(versions)
    if policy[0] == "specific":
        return set(versions) & set(policy[1])
    return set(sorted(versions, reverse=True)[: policy[1]])


class _ModelState:
    def __init__(self, config):
        self.config = config
        self.servables = {}  # version -> Servable, AVAILABLE ones only
        self.states = {}  # version -> (State, grpc code, message)
        self.failed = {}  # version -> (path, fingerprint) that failed to load


class ModelManager:
    """Loads, serves and unloads model versions from their base paths."""

    def __init__(self, model_configs, poll_wait_seconds=1.0, loader=Servable):
        self._lock = threading.RLock()
        self._poll_lock = threading.Lock()
        self._models = {}
        self._loader = loader
        self._poll_wait_seconds = poll_wait_seconds
        self._stop = threading.Event()
        self._thread = None
        self.set_configs(model_configs)

    def set_configs(self, model_configs):
        with self._lock:
            models = {}
            for config in model_configs:
                state = self._models.get(config.name)
                if state is not None and state.config.base_path == config.base_path:
                    state.config = config
                else:
                    state = _ModelState(config)
                models[config.name] = state
            removed = set(self._models) - set(models)
            for name in removed:
                for version in sorted(self._models[name].servables):
                    logging.info(
                        "Unloaded servable version {name: %s version: %d}", name, version
                    )
            self._models = models

    def model_names(self):
        with self._lock:
            return sorted(self._models)

    def poll_once(self):
        """Brings every model's loaded versions in line with its base path."""
        with self._poll_lock:
            with self._lock:
                models = list(self._models.values())
            for model in models:
                try:
                    self._poll_model(model)
                except Exception:  # noqa: BLE001 - never let polling die.
                    logging.exception("Polling model %s failed", model.config.name)

    def _poll_model(self, model):
        config = model.config
        on_disk = _list_versions(config.base_path)
        if not on_disk and not model.servables:
            if not os.path.isdir(config.base_path):
                logging.log_every_n_seconds(
                    logging.WARNING,
                    "No versions of servable %s found under base path %s",
                    60,
                    config.name,
                    config.base_path,
                )
        candidates = {
            v: entry for v, entry in on_disk.items() if model.failed.get(v) != entry
        }
        while True:
            aspired = _aspired(config.version_policy, candidates)
            to_load = sorted(aspired - set(model.servables), reverse=True)
            if not to_load:
                break
            for version in to_load:
                path, _ = candidates[version]
                if not self._load(model, version, path):
                    model.failed[version] = candidates.pop(version)
        aspired = _aspired(config.version_policy, candidates)
        for version in sorted(set(model.servables) - aspired):
            with self._lock:
                del model.servables[version]
                model.states[version] = (State.END, grpc.StatusCode.OK, "")
            logging.info(
                "Unloaded servable version {name: %s version: %d}", config.name, version
            )

    def _load(self, model, version, path):
        name = model.config.name
        with self._lock:
            model.states[version] = (State.LOADING, grpc.StatusCode.OK, "")
        logging.info("Loading servable version {name: %s version: %d} from %s", name, version, path)
        try:
            servable = self._loader(name, version, path)
        except Exception as e:  # noqa: BLE001 - a bad export must not kill the server.
            message = f"Failed to load servable version {{name: {name} version: {version}}}: {e}"
            logging.error("%s", message)
            with self._lock:
                model.states[version] = (State.END, grpc.StatusCode.UNKNOWN, message)
            return False
        with self._lock:
            model.servables[version] = servable
            model.failed.pop(version, None)
            model.states[version] = (State.AVAILABLE, grpc.StatusCode.OK, "")
        logging.info("Successfully loaded servable version {name: %s version: %d}", name, version)
        return True

    def start(self):
        """Loads the initial versions, then polls in the background."""
        self.poll_once()
        if self._poll_wait_seconds > 0:
            self._thread = threading.Thread(
                target=self._poll_loop, name="model-poller", daemon=True
            )
            self._thread.start()

    def _poll_loop(self):
        while not self._stop.wait(self._poll_wait_seconds):
            self.poll_once()

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def get_servable(self, model_spec):
        """ModelSpec (name, version | version_label) -> Servable."""
        name = model_spec.name
        which = model_spec.WhichOneof("version_choice")
        with self._lock:
            model = self._models.get(name)
            if which == "version_label":
                label = model_spec.version_label
                if model is None or label not in model.config.version_labels:
                    raise ServingError(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"Unrecognized servable version label: {label}",
                    )
                version = model.config.version_labels[label]
            elif which == "version":
                version = model_spec.version.value
            else:
                version = None
            if version is None:
                if model is not None and model.servables:
                    return model.servables[max(model.servables)]
                raise ServingError(
                    grpc.StatusCode.NOT_FOUND,
                    f"Servable not found for request: Latest({name})",
                )
            servable = model.servables.get(version) if model is not None else None
            if servable is None:
                raise ServingError(
                    grpc.StatusCode.NOT_FOUND,
                    f"Servable not found for request: Specific({name}, {version})",
                )
            return servable

    def version_states(self, name, version=None):
        """[(version, State, code, message)] as GetModelStatus reports them."""
        with self._lock:
            model = self._models.get(name)
            states = dict(model.states) if model is not None else {}
        if version is not None:
            if version not in states:
                raise ServingError(
                    grpc.StatusCode.NOT_FOUND,
                    f"Could not find version {version} of model {name}",
                )
            return [(version,) + states[version]]
        if not states:
            raise ServingError(
                grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {name}"
            )
        return [(v,) + states[v] for v in sorted(states, reverse=True)]


# ---------------------------------------------------------------------------
# Server-side batching.


class _Task:
    __slots__ = ("inputs", "size", "enqueued", "done", "outputs", "error")

    def __init__(self, inputs, size):
        self.inputs = inputs
        self.size = size
        self.enqueued = time.monotonic()
        self.done = threading.Event()
        self.outputs = None
        self.error = None


class _Queue:
    __slots__ = ("function", "tasks", "size")

    def __init__(self, function):
        self.function = function
        self.tasks = collections.deque()
        self.size = 0


class Batcher:
    """Merges concurrent calls of the same function into batched calls.

    `run(key, function, inputs, batch_size)` blocks until the outputs for
    `inputs` are ready. Calls with the same `key` (same function and the same
    per-example input shapes and dtypes) queue together; `num_batch_threads`
    workers take up to `max_batch_size` examples at a time from a queue once it
    holds a full batch or its oldest call has waited `batch_timeout_micros`.
    """

    def __init__(self, params):
        self.params = params
        self._cv = threading.Condition()
        self._queues = collections.OrderedDict()
        self._stopped = False
        self._lock_stats = threading.Lock()
        self.num_batches = 0
        self.num_tasks = 0
        self._threads = [
            threading.Thread(target=self._work, name=f"batch-{i}", daemon=True)
            for i in range(params.num_batch_threads)
        ]
        for thread in self._threads:
            thread.start()

    def stats(self):
        with self._lock_stats:
            return {"batches": self.num_batches, "tasks": self.num_tasks}

    def run(self, key, function, inputs, batch_size):
        if batch_size < 1 or batch_size > self.params.max_batch_size:
            self._count(1, 1)
            return function(inputs)
        task = _Task(inputs, batch_size)
        with self._cv:
            if self._stopped:
                raise ServingError(grpc.StatusCode.UNAVAILABLE, "Server is shutting down")
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = _Queue(function)
            capacity = self.params.max_enqueued_batches * self.params.max_batch_size
            if queue.size + batch_size > capacity:
                raise ServingError(
                    grpc.StatusCode.UNAVAILABLE,
                    "The batch scheduling queue to which this task was submitted is full",
                )
            queue.tasks.append(task)
            queue.size += batch_size
            self._cv.notify()
        task.done.wait()
        if task.error is not None:
            raise task.error
        return task.outputs

    def _count(self, batches, tasks):
        with self._lock_stats:
            self.num_batches += batches
            self.num_tasks += tasks

    def _take_batch(self):
        """Called with the lock held: (function, tasks) or (None, wait seconds)."""
        timeout = self.params.batch_timeout_micros / 1e6
        now = time.monotonic()
        wait = None
        for key, queue in self._queues.items():
            if not queue.tasks:
                continue
            age = now - queue.tasks[0].enqueued
            if queue.size >= self.params.max_batch_size or age >= timeout:
                tasks, size = [], 0
                while queue.tasks and size + queue.tasks[0].size <= self.params.max_batch_size:
                    task = queue.tasks.popleft()
                    tasks.append(task)
                    size += task.size
                queue.size -= size
                function = queue.function
                if not queue.tasks:
                    del self._queues[key]
                else:
                    # Round robin: serve the other queues first next time.
                    self._queues.move_to_end(key)
                return function, tasks
            remaining = timeout - age
            wait = remaining if wait is None else min(wait, remaining)
        return None, wait

    def _work(self):
        while True:
            with self._cv:
                while True:
                    if self._stopped and not self._queues:
                        return
                    function, tasks = self._take_batch()
                    if function is not None:
                        break
                    self._cv.wait(timeout=tasks)
                if self._queues:
                    self._cv.notify()
            self._execute(function, tasks)

    def _execute(self, function, tasks, count=True):
        if count:
            self._count(1, len(tasks))
        if len(tasks) == 1:
            [task] = tasks
            try:
                task.outputs = function(task.inputs)
            except Exception as e:  # noqa: BLE001 - handed to the waiting request.
                task.error = e
            task.done.set()
            return
        try:
            merged = {
                k: np.concatenate([t.inputs[k] for t in tasks]) for k in tasks[0].inputs
            }
            outputs = function(merged)
            total = sum(t.size for t in tasks)
            if any(v.ndim == 0 or v.shape[0] != total for v in outputs.values()):
                raise ValueError("an output has no batch dimension")
        except Exception:  # noqa: BLE001 - isolate the failing request(s).
            # Bisect, so that k bad requests cost O(k log n) extra calls and
            # every other request still gets its answer.
            middle = len(tasks) // 2
            self._execute(function, tasks[:middle], count=False)
            self._execute(function, tasks[middle:], count=False)
            return
        offset = 0
        for task in tasks:
            task.outputs = {k: v[offset : offset + task.size] for k, v in outputs.items()}
            offset += task.size
            task.done.set()

    def stop(self):
        with self._cv:
            self._stopped = True
            self._cv.notify_all()
        for thread in self._threads:
            thread.join(timeout=30)


# ---------------------------------------------------------------------------
# The transport-independent core.


class ServingCore:
    """Request handling shared by the gRPC and REST front ends."""

    def __init__(self, manager, batcher=None):
        self.manager = manager
        self.batcher = batcher

    def run_signature(self, servable, signature, inputs):
        """Validates numpy `inputs` against `signature` and runs it."""
        signature.check_input_keys(inputs)
        batch_sizes = set()
        for key, array in inputs.items():
            signature.check_input_shape(key, array.shape)
            batch_sizes.add(array.shape[0] if array.ndim else None)
        if self.batcher is None or len(batch_sizes) != 1 or None in batch_sizes:
            return signature(inputs)
        batch_key = (
            id(servable),
            signature.name,
            tuple(sorted((k, v.dtype.str, v.shape[1:]) for k, v in inputs.items())),
        )
        return self.batcher.run(batch_key, signature, inputs, batch_sizes.pop())

    def predict_arrays(self, model_spec, inputs, output_filter=()):
        """(servable, signature, {alias: ndarray}) for a predict request."""
        servable = self.manager.get_servable(model_spec)
        signature = servable.signature(model_spec.signature_name)
        output_keys = signature.output_keys(output_filter)
        outputs = self.run_signature(servable, signature, inputs)
        return servable, signature, {k: outputs[k] for k in output_keys}

    def classify(self, request):
        """ClassificationRequest -> ClassificationResponse."""
        servable = self.manager.get_servable(request.model_spec)
        signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        signature = servable.signatures.get(signature_name)
        if signature is None:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"No signature was found with the name: {signature_name}",
            )
        if signature.method_name != CLASSIFY_METHOD_NAME:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Expected classification signature method_name to be "
                f"{CLASSIFY_METHOD_NAME}. Was: {signature.method_name}",
            )
        if len(signature.inputs) != 1 or "inputs" not in signature.inputs:
            raise ServingError(
                grpc.StatusCode.FAILED_PRECONDITION,
                "No classification inputs found in SignatureDef",
            )
        examples = _serialized_examples(request.input)
        outputs = self.run_signature(servable, signature, {"inputs": examples})
        classes = outputs.get("classes")
        scores = outputs.get("scores")
        if classes is None and scores is None:
            raise ServingError(
                grpc.StatusCode.FAILED_PRECONDITION,
                'Expected classification signature outputs to contain at least one of '
                '"classes" or "scores".',
            )
        for name, value in (("classes", classes), ("scores", scores)):
            if value is not None and (value.ndim != 2 or value.shape[0] != len(examples)):
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Expected {name} Tensor shape: [batch_size num_classes] but got "
                    f"{list(value.shape)}",
                )
        response = classification_pb2.ClassificationResponse()
        _fill_model_spec(
            response.model_spec, request.model_spec.name, signature_name, servable.version
        )
        num_classes = (classes if classes is not None else scores).shape[1]
        for i in range(len(examples)):
            classifications = response.result.classifications.add()
            for c in range(num_classes):
                cls = classifications.classes.add()
                if classes is not None:
                    cls.label = classes[i, c].decode("utf-8", errors="replace")
                if scores is not None:
                    cls.score = float(scores[i, c])
        return response

    def metadata(self, request):
        """GetModelMetadataRequest -> GetModelMetadataResponse."""
        if not request.HasField("model_spec"):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
        if not request.metadata_field:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "GetModelMetadataRequest must specify at least one metadata_field",
            )
        for field in request.metadata_field:
            if field != SIGNATURE_DEF_FIELD:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Metadata field {field} is not supported",
                )
        servable = self.manager.get_servable(request.model_spec)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.metadata[SIGNATURE_DEF_FIELD].Pack(servable.signature_def_map)
        return response

    def model_status(self, request):
        """GetModelStatusRequest -> GetModelStatusResponse."""
        if not request.HasField("model_spec"):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
        spec = request.model_spec
        version = spec.version.value if spec.HasField("version") else None
        response = get_model_status_pb2.GetModelStatusResponse()
        for v, state, code, message in self.manager.version_states(spec.name, version):
            status = response.model_version_status.add(version=v, state=state)
            status.status.error_code = code.value[0]
            status.status.error_message = message
        return response


def _fill_model_spec(model_spec, name, signature_name, version):
    model_spec.name = name
    model_spec.signature_name = signature_name or DEFAULT_SIGNATURE
    model_spec.version.value = version


def _serialized_examples(input_proto):
    """Input proto -> object array of serialized tf.Examples."""
    kind = input_proto.WhichOneof("kind")
    if kind == "example_list":
        examples = [e.SerializeToString() for e in input_proto.example_list.examples]
    elif kind == "example_list_with_context":
        context = input_proto.example_list_with_context.context
        examples = []
        for e in input_proto.example_list_with_context.examples:
            merged = example_pb2.Example()
            merged.CopyFrom(context)
            merged.MergeFrom(e)
            examples.append(merged.SerializeToString())
    else:
        examples = []
    if not examples:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Input is empty.")
    array = np.empty(len(examples), dtype=object)
    array[:] = examples
    return array


# ---------------------------------------------------------------------------
# gRPC front end.


def _abort(context, error):
    context.abort(error.code, error.message)


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """tensorflow.serving.PredictionService."""

    def __init__(self, core):
        self._core = core

    def Predict(self, request, context):
        try:
            if not request.HasField("model_spec"):
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
            servable = self._core.manager.get_servable(request.model_spec)
            signature = servable.signature(request.model_spec.signature_name)
            signature.check_input_keys(request.inputs.keys())
            inputs = {}
            for key, proto in request.inputs.items():
                signature.check_input_dtype(key, proto.dtype)
                inputs[key] = tensor_proto_to_ndarray(proto)
            output_keys = signature.output_keys(request.output_filter)
            outputs = self._core.run_signature(servable, signature, inputs)
            response = predict_pb2.PredictResponse()
            _fill_model_spec(
                response.model_spec, request.model_spec.name, signature.name, servable.version
            )
            for key in output_keys:
                ndarray_to_tensor_proto(
                    outputs[key], signature.outputs[key].dtype, response.outputs[key]
                )
            return response
        except ServingError as e:
            _abort(context, e)

    def Classify(self, request, context):
        try:
            return self._core.classify(request)
        except ServingError as e:
            _abort(context, e)

    def Regress(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "Regress is not supported by mmkeras models.")

    def MultiInference(self, request, context):
        context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "MultiInference is not supported by mmkeras models."
        )

    def GetModelMetadata(self, request, context):
        try:
            return self._core.metadata(request)
        except ServingError as e:
            _abort(context, e)


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """tensorflow.serving.ModelService."""

    def __init__(self, core):
        self._core = core

    def GetModelStatus(self, request, context):
        try:
            return self._core.model_status(request)
        except ServingError as e:
            _abort(context, e)

    def HandleReloadConfigRequest(self, request, context):
        response = model_management_pb2.ReloadConfigResponse()
        try:
            configs = model_configs_from_proto(request.config)
        except ValueError as e:
            response.status.error_code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
            response.status.error_message = str(e)
            return response
        self._core.manager.set_configs(configs)
        self._core.manager.poll_once()
        response.status.error_code = 0
        return response


# ---------------------------------------------------------------------------
# REST front end.

_PREDICT_PATH_RE = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
    r":(classify|regress|predict)"
)
_STATUS_PATH_RE = re.compile(
    r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?"
)


def _model_spec_from_path(name, version, label):
    spec = predict_pb2.PredictRequest().model_spec
    spec.name = name
    if version:
        spec.version.value = int(version)
    elif label:
        spec.version_label = label
    return spec


def _json_feature(name, values, feature):
    for value in values if isinstance(values, list) else [values]:
        if isinstance(value, bool):
            feature.int64_list.value.append(int(value))
        elif isinstance(value, int):
            feature.int64_list.value.append(value)
        elif isinstance(value, float):
            feature.float_list.value.append(value)
        elif isinstance(value, str):
            feature.bytes_list.value.append(value.encode("utf-8"))
        elif isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str):
            feature.bytes_list.value.append(_json_leaf(value, types_pb2.DT_STRING))
        else:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Feature: {name} has element with unexpected JSON type: {json.dumps(value)}",
            )
        if len([k for k in ("int64_list", "float_list", "bytes_list") if feature.HasField(k)]) > 1:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Unexpected element type in feature: {name}",
            )


def _json_example(obj, example):
    if not isinstance(obj, dict):
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "Example must be JSON object but got JSON " + type(obj).__name__,
        )
    for name, values in obj.items():
        _json_feature(name, values, example.features.feature[name])


class RestApi:
    """TF Serving's REST API on top of `ServingCore` (JSON in, JSON out)."""

    def __init__(self, core):
        self._core = core

    def handle(self, method, path, body):
        """(HTTP status, JSON-able dict) for one request."""
        try:
            return 200, self._dispatch(method, path, body)
        except ServingError as e:
            return e.http_status, {"error": e.message}
        except RecursionError:
            return 400, {"error": "JSON Parse error: the document is nested too deeply"}

    def _dispatch(self, method, path, body):
        path = path.split("?", 1)[0]
        if method == "POST":
            match = _PREDICT_PATH_RE.fullmatch(path)
            if match:
                name, version, label, verb = match.groups()
                name = urllib.parse.unquote(name)
                label = urllib.parse.unquote(label) if label else label
                spec = _model_spec_from_path(name, version, label)
                request = self._parse_body(body)
                if verb.lower() == "predict":
                    return self._predict(spec, request)
                if verb.lower() == "classify":
                    return self._classify(spec, request)
                raise ServingError(
                    grpc.StatusCode.UNIMPLEMENTED, "Regress is not supported by mmkeras models."
                )
        elif method == "GET":
            match = _STATUS_PATH_RE.fullmatch(path)
            if match:
                name, version, label, subresource = match.groups()
                name = urllib.parse.unquote(name) if name else name
                label = urllib.parse.unquote(label) if label else label
                if not name:
                    raise ServingError(
                        grpc.StatusCode.INVALID_ARGUMENT, "Missing model name in request."
                    )
                spec = _model_spec_from_path(name, version, label)
                if subresource:
                    return self._metadata(spec)
                return self._status(spec)
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT, f"Malformed request: {method} {path}"
        )

    @staticmethod
    def _parse_body(body):
        if not body:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT, "JSON Parse error: The document is empty"
            )
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"JSON Parse error: {e}") from None
        if not isinstance(doc, dict):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "JSON Value: Is not object")
        signature_name = doc.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "'signature_name' key must be a string value.",
            )
        return doc

    def _predict(self, spec, doc):
        spec.signature_name = doc.get("signature_name", "")
        servable = self._core.manager.get_servable(spec)
        name = spec.signature_name or DEFAULT_SIGNATURE
        signature = servable.signatures.get(name)
        if signature is None:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f'Serving signature name: "{name}" not found in signature def',
            )
        if not signature.inputs:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT, f"Failed to get input map for signature: {name}"
            )
        if "instances" in doc and "inputs" in doc:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "Not formatted correctly expecting only one of 'inputs' or 'instances' "
                "keys to exist",
            )
        if "instances" in doc:
            row_format = True
            inputs = self._inputs_from_instances(signature, doc["instances"])
        elif "inputs" in doc:
            row_format = False
            inputs = self._inputs_from_columns(signature, doc["inputs"])
        else:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT, "Missing 'inputs' or 'instances' key"
            )
        outputs = self._core.run_signature(servable, signature, inputs)
        outputs = {k: outputs[k] for k in sorted(outputs)}
        if row_format:
            return {"predictions": self._rows(outputs)}
        columns = {
            k: _json_values(v, k.endswith("_bytes") and v.dtype == object)
            for k, v in outputs.items()
        }
        if len(columns) == 1:
            return {"outputs": next(iter(columns.values()))}
        return {"outputs": columns}

    @staticmethod
    def _is_b64(value):
        return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)

    def _inputs_from_instances(self, signature, instances):
        if not isinstance(instances, list):
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT, "Excepting 'instances' to be an list/array"
            )
        if not instances:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "No values in 'instances' array")
        objects = isinstance(instances[0], dict) and not self._is_b64(instances[0])
        if not objects and len(signature.inputs) > 1:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "instances is a plain list, but expecting list of objects as multiple "
                "input tensors required as per tensorinfo_map",
            )
        if not objects:
            key = next(iter(signature.inputs))
            return {key: json_to_ndarray(instances, signature.inputs[key].dtype)}
        columns = {k: [] for k in signature.inputs}
        for i, instance in enumerate(instances):
            if not isinstance(instance, dict) or self._is_b64(instance):
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Expecting object but got list at item {i} of input list",
                )
            if set(instance) != set(signature.inputs):
                unknown = sorted(set(instance) - set(signature.inputs))
                if unknown:
                    raise ServingError(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"Failed to process element: {i} key: {unknown[0]} of 'instances' "
                        f"list. Error: JSON object: does not have named input: {unknown[0]}",
                    )
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Failed to process element: {i} of 'instances' list. JSON object: "
                    f"{json.dumps(instance)[:200]} keys must be equal to: "
                    f"{','.join(sorted(signature.inputs))}",
                )
            for key, value in instance.items():
                columns[key].append(value)
        return {k: json_to_ndarray(v, signature.inputs[k].dtype) for k, v in columns.items()}

    def _inputs_from_columns(self, signature, value):
        if not isinstance(value, dict) or self._is_b64(value):
            if len(signature.inputs) > 1:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "inputs is a plain value/list, but expecting an object as multiple "
                    "input tensors required as per tensorinfo_map",
                )
            key = next(iter(signature.inputs))
            return {key: json_to_ndarray(value, signature.inputs[key].dtype)}
        inputs = {}
        for key, spec in signature.inputs.items():
            if key not in value:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Missing named input: {key} in 'inputs' object.",
                )
            inputs[key] = json_to_ndarray(value[key], spec.dtype)
        return inputs

    @staticmethod
    def _rows(outputs):
        batch = None
        columns = {}
        for name, value in outputs.items():
            if value.ndim == 0:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Tensor name: {name} has no shape information ",
                )
            if batch is not None and value.shape[0] != batch:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Tensor name: {name} has inconsistent batch size: {value.shape[0]} "
                    f"expecting: {batch}",
                )
            batch = value.shape[0]
            columns[name] = _json_values(value, name.endswith("_bytes") and value.dtype == object)
        if len(columns) == 1:
            return next(iter(columns.values()))
        return [{k: v[i] for k, v in columns.items()} for i in range(batch)]

    def _classify(self, spec, doc):
        spec.signature_name = doc.get("signature_name", "")
        request = classification_pb2.ClassificationRequest()
        request.model_spec.CopyFrom(spec)
        examples = doc.get("examples")
        if examples is None:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "When method is classify, key 'examples' is expected and was not found",
            )
        if not isinstance(examples, list):
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT, "Expecting 'examples' value to be an list/array"
            )
        if not examples:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT, "'examples' value is an empty array"
            )
        if "context" in doc:
            target = request.input.example_list_with_context
            _json_example(doc["context"], target.context)
        else:
            target = request.input.example_list
        for obj in examples:
            _json_example(obj, target.examples.add())
        response = self._core.classify(request)
        return {
            "results": [
                [[c.label, float(str(np.float32(c.score)))] for c in classifications.classes]
                for classifications in response.result.classifications
            ]
        }

    def _metadata(self, spec):
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            metadata_field=[SIGNATURE_DEF_FIELD]
        )
        request.model_spec.CopyFrom(spec)
        response = self._core.metadata(request)
        signature_def_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata[SIGNATURE_DEF_FIELD].Unpack(signature_def_map)
        options = dict(always_print_fields_with_no_presence=True, preserving_proto_field_name=True)
        return {
            "model_spec": json_format.MessageToDict(response.model_spec, **options),
            "metadata": {
                SIGNATURE_DEF_FIELD: json_format.MessageToDict(signature_def_map, **options)
            },
        }

    def _status(self, spec):
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = spec.name
        if spec.HasField("version"):
            request.model_spec.version.value = spec.version.value
        response = self._core.model_status(request)
        return json_format.MessageToDict(
            response, always_print_fields_with_no_presence=True, preserving_proto_field_name=True
        )


def _make_http_handler(rest_api, max_request_bytes):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "mmkeras-serving"

        def log_message(self, format, *args):  # noqa: A002 - stdlib signature.
            logging.debug("REST %s - " + format, self.address_string(), *args)

        def _reply(self, status, payload):
            body = json.dumps(payload, indent=None).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

        def _read_body(self):
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0:
                self.close_connection = True
                return None, (400, {"error": "Invalid Content-Length"})
            if length > max_request_bytes:
                self.close_connection = True
                # Drain a bounded amount so that the client reads our answer
                # instead of a reset connection.
                remaining = min(length, 4 * max_request_bytes + (1 << 20))
                while remaining > 0:
                    chunk = self.rfile.read(min(remaining, 1 << 20))
                    if not chunk:
                        break
                    remaining -= len(chunk)
                return None, (
                    413,
                    {
                        "error": f"Request body of {length} bytes is larger than the "
                        f"maximum of {max_request_bytes} bytes"
                    },
                )
            return self.rfile.read(length), None

        def _handle(self, method):
            body = b""
            if method == "POST":
                body, error = self._read_body()
                if error is not None:
                    self._reply(*error)
                    return
            if not self.path.lower().startswith("/v1/"):
                self._reply(404, {"error": f"Not found: {self.path}"})
                return
            try:
                status, payload = rest_api.handle(method, self.path, body)
            except Exception as e:  # noqa: BLE001 - a bad request never kills the server.
                logging.exception("REST request %s %s failed", method, self.path)
                status, payload = 500, {"error": f"Internal error: {e}"}
            self._reply(status, payload)

        def do_GET(self):  # noqa: N802 - stdlib naming.
            self._handle("GET")

        def do_POST(self):  # noqa: N802 - stdlib naming.
            self._handle("POST")

    return Handler


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class _HTTPServerV6(_HTTPServer):
    address_family = socket.AF_INET6


# ---------------------------------------------------------------------------
# The server.


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
            server_class = _HTTPServerV6 if ":" in self.host else _HTTPServer
            port = max(self._requested_rest_port, 0)
            self._http_server = server_class(
                (self.host, port),
                _make_http_handler(RestApi(self.core), self.max_request_bytes),
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
                self.manager.set_configs(load_model_config_file(self._model_config_file))
                logging.info("Reloaded model config %s", self._model_config_file)
                self.manager.poll_once()
            except Exception:  # noqa: BLE001 - keep serving the old config.
                logging.exception("Cannot reload %s", self._model_config_file)

    def ports_line(self):
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


# ---------------------------------------------------------------------------
# Command line.


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


@functools.lru_cache(maxsize=None)
def _import_tensorflow_text():
    """TF Text registers its ops on import; SavedModels that use them need it."""
    try:
        import tensorflow_text  # noqa: F401
    except ImportError:
        logging.warning("tensorflow_text is not installed: models with TF Text ops will not load")


def server_from_flags(FLAGS):
    if FLAGS.model_config_file:
        model_configs = load_model_config_file(FLAGS.model_config_file)
    elif FLAGS.model_base_path:
        model_configs = [
            ModelConfig(FLAGS.model_name, os.path.abspath(FLAGS.model_base_path))
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
    _import_tensorflow_text()
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
