"""REST front end: TF Serving's `/v1/models/...` API over HTTP."""

import http.server
import json
import re
import socket
import urllib.parse

from absl import logging
import grpc
import numpy as np
from google.protobuf import json_format
from tensorflow_serving.apis import classification_pb2
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import predict_pb2

from serving.server.core import SIGNATURE_DEF_FIELD
from serving.server.json_codec import is_b64
from serving.server.json_codec import json_example
from serving.server.json_codec import json_to_ndarray
from serving.server.json_codec import json_values
from serving.server.servables import DEFAULT_SIGNATURE
from serving.server.status import ServingError

# Protos in REST answers are printed as TF Serving prints them.
_PROTO_JSON_OPTIONS = dict(
    always_print_fields_with_no_presence=True, preserving_proto_field_name=True
)
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


def _output_json(name, value):
    # TF Serving's convention: string outputs whose name ends in "_bytes" are
    # binary and go out base64-encoded.
    return json_values(value, name.endswith("_bytes") and value.dtype == object)


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
        columns = {k: _output_json(k, v) for k, v in outputs.items()}
        if len(columns) == 1:
            return {"outputs": next(iter(columns.values()))}
        return {"outputs": columns}

    def _inputs_from_instances(self, signature, instances):
        if not isinstance(instances, list):
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT, "Excepting 'instances' to be an list/array"
            )
        if not instances:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "No values in 'instances' array")
        objects = isinstance(instances[0], dict) and not is_b64(instances[0])
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
            if not isinstance(instance, dict) or is_b64(instance):
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
        if not isinstance(value, dict) or is_b64(value):
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
            columns[name] = _output_json(name, value)
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
            json_example(doc["context"], target.context)
        else:
            target = request.input.example_list
        for obj in examples:
            json_example(obj, target.examples.add())
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
        return {
            "model_spec": json_format.MessageToDict(response.model_spec, **_PROTO_JSON_OPTIONS),
            "metadata": {
                SIGNATURE_DEF_FIELD: json_format.MessageToDict(
                    signature_def_map, **_PROTO_JSON_OPTIONS
                )
            },
        }

    def _status(self, spec):
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = spec.name
        if spec.HasField("version"):
            request.model_spec.version.value = spec.version.value
        response = self._core.model_status(request)
        return json_format.MessageToDict(response, **_PROTO_JSON_OPTIONS)


def _make_handler(rest_api, max_request_bytes):
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


class _HTTPServerV4(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class _HTTPServerV6(_HTTPServerV4):
    address_family = socket.AF_INET6


def make_http_server(host, port, core, max_request_bytes):
    """A threading HTTP server for the REST API of `core`, bound to (host, port)."""
    server_class = _HTTPServerV6 if ":" in host else _HTTPServerV4
    return server_class((host, port), _make_handler(RestApi(core), max_request_bytes))
