"""`python -m serving.server` against toy SavedModels, over gRPC and REST."""

import base64
import json
import os
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import classification_pb2
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from serving import model_config
from serving import toy_models
from serving.server import batcher as batcher_lib
from serving.server import batching_config
from serving.server import rest
from serving.server import tensor_codec
from serving.server.status import ServingError
from tests import serving_fixtures as fx

MAX_REQUEST_BYTES = 1 << 20
MODELS = {
    "captioner": "captioner",
    "classifier": "classifier",
    "dual_encoder": "dual_encoder",
    "lifecycle": "captioner",
}
RED_PNG = toy_models.make_image_bytes((210, 40, 30), image_format="png", seed=1)
BLUE_JPEG = toy_models.make_image_bytes((30, 40, 220), image_format="jpeg", seed=2)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("saved_models")
    for name, kind in MODELS.items():
        fx.copy_toy_version(kind, root / name, 1)
    model_config.write_models_config(root, list(MODELS))
    model_config.write_batching_parameters(
        root, max_batch_size=8, batch_timeout_micros=2000, num_batch_threads=2
    )
    return root


@pytest.fixture(scope="module")
def served(export_dir):
    process = fx.ServerProcess(
        [
            "--port=0",
            "--rest_api_port=-1",
            f"--model_config_file={export_dir / 'models.config'}",
            "--enable_batching",
            f"--batching_parameters_file={export_dir / 'batching_parameters.pbtxt'}",
            "--file_system_poll_wait_seconds=0.5",
            f"--max_request_bytes={MAX_REQUEST_BYTES}",
        ],
        log_path=export_dir.parent / "server.log",
    )
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def channel(served):
    with grpc.insecure_channel(
        served.grpc_address, options=[("grpc.max_send_message_length", -1)]
    ) as channel:
        yield channel


@pytest.fixture(scope="module")
def stub(channel):
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def model_stub(channel):
    return model_service_pb2_grpc.ModelServiceStub(channel)


@pytest.fixture(scope="module")
def in_process():
    """The same SavedModels loaded in the test process: the expected answers."""
    import tensorflow_text  # noqa: F401 - the toy classifier uses TF Text ops.

    return {
        kind: tf.saved_model.load(fx.toy_version_dir(kind))
        for kind in ("captioner", "classifier", "dual_encoder")
    }


def _predict_request(model, inputs, signature="", version=None):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return request


def _outputs(response):
    return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


def _http(url, payload=None, method=None, raw=None):
    data = raw if raw is not None else (None if payload is None else json.dumps(payload).encode())
    method = method or ("POST" if data is not None else "GET")
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _b64(data):
    return {"b64": base64.b64encode(data).decode()}


def _wait_for(condition, timeout=120.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_prints_ports_and_logs_loaded_versions(served):
    assert served.grpc_port > 0 and served.rest_port > 0
    log = served.log()
    for name in MODELS:
        assert f"Successfully loaded servable version {{name: {name} version: 1}}" in log


@pytest.mark.parametrize("signature", ["", "serving_default", "beam_search"])
def test_grpc_captioner_matches_in_process(stub, in_process, signature):
    images = [RED_PNG, BLUE_JPEG]
    response = stub.Predict(_predict_request("captioner", {"images": images}, signature))
    expected = in_process["captioner"].signatures[signature or "serving_default"](
        images=tf.constant(images)
    )
    outputs = _outputs(response)
    np.testing.assert_array_equal(outputs["captions"], expected["captions"].numpy())
    np.testing.assert_allclose(outputs["scores"], expected["scores"].numpy(), rtol=1e-6)
    assert outputs["captions"][0] == b"a dark red image" or signature == "beam_search"
    assert response.model_spec.name == "captioner"
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == (signature or "serving_default")
    # TF Serving fills typed value fields, not tensor_content.
    assert list(response.outputs["scores"].float_val)
    assert response.outputs["scores"].dtype == tf.float32.as_datatype_enum


def test_grpc_classifier_matches_in_process_and_output_filter(stub, in_process):
    inputs = {"images": [RED_PNG, BLUE_JPEG], "texts": ["what colour is it", "blue?"]}
    expected = in_process["classifier"].signatures["serving_default"](
        **{k: tf.constant(v) for k, v in inputs.items()}
    )
    outputs = _outputs(stub.Predict(_predict_request("classifier", inputs)))
    np.testing.assert_array_equal(outputs["labels"], [b"red", b"blue"])
    np.testing.assert_array_equal(outputs["class_ids"], expected["class_ids"].numpy())
    assert outputs["class_ids"].dtype == np.int64
    np.testing.assert_allclose(outputs["probabilities"], expected["probabilities"].numpy(), rtol=1e-6)

    request = _predict_request("classifier", inputs)
    request.output_filter.append("labels")
    assert set(stub.Predict(request).outputs) == {"labels"}


def test_grpc_dual_encoder_matches_in_process(stub, in_process):
    model = in_process["dual_encoder"]
    outputs = _outputs(
        stub.Predict(_predict_request("dual_encoder", {"images": [RED_PNG]}, "embed_images"))
    )
    np.testing.assert_allclose(
        outputs["embeddings"],
        model.signatures["embed_images"](images=tf.constant([RED_PNG]))["embeddings"],
        rtol=1e-6,
    )
    texts = ["a red square", "blue"]
    outputs = _outputs(
        stub.Predict(_predict_request("dual_encoder", {"texts": texts}, "embed_texts"))
    )
    np.testing.assert_allclose(
        outputs["embeddings"],
        model.signatures["embed_texts"](texts=tf.constant(texts))["embeddings"],
        rtol=1e-6,
    )
    np.testing.assert_allclose(np.linalg.norm(outputs["embeddings"], axis=-1), 1.0, rtol=1e-5)


def test_grpc_classify_api(stub, in_process):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "classifier"
    request.model_spec.signature_name = "classification"
    for image, text in ((RED_PNG, "hello"), (BLUE_JPEG, "a b c")):
        request.input.example_list.examples.add().ParseFromString(toy_models.make_example(image, text))
    response = stub.Classify(request)
    expected = in_process["classifier"].signatures["classification"](
        inputs=tf.constant([toy_models.make_example(RED_PNG, "hello"), toy_models.make_example(BLUE_JPEG, "a b c")])
    )
    labels = [[c.label for c in r.classes] for r in response.result.classifications]
    scores = [[c.score for c in r.classes] for r in response.result.classifications]
    assert labels == [[c.decode() for c in row] for row in expected["classes"].numpy()]
    np.testing.assert_allclose(scores, expected["scores"].numpy(), rtol=1e-6)
    assert labels[0][0] == "red" and labels[1][0] == "blue"
    assert response.model_spec.version.value == 1

    # The default signature is a predict signature: Classify refuses it, like TF Serving.
    request.model_spec.signature_name = ""
    with pytest.raises(grpc.RpcError) as error:
        stub.Classify(request)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "tensorflow/serving/classify" in error.value.details()


def test_rest_predict_row_and_columnar_formats(served, in_process):
    expected = in_process["captioner"].signatures["serving_default"](
        images=tf.constant([RED_PNG, BLUE_JPEG])
    )
    captions = [c.decode() for c in expected["captions"].numpy()]
    scores = expected["scores"].numpy()

    status, body = _http(
        served.rest_url + "/v1/models/captioner:predict",
        {"instances": [_b64(RED_PNG), _b64(BLUE_JPEG)]},
    )
    assert status == 200
    assert [p["captions"] for p in body["predictions"]] == captions
    np.testing.assert_allclose([p["scores"] for p in body["predictions"]], scores, rtol=1e-6)

    status, body = _http(
        served.rest_url + "/v1/models/captioner/versions/1:predict",
        {"inputs": {"images": [_b64(RED_PNG), _b64(BLUE_JPEG)]}},
    )
    assert status == 200
    assert body["outputs"]["captions"] == captions
    np.testing.assert_allclose(body["outputs"]["scores"], scores, rtol=1e-6)

    # Row format with named inputs, two inputs.
    status, body = _http(
        served.rest_url + "/v1/models/classifier:predict",
        {"instances": [{"images": _b64(RED_PNG), "texts": "what is it"}]},
    )
    assert status == 200
    assert body["predictions"][0]["labels"] == "red"
    assert body["predictions"][0]["class_ids"] == 0
    assert len(body["predictions"][0]["probabilities"]) == len(toy_models.TOY_CLASS_NAMES)

    # A signature with one output: TF Serving leaves out the output name.
    status, body = _http(
        served.rest_url + "/v1/models/dual_encoder:predict",
        {"signature_name": "embed_texts", "inputs": ["a red square"]},
    )
    assert status == 200
    np.testing.assert_allclose(
        body["outputs"],
        in_process["dual_encoder"].signatures["embed_texts"](texts=tf.constant(["a red square"]))[
            "embeddings"
        ],
        rtol=1e-6,
    )


def test_rest_classify(served):
    status, body = _http(
        served.rest_url + "/v1/models/classifier:classify",
        {
            "signature_name": "classification",
            "examples": [{"image": _b64(BLUE_JPEG), "text": "what colour"}],
        },
    )
    assert status == 200
    [[first, *_]] = body["results"]
    assert first[0] == "blue" and 0.5 < first[1] <= 1.0


def test_metadata_grpc_and_rest(stub, served):
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(fx.toy_version_dir("classifier"), "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    expected = saved_model.meta_graphs[0].signature_def

    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "classifier"
    response = stub.GetModelMetadata(request)
    assert response.model_spec.name == "classifier"
    assert response.model_spec.version.value == 1
    signature_def_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_def_map)
    assert dict(signature_def_map.signature_def) == dict(expected)
    classification = signature_def_map.signature_def["classification"]
    assert classification.method_name == "tensorflow/serving/classify"
    assert set(classification.inputs) == {"inputs"}
    assert set(classification.outputs) == {"classes", "scores"}

    status, body = _http(served.rest_url + "/v1/models/classifier/versions/1/metadata")
    assert status == 200
    assert body["model_spec"] == {"name": "classifier", "signature_name": "", "version": "1"}
    inputs = body["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]
    assert inputs["images"]["dtype"] == "DT_STRING"
    assert inputs["texts"]["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}]

    request.ClearField("metadata_field")
    with pytest.raises(grpc.RpcError) as error:
        stub.GetModelMetadata(request)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_model_status_grpc_and_rest(model_stub, served):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "captioner"
    response = model_stub.GetModelStatus(request)
    [status] = response.model_version_status
    assert status.version == 1
    assert status.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert status.status.error_code == 0

    http_status, body = _http(served.rest_url + "/v1/models/captioner")
    assert http_status == 200
    assert body == {
        "model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
    request.model_spec.version.value = 9
    with pytest.raises(grpc.RpcError) as error:
        model_stub.GetModelStatus(request)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert _http(served.rest_url + "/v1/models/nope")[0] == 404


def _bad_grpc_requests():
    good = {"images": [RED_PNG]}
    cases = [
        ("not an image", _predict_request("captioner", {"images": [b"not an image"]}),
         grpc.StatusCode.INVALID_ARGUMENT, "image"),
        ("wrong dtype", _predict_request("captioner", {"images": [1.0, 2.0]}),
         grpc.StatusCode.INVALID_ARGUMENT, "'images' to be string"),
        ("wrong rank", _predict_request("captioner", {"images": [[RED_PNG]]}),
         grpc.StatusCode.INVALID_ARGUMENT, "'images' expects shape [-1]"),
        ("missing input", _predict_request("classifier", good),
         grpc.StatusCode.INVALID_ARGUMENT, "Missing but required: {texts}"),
        ("extra input", _predict_request("captioner", {**good, "texts": ["x"]}),
         grpc.StatusCode.INVALID_ARGUMENT, "Sent extra: {texts}"),
        ("unknown model", _predict_request("no_such_model", good),
         grpc.StatusCode.NOT_FOUND, "no_such_model"),
        ("unknown version", _predict_request("captioner", good, version=42),
         grpc.StatusCode.NOT_FOUND, "Specific(captioner, 42)"),
        ("unknown signature", _predict_request("captioner", good, signature="nope"),
         grpc.StatusCode.FAILED_PRECONDITION, '"nope" not found'),
        ("oversized", _predict_request("captioner", {"images": [b"x" * (MAX_REQUEST_BYTES + 10)]}),
         grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
    ]
    bad_filter = _predict_request("captioner", good)
    bad_filter.output_filter.append("nope")
    cases.append(("bad output filter", bad_filter, grpc.StatusCode.INVALID_ARGUMENT, "nope"))
    return cases


@pytest.mark.parametrize(
    "request_, code, fragment",
    [case[1:] for case in _bad_grpc_requests()],
    ids=[case[0] for case in _bad_grpc_requests()],
)
def test_grpc_errors_and_server_keeps_answering(stub, served, request_, code, fragment):
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(request_, timeout=60)
    assert error.value.code() == code
    assert fragment in error.value.details()
    response = stub.Predict(_predict_request("captioner", {"images": [RED_PNG]}), timeout=60)
    assert tf.make_ndarray(response.outputs["captions"])[0] == b"a dark red image"
    assert served.alive()


@pytest.mark.parametrize(
    "path, payload, status, fragment",
    [
        ("/v1/models/captioner:predict", {"instances": [_b64(b"not an image")]}, 400, "image"),
        ("/v1/models/captioner:predict", {"instances": [1.5]}, 400, "expected type: string"),
        ("/v1/models/classifier:predict", {"inputs": {"images": [_b64(RED_PNG)]}}, 400,
         "Missing named input: texts"),
        ("/v1/models/no_such_model:predict", {"instances": ["x"]}, 404, "no_such_model"),
        ("/v1/models/captioner/versions/42:predict", {"instances": ["x"]}, 404, "42"),
        ("/v1/models/captioner:predict", {"signature_name": "nope", "instances": ["x"]}, 400,
         '"nope" not found'),
        ("/v1/models/captioner:predict", {"instances": [{"b64": "!!!"}]}, 400, "base64"),
        ("/v1/models/captioner:predict", {"nothing": 1}, 400, "Missing 'inputs' or 'instances'"),
        ("/v1/models/captioner:predict", b"{not json", 400, "JSON Parse error"),
        ("/v1/models/captioner:predict", b'{"instances": ' + b"[" * 100000, 400, "JSON Parse error"),
        ("/v1/models/captioner:predict", None, 413, "larger than the maximum"),
    ],
    ids=["not-image", "wrong-dtype", "missing-input", "unknown-model", "unknown-version",
         "unknown-signature", "bad-b64", "no-inputs", "bad-json", "deep-json", "oversized"],
)
def test_rest_errors_and_server_keeps_answering(served, path, payload, status, fragment):
    if payload is None:
        raw = json.dumps({"instances": [_b64(b"x" * MAX_REQUEST_BYTES)]}).encode()
    elif isinstance(payload, bytes):
        raw = payload
    else:
        raw = json.dumps(payload).encode()
    http_status, body = _http(served.rest_url + path, raw=raw)
    assert http_status == status
    assert fragment in body["error"]
    http_status, body = _http(
        served.rest_url + "/v1/models/captioner:predict", {"instances": [_b64(RED_PNG)]}
    )
    assert http_status == 200 and body["predictions"][0]["captions"] == "a dark red image"


def test_concurrent_good_and_bad_requests_with_batching(stub, in_process):
    colours = [(200, 20, 20), (20, 200, 20), (20, 20, 200), (240, 240, 240)]
    images = [toy_models.make_image_bytes(c, seed=i) for i, c in enumerate(colours)]
    expected = in_process["captioner"].signatures["serving_default"](images=tf.constant(images))
    results = {}

    def call(i):
        if i % 3 == 2:
            try:
                stub.Predict(_predict_request("captioner", {"images": [b"junk %d" % i]}), timeout=60)
                results[i] = "bad request succeeded"
            except grpc.RpcError as e:
                results[i] = e.code()
        else:
            request = _predict_request("captioner", {"images": [images[i % 4]]})
            outputs = _outputs(stub.Predict(request, timeout=60))
            results[i] = (outputs["captions"][0], outputs["scores"][0])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i in range(24):
        if i % 3 == 2:
            assert results[i] == grpc.StatusCode.INVALID_ARGUMENT
        else:
            assert results[i][0] == expected["captions"].numpy()[i % 4]
            np.testing.assert_allclose(results[i][1], expected["scores"].numpy()[i % 4], rtol=1e-5)


def _served_version(stub, model):
    response = stub.Predict(_predict_request(model, {"images": [RED_PNG]}), timeout=60)
    return response.model_spec.version.value


def _version_states(model_stub, model):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model
    return {
        s.version: (get_model_status_pb2.ModelVersionStatus.State.Name(s.state), s.status.error_message)
        for s in model_stub.GetModelStatus(request).model_version_status
    }


def test_new_versions_are_served_and_removed_versions_unloaded(export_dir, stub, model_stub, served):
    base = export_dir / "lifecycle"
    # Temporary and incomplete directories are ignored.
    fx.copy_toy_version("captioner", base, ".tmp-2")
    fx.copy_toy_version("captioner", base, "3.tmp")
    (base / "4").mkdir()
    # An export is typically written to a temporary name and renamed.
    os.rename(base / ".tmp-2", base / "2")
    _wait_for(lambda: _served_version(stub, "lifecycle") == 2, what="version 2 to be served")
    states = _wait_for(
        lambda: (s := _version_states(model_stub, "lifecycle")).get(1, ("",))[0] == "END" and s,
        what="version 1 to be unloaded",
    )
    assert states[2][0] == "AVAILABLE"
    assert 3 not in states and 4 not in states

    # A broken export is logged and skipped; version 2 stays.
    (base / "5").mkdir()
    (base / "5" / "saved_model.pb").write_bytes(b"this is not a SavedModel")
    states = _wait_for(
        lambda: (s := _version_states(model_stub, "lifecycle")).get(5, ("",))[0] == "END" and s,
        what="version 5 to fail",
    )
    assert "Failed to load" in states[5][1]
    assert _served_version(stub, "lifecycle") == 2

    # Removing versions falls back to the highest remaining one.
    shutil.rmtree(base / "5")
    shutil.rmtree(base / "2")
    _wait_for(lambda: _served_version(stub, "lifecycle") == 1, what="fallback to version 1")
    _wait_for(
        lambda: _version_states(model_stub, "lifecycle").get(2, ("",))[0] == "END",
        what="version 2 to be unloaded",
    )
    log = served.log()
    assert "Successfully loaded servable version {name: lifecycle version: 2}" in log
    assert "Unloaded servable version {name: lifecycle version: 2}" in log
    assert served.alive()


def test_sigterm_shuts_down_cleanly(served):
    # Runs last in this module: the other tests share this server.
    assert served.stop(signal.SIGTERM, timeout=30) == 0
    assert "Server stopped" in served.log()


# ---------------------------------------------------------------------------
# In-process units: batcher.py. Batches form on a clock that only the test
# moves, so they form alike on an idle and on a loaded machine.


class _ManualClock:
    """A monotonic clock that moves only when the test advances it."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


def _slow_double(calls):
    def function(inputs):
        calls.append(len(inputs["x"]))
        time.sleep(0.01)
        if np.any(inputs["x"] < 0):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "negative input")
        return {"y": inputs["x"] * 2}

    return function


class _BatchedCalls:
    """A `Batcher` on a `_ManualClock`, and concurrent calls of `_slow_double` through it.

    A context manager that stops the batcher on exit; every call runs in a
    thread of its own.
    """

    def __init__(self, max_batch_size, num_batch_threads, batch_timeout_micros=200_000):
        self.clock = _ManualClock()
        self.batcher = batcher_lib.Batcher(
            batching_config.BatchingParameters(
                max_batch_size=max_batch_size,
                batch_timeout_micros=batch_timeout_micros,
                num_batch_threads=num_batch_threads,
            ),
            clock=self.clock,
        )
        self.model_calls = []  # the batch size of every model call
        self.results = {}  # index -> y, or the status code of the error
        self._function = _slow_double(self.model_calls)
        self._threads = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.batcher.stop()

    def start(self, index, key, x):
        def call():
            try:
                self.results[index] = self.batcher.run(key, self._function, {"x": x}, len(x))["y"]
            except ServingError as e:
                self.results[index] = e.code

        thread = threading.Thread(target=call)
        thread.start()
        self._threads.append(thread)

    def join(self):
        for thread in self._threads:
            thread.join(timeout=120)
            assert not thread.is_alive(), "a batched call never returned"


def test_batcher_merges_concurrent_calls_and_splits_results():
    with _BatchedCalls(max_batch_size=8, num_batch_threads=1) as calls:
        for i in range(8):
            calls.start(i, "key", np.array([i], dtype=np.float32))
        # The clock stands still, so no timeout fires: only a full batch runs.
        calls.join()
    assert calls.model_calls == [8]
    assert calls.batcher.stats() == {"batches": 1, "tasks": 8}
    for i in range(8):
        np.testing.assert_array_equal(calls.results[i], [2.0 * i])


def test_batcher_isolates_a_failing_request():
    with _BatchedCalls(max_batch_size=4, num_batch_threads=2) as calls:
        for i in range(4):
            calls.start(i, "key", np.array([-1.0 if i == 2 else float(i)], dtype=np.float32))
        calls.join()
    assert calls.results.pop(2) == grpc.StatusCode.INVALID_ARGUMENT
    assert {i: y.tolist() for i, y in calls.results.items()} == {0: [0.0], 1: [2.0], 3: [6.0]}
    # The merged call fails and is bisected until the bad request is alone.
    assert calls.model_calls[0] == 4 and sorted(calls.model_calls) == [1, 1, 2, 2, 4]


def test_batcher_waits_for_the_timeout_of_its_oldest_call():
    with _BatchedCalls(max_batch_size=4, num_batch_threads=1) as calls:
        calls.start(0, "key", np.array([1.0], dtype=np.float32))
        _wait_for(lambda: calls.batcher.pending() == 1, what="the call to be queued")
        # Neither a full batch nor timed out: nothing runs, however long this takes.
        assert calls.model_calls == [] and calls.batcher.pending() == 1
        calls.clock.advance(0.2)
        calls.join()
    assert calls.model_calls == [1]
    np.testing.assert_array_equal(calls.results[0], [2.0])


def test_batcher_keeps_different_shapes_apart():
    with _BatchedCalls(max_batch_size=4, num_batch_threads=1) as calls:
        for i in range(4):
            width = 2 + i % 2
            calls.start(i, ("key", width), np.full((1, width), float(i), dtype=np.float32))
        _wait_for(lambda: calls.batcher.pending() == 4, what="all calls to be queued")
        # Two queues of two calls each: neither is full, both time out together.
        calls.clock.advance(1.0)
        calls.join()
    assert sorted(calls.model_calls) == [2, 2]
    for i in range(4):
        assert calls.results[i].shape == (1, 2 + i % 2)
        np.testing.assert_array_equal(calls.results[i], 2.0 * i)


# ---------------------------------------------------------------------------
# In-process units: batching_config.py, tensor_codec.py, rest.py.


def test_parse_batching_parameters():
    params = batching_config.parse_batching_parameters(
        "max_batch_size { value: 32 }\n"
        "batch_timeout_micros { value: 500 }\n"
        "num_batch_threads { value: 3 }\n"
        "max_enqueued_batches { value: 7 }\n"
        "pad_variable_length_inputs: true\n"
    )
    assert params == batching_config.BatchingParameters(32, 500, 3, 7)
    assert batching_config.parse_batching_parameters("").max_batch_size == 1000
    with pytest.raises(ValueError):
        batching_config.parse_batching_parameters("max_batch_size { value: 0 }")


@pytest.mark.parametrize(
    "value, dtype",
    [
        ([b"a", b"bc"], None),
        ([b"a", "b\u00e9"], None),
        ([[b"a"], [b""]], None),
        ([], tf.string),
        (np.arange(6, dtype=np.float32).reshape(2, 3), None),
        (np.array([1, -2], dtype=np.int64), None),
        (np.array([3, 4], dtype=np.int32), None),
        ([1, 2], tf.int32),
        (np.array([True, False]), None),
        (np.float32(2.5), None),
    ],
)
def test_tensor_proto_round_trip(value, dtype):
    # What a client sends (tf.make_tensor_proto) is what the server reads, and
    # what the server answers (typed value fields) is what tf.make_ndarray reads.
    sent = tf.make_tensor_proto(value, dtype=dtype)
    array = tensor_codec.tensor_proto_to_ndarray(sent)
    expected = tf.make_ndarray(sent)
    assert array.shape == expected.shape
    np.testing.assert_array_equal(array, expected)
    proto = tensor_codec.ndarray_to_tensor_proto(array, sent.dtype)
    answered = tf.make_ndarray(proto)
    assert answered.dtype == expected.dtype and answered.shape == expected.shape
    np.testing.assert_array_equal(answered, array)
    assert not proto.tensor_content


def test_tensor_proto_cannot_claim_a_huge_shape():
    proto = tf.make_tensor_proto([b"x"])
    proto.tensor_shape.dim[0].size = 1 << 30
    with pytest.raises(ServingError) as error:
        tensor_codec.tensor_proto_to_ndarray(proto)
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_rest_outputs_named_bytes_are_base64():
    outputs = {
        "image_bytes": np.array([b"\xff\x00"], dtype=object),
        "caption": np.array([b"caf\xc3\xa9"], dtype=object),
        "score": np.array([0.1], dtype=np.float32),
    }
    rows = rest.RestApi._rows(outputs)
    assert rows == [{"image_bytes": {"b64": "/wA="}, "caption": "café", "score": 0.1}]


# ---------------------------------------------------------------------------
# In-process: requests in flight while their version is unloaded or replaced.


class _BlockingLoader:
    """Loads servables whose signature calls wait for `release` inside the model call.

    `entered` counts the calls that reached the model, so a test knows a
    request is in flight before it changes the versions under it.
    """

    def __init__(self):
        self.entered = threading.Semaphore(0)
        self.release = threading.Event()

    def __call__(self, name, version, path):
        from serving.server.servables import Servable

        servable = Servable(name, version, path)
        for signature in servable.signatures.values():
            def blocking(_run=signature.function, **inputs):
                self.entered.release()
                # Bounded, so that a broken test fails instead of hanging.
                self.release.wait(timeout=120)
                return _run(**inputs)

            signature.function = blocking
        return servable


@pytest.mark.parametrize("batching", [False, True], ids=["direct", "batched"])
def test_requests_in_flight_complete_while_versions_are_unloaded_or_removed(tmp_path, batching):
    from serving.server.core import ServingCore
    from serving.server.versions import ModelManager

    base = tmp_path / "lifecycle"
    fx.copy_toy_version("captioner", base, 1)
    loader = _BlockingLoader()
    manager = ModelManager([model_config.ModelConfig("m", str(base))], poll_wait_seconds=0, loader=loader)
    manager.start()
    batcher = None
    if batching:
        batcher = batcher_lib.Batcher(batching_config.BatchingParameters(
            max_batch_size=4, batch_timeout_micros=0, num_batch_threads=2))
    core = ServingCore(manager, batcher)
    results = {}

    def call(key, version=None):
        try:
            response = core.predict(_predict_request("m", {"images": [RED_PNG]}, version=version))
            results[key] = (response.model_spec.version.value,
                            tf.make_ndarray(response.outputs["captions"])[0])
        except ServingError as e:
            results[key] = (e.code, e.message)

    def in_flight(key, version=None):
        thread = threading.Thread(target=call, args=(key, version), daemon=True)
        thread.start()
        assert loader.entered.acquire(timeout=60), f"{key} never reached the model"
        return thread

    try:
        first = in_flight("v1 in flight", 1)
        # Version 2 arrives and is loaded, version 1 is unloaded and its files
        # deleted, all while a request is inside version 1.
        fx.copy_toy_version("captioner", base, 2)
        manager.poll_once()
        shutil.rmtree(base / "1")
        manager.poll_once()
        states = {v: get_model_status_pb2.ModelVersionStatus.State.Name(s)
                  for v, s, _, _ in manager.version_states("m")}
        assert states == {1: "END", 2: "AVAILABLE"}
        call("v1 after unload", 1)
        assert results["v1 after unload"] == (grpc.StatusCode.NOT_FOUND,
                                              "Servable not found for request: Specific(m, 1)")

        # The model leaves the config while a request is inside version 2.
        second = in_flight("latest in flight")
        manager.set_configs([])
        call("after removal")
        assert results["after removal"][0] == grpc.StatusCode.NOT_FOUND

        loader.release.set()
        for thread in (first, second):
            thread.join(timeout=60)
            assert not thread.is_alive(), "an in-flight request hung"
        assert results["v1 in flight"] == (1, b"a dark red image")
        assert results["latest in flight"] == (2, b"a dark red image")
    finally:
        loader.release.set()
        manager.stop()
        if batcher is not None:
            batcher.stop()
