"""`serving.client` against an in-process `serving.server.ModelServer`."""

import ast
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from serving import client as client_lib
from serving import client_cli
from serving import model_config
from serving import server
from serving import toy_models
from tests import serving_fixtures as fx

RED_PNG = toy_models.make_image_bytes((210, 40, 30), image_format="png", seed=1)
BLUE_JPEG = toy_models.make_image_bytes((30, 40, 220), image_format="jpeg", seed=2)


@pytest.fixture(scope="module")
def model_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("client_models")
    configs = []
    for name in ("captioner", "classifier", "dual_encoder"):
        fx.copy_toy_version(name, root / name, 1)
        configs.append(model_config.ModelConfig(name, str(root / name)))
    instance = server.ModelServer(configs, grpc_port=0, rest_port=-1, poll_wait_seconds=0)
    instance.start()
    yield instance
    instance.stop()


@pytest.fixture(scope="module", params=["grpc", "rest"])
def client(request, model_server):
    if request.param == "grpc":
        address = f"127.0.0.1:{model_server.grpc_port}"
    else:
        address = f"127.0.0.1:{model_server.rest_port}"
    with client_lib.PredictionClient(address, rest=request.param == "rest") as instance:
        yield instance


@pytest.fixture(scope="module")
def in_process():
    import tensorflow_text  # noqa: F401 - the toy classifier uses TF Text ops.

    return {
        kind: tf.saved_model.load(fx.toy_version_dir(kind))
        for kind in ("captioner", "classifier", "dual_encoder")
    }


@pytest.mark.parametrize("signature", ["serving_default", "beam_search"])
def test_caption(client, in_process, signature):
    results = client.caption("captioner", [RED_PNG, BLUE_JPEG], signature=signature)
    expected = in_process["captioner"].signatures[signature](images=tf.constant([RED_PNG, BLUE_JPEG]))
    assert [r.caption for r in results] == [c.decode() for c in expected["captions"].numpy()]
    np.testing.assert_allclose([r.score for r in results], expected["scores"].numpy(), rtol=1e-6)
    assert all(isinstance(r.score, float) for r in results)


def test_classify(client, in_process):
    results = client.classify("classifier", [RED_PNG, BLUE_JPEG], ["what colour is this"])
    expected = in_process["classifier"].signatures["serving_default"](
        images=tf.constant([RED_PNG, BLUE_JPEG]),
        texts=tf.constant(["what colour is this"] * 2),
    )
    assert [r.label for r in results] == ["red", "blue"]
    assert [r.class_id for r in results] == expected["class_ids"].numpy().tolist()
    np.testing.assert_allclose(
        np.stack([r.probabilities for r in results]), expected["probabilities"].numpy(), rtol=1e-6
    )
    with pytest.raises(ValueError):
        client.classify("classifier", [RED_PNG, BLUE_JPEG, RED_PNG], ["a", "b"])


def test_classify_examples(client):
    [red, blue] = client.classify_examples("classifier", [RED_PNG, BLUE_JPEG], ["q", "q"])
    assert red[0][0] == "red" and blue[0][0] == "blue"
    assert len(red) == len(toy_models.TOY_CLASS_NAMES)
    assert red[0][1] >= red[1][1] >= red[2][1]


def test_embeddings(client, in_process):
    model = in_process["dual_encoder"]
    images = client.embed_images("dual_encoder", [RED_PNG, BLUE_JPEG])
    texts = client.embed_texts("dual_encoder", ["a red image", "blue"])
    assert images.dtype == np.float32 and images.shape == (2, 8)
    np.testing.assert_allclose(
        images, model.signatures["embed_images"](images=tf.constant([RED_PNG, BLUE_JPEG]))["embeddings"], rtol=1e-6
    )
    np.testing.assert_allclose(
        texts, model.signatures["embed_texts"](texts=tf.constant(["a red image", "blue"]))["embeddings"], rtol=1e-6
    )


def test_metadata_status_and_signatures(client):
    metadata = client.metadata("classifier")
    assert metadata["model_spec"]["name"] == "classifier"
    assert metadata["model_spec"]["version"] == "1"
    signature_defs = metadata["metadata"]["signature_def"]["signature_def"]
    assert signature_defs["classification"]["method_name"] == "tensorflow/serving/classify"
    assert client.signatures("dual_encoder") == {
        "embed_images": {"inputs": {"images": "DT_STRING"}, "outputs": {"embeddings": "DT_FLOAT"}},
        "embed_texts": {"inputs": {"texts": "DT_STRING"}, "outputs": {"embeddings": "DT_FLOAT"}},
    }
    assert client.status("captioner") == [
        {"version": 1, "state": "AVAILABLE", "error_code": "OK", "error_message": ""}
    ]


def test_errors_raise_serving_client_error(client):
    with pytest.raises(client_lib.ServingClientError) as error:
        client.caption("captioner", [b"not an image"])
    assert error.value.code in ("INVALID_ARGUMENT", None)
    assert error.value.http_status in (400, None)
    with pytest.raises(client_lib.ServingClientError) as error:
        client.caption("no_such_model", [RED_PNG])
    assert "no_such_model" in error.value.message


def test_predict_generic_with_version_and_output_filter(client):
    outputs = client.predict(
        "captioner", {"images": [RED_PNG]}, version=1, output_filter=["captions"]
    )
    assert list(outputs) == ["captions"]
    assert outputs["captions"].tolist() == [b"a dark red image"]


def test_predict_takes_lists_arrays_and_tensor_protos(client):
    # Inputs go through tf.make_tensor_proto unless they already are TensorProtos.
    by_list = client.predict("captioner", {"images": [RED_PNG]})
    by_proto = client.predict("captioner", {"images": tf.make_tensor_proto([RED_PNG])})
    by_array = client.predict("captioner", {"images": np.array([RED_PNG], dtype=object)})
    for outputs in (by_proto, by_array):
        assert outputs["captions"].tolist() == by_list["captions"].tolist()
        np.testing.assert_array_equal(outputs["scores"], by_list["scores"])
    assert by_list["scores"].dtype == np.float32
    # An empty batch is still a DT_STRING tensor, and gets an empty answer.
    assert client.caption("captioner", []) == []


def _imported_modules(path):
    with open(path) as f:
        tree = ast.parse(f.read())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module == "serving":
            modules.update(f"serving.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            modules.add(node.module)
    return modules


def test_client_imports_neither_mmkeras_nor_training_nor_the_server():
    allowed_roots = {"grpc", "numpy", "google", "tensorflow", "tensorflow_serving"}
    for name in ("client.py", "client_cli.py"):
        for module in _imported_modules(os.path.join(fx.REPO_ROOT, "serving", name)):
            root = module.split(".")[0]
            if root == "serving":
                # The two import each other (`python -m serving.client` runs the
                # command line) and nothing else of serving/.
                assert (name, module) in (
                    ("client.py", "serving.client_cli"),
                    ("client_cli.py", "serving.client"),
                ), module
            elif root not in allowed_roots:
                assert root in sys.stdlib_module_names, module
    # Importing either pulls in no mmkeras, no training and no server code.
    check = (
        "import sys, serving.client, serving.client_cli; "
        "assert not [m for m in sys.modules if m.split('.')[0] in ('mmkeras', 'training')]; "
        "assert 'serving.server' not in sys.modules and 'serving.export' not in sys.modules"
    )
    subprocess.run(
        [sys.executable, "-c", check], cwd=fx.REPO_ROOT, check=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )


def test_command_line(model_server, tmp_path):
    red, blue = tmp_path / "red.png", tmp_path / "blue.jpg"
    red.write_bytes(RED_PNG)
    blue.write_bytes(BLUE_JPEG)
    result = subprocess.run(
        [
            sys.executable, "-m", "serving.client",
            f"--server=127.0.0.1:{model_server.grpc_port}",
            "--model=captioner", f"--image={red}", f"--image={blue}",
        ],
        cwd=fx.REPO_ROOT, capture_output=True, text=True, check=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    lines = result.stdout.strip().splitlines()
    assert [line.split("\t")[:2] for line in lines] == [
        [str(red), "a dark red image"],
        [str(blue), "a dark blue image"],
    ]
    assert 0.0 < float(lines[0].split("\t")[2]) < 1.0


def test_command_line_rest_and_signature(model_server, tmp_path, capsys):
    red = tmp_path / "red.png"
    red.write_bytes(RED_PNG)
    args = [
        f"--server=127.0.0.1:{model_server.rest_port}", "--rest", "--model=captioner",
        "--signature=beam_search", f"--image={red}",
    ]
    assert client_cli.main(args) == 0
    assert capsys.readouterr().out.split("\t")[:2] == [str(red), "a dark red picture"]


def test_command_line_names_a_missing_image_file(model_server, tmp_path, capsys):
    missing = tmp_path / "nothere.jpg"
    with pytest.raises(SystemExit) as exit_info:
        client_cli.main([f"--server=127.0.0.1:{model_server.grpc_port}", "--model=captioner", f"--image={missing}"])
    assert exit_info.value.code == 2
    assert f"--image={missing}: No such file or directory" in capsys.readouterr().err


def test_command_line_classifier_and_embeddings(model_server, tmp_path, capsys):
    red = tmp_path / "red.png"
    red.write_bytes(RED_PNG)
    server_arg = f"--server=127.0.0.1:{model_server.grpc_port}"
    assert client_cli.main([server_arg, "--model=classifier", f"--image={red}", "--text=colour?"]) == 0
    assert capsys.readouterr().out.split("\t")[:3] == [str(red), "red", "0"]
    assert client_cli.main([server_arg, "--model=dual_encoder", f"--image={red}", "--text=a b"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(red), "a b"]
    assert len(lines[0].split("\t")[1].split()) == 8
    assert client_cli.main([server_arg, "--model=nope", f"--image={red}"]) == 1
