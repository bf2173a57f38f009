"""Client for mmkeras models behind TensorFlow Serving or `serving.server`.

Speaks TF Serving's gRPC API (default) or its REST API (`rest=True`), knows the
mmkeras signature names and nothing else about mmkeras, so an application can
copy this one file. It imports grpcio, numpy, the tensorflow-serving-api protos
and TensorFlow, which those protos import anyway and whose `tf.make_tensor_proto`
/ `tf.make_ndarray` build and read the tensors; never mmkeras, `training` or the
server.

Example:

    client = PredictionClient("localhost:8500")
    with open("a.jpg", "rb") as f:
        [(caption, score)] = client.caption("captioner", [f.read()])

Command line (one result line per input; see `serving/client_cli.py`):

    python -m serving.client --server=localhost:8500 --model=captioner \\
        --image=a.jpg --image=b.jpg
    a.jpg<TAB>a dog runs on the grass<TAB>0.8123

Which kind of model it is (captioner, classifier / VQA, dual encoder) is read
from the model's signatures.
"""

import base64
import collections
import json
import sys
import urllib.error
import urllib.parse
import urllib.request

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.framework import tensor_pb2
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import classification_pb2
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

DEFAULT_GRPC_SERVER = "localhost:8500"
DEFAULT_REST_SERVER = "localhost:8501"
DEFAULT_SIGNATURE = tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY
EMBED_IMAGES_SIGNATURE = "embed_images"
EMBED_TEXTS_SIGNATURE = "embed_texts"
CLASSIFICATION_SIGNATURE = "classification"

Caption = collections.namedtuple("Caption", ["caption", "score"])
# `class_id` is an int (the most probable class); for multi-label models it is
# the 0/1 decisions, an int64 array [classes], and `label` joins the chosen
# labels with "|".
Classification = collections.namedtuple(
    "Classification", ["label", "class_id", "probabilities"]
)


class ServingClientError(RuntimeError):
    """A failed request.

    Attributes:
        code: the gRPC status code name (e.g. "INVALID_ARGUMENT"), or None for
            REST.
        http_status: the HTTP status for REST, or None for gRPC.
        message: the server's error message.
    """

    def __init__(self, message, code=None, http_status=None):
        super().__init__(f"{code or http_status}: {message}")
        self.message = message
        self.code = code
        self.http_status = http_status


def _as_bytes(value):
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, np.bytes_):
        return bytes(value)
    raise TypeError(f"Expected bytes or str. Received: {type(value).__name__}")


def _tensor(values):
    """A TensorProto as given, or built by `tf.make_tensor_proto`."""
    if isinstance(values, tensor_pb2.TensorProto):
        return values
    return tf.make_tensor_proto(values)


def _strings(values):
    """A list of bytes/str as a DT_STRING tensor (also when it is empty)."""
    return tf.make_tensor_proto(list(values), dtype=tf.string)


def _to_json(array):
    if array.dtype == object:
        flat = [{"b64": base64.b64encode(_as_bytes(v)).decode("ascii")} for v in array.ravel()]
        converted = np.empty(len(flat), dtype=object)
        converted[:] = flat
        return converted.reshape(array.shape).tolist()
    return array.tolist()


class PredictionClient:
    """Calls mmkeras SavedModels served by TF Serving over gRPC or REST.

    Args:
        server: `host:port`; defaults to localhost:8500 (gRPC) or
            localhost:8501 (REST).
        rest: use the REST API instead of gRPC.
        timeout: seconds per request.
    """

    def __init__(self, server=None, rest=False, timeout=60.0):
        self.rest = rest
        self.timeout = timeout
        self.server = server or (DEFAULT_REST_SERVER if rest else DEFAULT_GRPC_SERVER)
        self._metadata_cache = {}
        self._channel = None
        if not rest:
            self._channel = grpc.insecure_channel(
                self.server,
                options=[
                    ("grpc.max_send_message_length", -1),
                    ("grpc.max_receive_message_length", -1),
                ],
            )
            self._prediction = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
            self._model_service = model_service_pb2_grpc.ModelServiceStub(self._channel)
        else:
            base = self.server if "://" in self.server else f"http://{self.server}"
            self._base_url = base.rstrip("/")

    def close(self):
        if self._channel is not None:
            self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- transport ---------------------------------------------------------

    def _grpc(self, method, request):
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as e:
            raise ServingClientError(e.details(), code=e.code().name) from None

    def _http(self, method, path, payload=None):
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        request = urllib.request.Request(
            self._base_url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            body = e.read()
            try:
                message = json.loads(body)["error"]
            except (ValueError, KeyError, TypeError):
                message = body.decode("utf-8", errors="replace")
            raise ServingClientError(message, http_status=e.code) from None

    @staticmethod
    def _model_path(model, version=None):
        path = "/v1/models/" + urllib.parse.quote(model, safe="")
        if version is not None:
            path += f"/versions/{int(version)}"
        return path

    # -- generic API -------------------------------------------------------

    def predict(self, model, inputs, signature=DEFAULT_SIGNATURE, version=None, output_filter=None):
        """Runs one signature.

        Args:
            model: model name.
            inputs: dict input name -> list of bytes/str, numeric array or
                TensorProto.
            signature: signature name.
            version: model version; None for the latest.
            output_filter: output names to return (gRPC only); None for all.

        Returns:
            dict output name -> numpy array (strings as object arrays of bytes).
        """
        if self.rest:
            return self._predict_rest(model, inputs, signature, version, output_filter)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        request.model_spec.signature_name = signature
        if version is not None:
            request.model_spec.version.value = int(version)
        for name, values in inputs.items():
            request.inputs[name].CopyFrom(_tensor(values))
        if output_filter:
            request.output_filter.extend(output_filter)
        response = self._grpc(self._prediction.Predict, request)
        return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}

    def _predict_rest(self, model, inputs, signature, version, output_filter):
        columns = {
            name: _to_json(tf.make_ndarray(_tensor(values))) for name, values in inputs.items()
        }
        payload = {"signature_name": signature, "inputs": columns}
        response = self._http("POST", self._model_path(model, version) + ":predict", payload)
        outputs_spec = self._signature_outputs(model, version, signature)
        outputs = response["outputs"]
        if not isinstance(outputs, dict) or set(outputs) - set(outputs_spec):
            # TF Serving leaves out the name when a signature has one output.
            [name] = list(outputs_spec)
            outputs = {name: outputs}
        result = {}
        for name, value in outputs.items():
            dtype = outputs_spec[name]
            if dtype == "DT_STRING":
                result[name] = _json_strings(value, as_bytes=name.endswith("_bytes"))
            else:
                np_dtype = tf.as_dtype(types_pb2.DataType.Value(dtype)).as_numpy_dtype
                result[name] = np.asarray(value, dtype=np_dtype)
        if output_filter:
            result = {k: result[k] for k in output_filter}
        return result

    def _signature_outputs(self, model, version, signature):
        key = (model, version)
        if key not in self._metadata_cache:
            self._metadata_cache[key] = self.metadata(model, version)
        signatures = self._metadata_cache[key]["metadata"]["signature_def"]["signature_def"]
        if signature not in signatures:
            raise ServingClientError(f'Signature "{signature}" not found in model {model}')
        return {
            name: info.get("dtype", "DT_INVALID")
            for name, info in signatures[signature].get("outputs", {}).items()
        }

    def metadata(self, model, version=None):
        """Model metadata in TF Serving's REST JSON layout.

        Returns `{"model_spec": {...}, "metadata": {"signature_def":
        {"signature_def": {name: SignatureDef as JSON}}}}` for both transports.
        """
        if self.rest:
            return self._http("GET", self._model_path(model, version) + "/metadata")
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = model
        if version is not None:
            request.model_spec.version.value = int(version)
        response = self._grpc(self._prediction.GetModelMetadata, request)
        signature_def_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_def_map)
        options = dict(always_print_fields_with_no_presence=True, preserving_proto_field_name=True)
        return {
            "model_spec": json_format.MessageToDict(response.model_spec, **options),
            "metadata": {
                "signature_def": json_format.MessageToDict(signature_def_map, **options)
            },
        }

    def signatures(self, model, version=None):
        """dict signature name -> {"inputs": {name: dtype}, "outputs": {name: dtype}}."""
        signature_defs = self.metadata(model, version)["metadata"]["signature_def"]["signature_def"]
        return {
            name: {
                "inputs": {k: v.get("dtype") for k, v in sig.get("inputs", {}).items()},
                "outputs": {k: v.get("dtype") for k, v in sig.get("outputs", {}).items()},
            }
            for name, sig in signature_defs.items()
            if not name.startswith("__")
        }

    def status(self, model, version=None):
        """[{"version": int, "state": "AVAILABLE", "error_code": ..., "error_message": ...}]."""
        if self.rest:
            path = self._model_path(model, version)
            response = self._http("GET", path)
            entries = response.get("model_version_status", [])
            return [
                {
                    "version": int(e["version"]),
                    "state": e["state"],
                    "error_code": e.get("status", {}).get("error_code", "OK"),
                    "error_message": e.get("status", {}).get("error_message", ""),
                }
                for e in entries
            ]
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model
        if version is not None:
            request.model_spec.version.value = int(version)
        response = self._grpc(self._model_service.GetModelStatus, request)
        state_names = get_model_status_pb2.ModelVersionStatus.State
        return [
            {
                "version": s.version,
                "state": state_names.Name(s.state),
                "error_code": _error_code_name(s.status.error_code),
                "error_message": s.status.error_message,
            }
            for s in response.model_version_status
        ]

    # -- mmkeras tasks -----------------------------------------------------

    def caption(self, model, images, signature=DEFAULT_SIGNATURE, version=None):
        """Encoded images (bytes) -> [Caption(caption: str, score: float)]."""
        outputs = self.predict(model, {"images": _strings(images)}, signature, version)
        return [
            Caption(c.decode("utf-8", errors="replace"), float(s))
            for c, s in zip(outputs["captions"], outputs["scores"])
        ]

    def classify(self, model, images, texts, signature=DEFAULT_SIGNATURE, version=None):
        """(image bytes, text) pairs -> [Classification(label, class_id, probabilities)]."""
        images, texts = list(images), list(texts)
        if len(texts) == 1 and len(images) > 1:
            texts = texts * len(images)
        if len(texts) != len(images):
            raise ValueError(
                f"Need one text per image. Received: {len(images)} images, {len(texts)} texts"
            )
        outputs = self.predict(
            model, {"images": _strings(images), "texts": _strings(texts)}, signature, version
        )
        return [
            Classification(
                label.decode("utf-8", errors="replace"),
                int(class_id) if np.ndim(class_id) == 0 else np.asarray(class_id, np.int64),
                probabilities,
            )
            for label, class_id, probabilities in zip(
                outputs["labels"], outputs["class_ids"], outputs["probabilities"]
            )
        ]

    def classify_examples(
        self, model, images, texts, signature=CLASSIFICATION_SIGNATURE, version=None
    ):
        """Classify API: (image, text) pairs -> [[(label, score), ...] per pair].

        Sends tf.Examples with bytes features `image` and `text` to the
        model's classification signature (method tensorflow/serving/classify).
        """
        images, texts = list(images), list(texts)
        if len(texts) == 1 and len(images) > 1:
            texts = texts * len(images)
        if len(texts) != len(images):
            raise ValueError(
                f"Need one text per image. Received: {len(images)} images, {len(texts)} texts"
            )
        if self.rest:
            payload = {
                "signature_name": signature,
                "examples": [
                    {
                        "image": {"b64": base64.b64encode(_as_bytes(i)).decode("ascii")},
                        "text": {"b64": base64.b64encode(_as_bytes(t)).decode("ascii")},
                    }
                    for i, t in zip(images, texts)
                ],
            }
            path = self._model_path(model, version) + ":classify"
            response = self._http("POST", path, payload)
            return [[(label, float(score)) for label, score in row] for row in response["results"]]
        request = classification_pb2.ClassificationRequest()
        request.model_spec.name = model
        request.model_spec.signature_name = signature
        if version is not None:
            request.model_spec.version.value = int(version)
        for image, text in zip(images, texts):
            example = request.input.example_list.examples.add()
            example.features.feature["image"].bytes_list.value.append(_as_bytes(image))
            example.features.feature["text"].bytes_list.value.append(_as_bytes(text))
        response = self._grpc(self._prediction.Classify, request)
        return [
            [(c.label, c.score) for c in classifications.classes]
            for classifications in response.result.classifications
        ]

    def embed_images(self, model, images, signature=EMBED_IMAGES_SIGNATURE, version=None):
        """Encoded images -> float32 [len(images), dim] L2-normalised embeddings."""
        return self.predict(model, {"images": _strings(images)}, signature, version)["embeddings"]

    def embed_texts(self, model, texts, signature=EMBED_TEXTS_SIGNATURE, version=None):
        """Texts -> float32 [len(texts), dim] L2-normalised embeddings."""
        return self.predict(model, {"texts": _strings(texts)}, signature, version)["embeddings"]


def _json_strings(value, as_bytes):
    """REST strings (nested lists; `{"b64": ...}` for bytes) -> object array of bytes."""
    array = np.array(value, dtype=object)
    if as_bytes:
        flat = [base64.b64decode(v["b64"]) for v in array.ravel()]
    else:
        flat = [v.encode("utf-8") for v in array.ravel()]
    converted = np.empty(len(flat), dtype=object)
    converted[:] = flat
    return converted.reshape(array.shape)


def _error_code_name(number):
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code.name
    return str(number)


if __name__ == "__main__":
    # `python -m serving.client ...`: the command line lives in client_cli.py.
    from serving import client_cli

    sys.exit(client_cli.main())
