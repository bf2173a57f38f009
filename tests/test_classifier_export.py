"""Trains the tiny classifier once and checks its export as TF Serving would see it."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the TF Text ops the export uses)

from mmkeras.data.caption_pipeline import image_bytes
from training import config as config_lib
from training import experiment
from training import named_experiments

pytestmark = pytest.mark.slow

QUIET_ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def _run_classifier(root, overrides):
    cfg = config_lib.override(named_experiments.get_experiment("classify_tiny"), overrides)
    model_dir, export_dir = str(root / "run"), str(root / "saved_models")
    results = experiment.run(cfg, model_dir, export_dir, tf.distribute.get_strategy(), verbose=0)
    task = results["task"]
    records = task.splits["test"][:4]
    return {
        "results": results,
        "model": results["model"],
        "model_dir": model_dir,
        "export_dir": export_dir,
        "jpegs": image_bytes(records, task.data.synthetic, image_format="jpeg"),
        "pngs": image_bytes(records, task.data.synthetic, image_format="png"),
        "texts": [r.text for r in records],
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return _run_classifier(tmp_path_factory.mktemp("classifier"), ["train.steps=30"])


@pytest.fixture(scope="module")
def text_preset(tmp_path_factory):
    """A classifier whose text tower is a keras-hub BERT preset (random weights).

    The preset folder is deleted after training: neither the .keras file nor
    the SavedModel may need it afterwards.
    """
    import shutil

    import keras_hub

    root = tmp_path_factory.mktemp("text_preset")
    words = "what which is there a the shape color colour of in left right above below circle square triangle"
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "?"] + sorted(set(words.split()))
    preset_dir = root / "bert_preset"
    keras_hub.models.BertBackbone(vocabulary_size=len(vocabulary), num_layers=1, num_heads=2, hidden_dim=16,
                                  intermediate_dim=32, max_sequence_length=16).save_to_preset(str(preset_dir))
    keras_hub.models.BertTokenizer(vocabulary=vocabulary, lowercase=True).save_to_preset(str(preset_dir))
    run = _run_classifier(root / "run_root", [
        "train.steps=4", "classify.ablation=false", f"model.text_encoder.backbone_preset={preset_dir}",
    ])
    shutil.rmtree(preset_dir)
    run["preset_dir"] = preset_dir
    return run


@pytest.fixture(scope="module")
def multi_label(tmp_path_factory):
    return _run_classifier(
        tmp_path_factory.mktemp("multi_label"),
        ["train.steps=10", "data.synthetic_multi_label=true", "classify.ablation=false"],
    )


def _expected(model, images, texts):
    """What the in-memory model says: labels, class ids, probabilities."""
    probabilities = model.probabilities_from_raw(tf.constant(images), tf.constant(texts))
    labels, classify_probabilities = model.classify(tf.constant(images), tf.constant(texts))
    np.testing.assert_allclose(classify_probabilities, probabilities.numpy(), atol=1e-6)
    return labels, np.asarray(model.decisions(probabilities)), probabilities.numpy()


def make_example(image, text):
    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
        "text": tf.train.Feature(bytes_list=tf.train.BytesList(value=[text.encode("utf-8")])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def test_run_writes_model_dir(trained):
    model_dir = trained["model_dir"]
    for name in ("config.json", "labels.txt", "vocabulary.txt", "eval_metrics.json",
                 "classification_report.txt", "confusion_matrix.png", "predictions.jsonl", "model.keras"):
        assert os.path.exists(os.path.join(model_dir, name)), name
    labels = open(os.path.join(model_dir, "labels.txt")).read().split("\n")[:-1]
    assert labels == trained["model"].label_names
    metrics = json.load(open(os.path.join(model_dir, "eval_metrics.json")))
    for key in ("accuracy", "macro_f1", "weighted_f1", "num_test_examples", "train_steps",
                "accuracy_image_only", "accuracy_text_only"):
        assert key in metrics, key
    for label in labels:
        for key in ("precision", "recall", "f1", "support"):
            assert f"{key}/{label}" in metrics, f"{key}/{label}"
    assert metrics["train_steps"] == 30
    # Every synthetic test image comes with several questions.
    num_test = len(trained["results"]["task"].splits["test"])
    assert metrics["num_test_examples"] == num_test > 32
    assert 0.0 <= metrics["accuracy"] <= 1.0
    report = open(os.path.join(model_dir, "classification_report.txt")).read()
    assert all(label in report for label in labels)

    png = open(os.path.join(model_dir, "confusion_matrix.png"), "rb").read()
    assert len(png) > 2000
    pixels = tf.io.decode_png(png).numpy()
    assert min(pixels.shape[:2]) >= 100 and pixels.std() > 0, "a blank plot"

    rows = [json.loads(line) for line in open(os.path.join(model_dir, "predictions.jsonl"))]
    assert len(rows) == num_test
    assert set(rows[0]) >= {"image", "text", "labels", "predicted", "confidence", "correct"}
    assert trained["results"]["export_path"].endswith(os.path.join("classifier", "1"))


@pytest.mark.parametrize("run", ["trained", "multi_label"])
def test_test_accuracy_comes_with_its_bootstrap_interval(run, request):
    # Single-label: right class; multi-label: the whole label set right (the subset accuracy).
    metrics = json.load(open(os.path.join(request.getfixturevalue(run)["model_dir"], "eval_metrics.json")))
    assert 0.0 <= metrics["accuracy_ci_low"] <= metrics["accuracy"] <= metrics["accuracy_ci_high"] <= 1.0
    assert metrics["accuracy_ci_high"] - metrics["accuracy_ci_low"] < 0.5
    # Resampled means centre on the reported accuracy: the interval is of the same per-example rule.
    assert (metrics["accuracy_ci_low"] + metrics["accuracy_ci_high"]) / 2 == pytest.approx(metrics["accuracy"], abs=0.03)


def test_saved_model_cli_lists_signatures(trained):
    out = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "saved_model_cli"), "show", "--all",
         "--dir", trained["results"]["export_path"]],
        capture_output=True, text=True, check=True, env=QUIET_ENV,
    ).stdout
    default, _, rest = out.partition("signature_def['serving_default']")
    assert rest, "no serving_default signature"
    default_block = rest.split("signature_def[")[0]
    for fragment in ("inputs['images']", "inputs['texts']", "outputs['labels']", "outputs['class_ids']",
                     "outputs['probabilities']", "DT_STRING", "DT_INT64", "DT_FLOAT",
                     "Method name is: tensorflow/serving/predict"):
        assert fragment in default_block, fragment
    classification_block = out.partition("signature_def['classification']")[2].split("signature_def[")[0]
    for fragment in ("inputs['inputs']", "outputs['classes']", "outputs['scores']",
                     "Method name is: tensorflow/serving/classify"):
        assert fragment in classification_block, fragment
    # Only ops TF Serving has: no XLA clusters in the serving graph.
    assert "XlaLaunch" not in out and "_XlaCompile" not in out


FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf
    import tensorflow_text  # registers the TF Text ops the export uses


    def serve(path, inputs_file):
        inputs = json.load(open(inputs_file))
        loaded = tf.saved_model.load(path)
        out = {}
        texts = tf.constant(inputs["texts"])
        for kind in ("jpeg", "png"):
            images = tf.constant([bytes.fromhex(h) for h in inputs[kind]])
            result = loaded.signatures["serving_default"](images=images, texts=texts)
            out[kind] = {
                "labels": [c.decode() for c in result["labels"].numpy().tolist()],
                "class_ids": result["class_ids"].numpy().tolist(),
                "class_ids_dtype": result["class_ids"].dtype.name,
                "probabilities": result["probabilities"].numpy().tolist(),
            }
        examples = tf.constant([bytes.fromhex(h) for h in inputs["examples"]])
        result = loaded.signatures["classification"](inputs=examples)
        out["classification"] = {
            "classes": [[c.decode() for c in row] for row in result["classes"].numpy().tolist()],
            "scores": result["scores"].numpy().tolist(),
        }
        return out


    # Arguments: export path, inputs file, export path, inputs file, ...
    outs = [serve(path, inputs) for path, inputs in zip(sys.argv[1::2], sys.argv[2::2])]
    assert not any(m.startswith(("mmkeras", "keras_hub")) for m in sys.modules), "export needs the library"
    print(json.dumps(outs))
    """
)


@pytest.fixture(scope="module")
def served_fresh(trained, text_preset, tmp_path_factory):
    """`{"trained": ..., "text_preset": ...}`: what each export answers in a fresh process.

    One process loads both exports: each process pays TensorFlow's start.
    """
    root = tmp_path_factory.mktemp("fresh_process")
    runs = {"trained": trained, "text_preset": text_preset}
    arguments = []
    for name, run in runs.items():
        texts = run["texts"]
        inputs = {
            "jpeg": [b.hex() for b in run["jpegs"]],
            "png": [b.hex() for b in run["pngs"]],
            "texts": texts,
            "examples": [make_example(i, t).hex() for i, t in zip(run["pngs"], texts)],
        }
        inputs_file = root / f"{name}_inputs.json"
        inputs_file.write_text(json.dumps(inputs))
        arguments += [run["results"]["export_path"], str(inputs_file)]
    script = root / "load.py"
    script.write_text(FRESH_PROCESS)
    proc = subprocess.run([sys.executable, str(script), *arguments], capture_output=True, text=True, env=QUIET_ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(zip(runs, json.loads(proc.stdout.strip().splitlines()[-1])))


def test_fresh_process_matches_in_memory_model(trained, served_fresh):
    _assert_served_matches(trained, served_fresh["trained"])


def test_text_preset_classifier_exports_its_wordpiece_tokenizer_without_the_preset(text_preset, served_fresh):
    # A keras-hub BERT preset (random weights) as the text tower: its own
    # WordPiece tokenizer runs inside the export, and neither the .keras file
    # nor the SavedModel needs the preset folder afterwards.
    import keras
    import keras_hub

    run = text_preset
    assert isinstance(run["model"].text_preprocessor.tokenizer, keras_hub.models.BertTokenizer)
    assert not run["preset_dir"].exists()
    _assert_served_matches(run, served_fresh["text_preset"])
    restored = keras.saving.load_model(os.path.join(run["model_dir"], "model.keras"))
    images, texts = tf.constant(run["pngs"]), tf.constant(run["texts"])
    np.testing.assert_allclose(restored.probabilities_from_raw(images, texts).numpy(),
                               run["model"].probabilities_from_raw(images, texts).numpy(), atol=1e-5)


def _assert_served_matches(trained, served):
    """The fresh process's answers (`served_fresh`) equal the in-memory model's."""
    model, texts = trained["model"], trained["texts"]
    for kind, images in (("jpeg", trained["jpegs"]), ("png", trained["pngs"])):
        labels, class_ids, probabilities = _expected(model, images, texts)
        assert served[kind]["labels"] == labels, kind
        assert served[kind]["class_ids"] == class_ids.tolist(), kind
        assert served[kind]["class_ids_dtype"] == "int64"
        np.testing.assert_allclose(served[kind]["probabilities"], probabilities, atol=1e-5)
        assert np.asarray(served[kind]["probabilities"]).shape == (len(texts), model.num_classes)

    # The Classify API: every class with its score, best first.
    _, class_ids, probabilities = _expected(model, trained["pngs"], texts)
    classification = served["classification"]
    assert [row[0] for row in classification["classes"]] == [model.label_names[i] for i in class_ids]
    np.testing.assert_allclose([row[0] for row in classification["scores"]], probabilities.max(axis=-1), atol=1e-5)
    np.testing.assert_allclose(classification["scores"], -np.sort(-probabilities, axis=-1), atol=1e-5)


def test_export_rejects_bad_input_naming_it(trained):
    loaded = tf.saved_model.load(trained["results"]["export_path"])
    serve = loaded.signatures["serving_default"]
    jpegs, texts = trained["jpegs"], trained["texts"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="images"):
        serve(images=tf.constant([jpegs[0], b"this is not an image"]), texts=tf.constant(texts[:2]))
    for blank in ("", "   \t"):
        with pytest.raises(tf.errors.InvalidArgumentError, match="texts"):
            serve(images=tf.constant(jpegs[:2]), texts=tf.constant([texts[0], blank]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="batch size"):
        serve(images=tf.constant(jpegs[:2]), texts=tf.constant(texts[:1]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="images"):
        loaded.signatures["classification"](inputs=tf.constant([make_example(b"not an image", texts[0])]))
    # The same loaded model keeps answering good requests afterwards.
    out = serve(images=tf.constant(jpegs[:1]), texts=tf.constant(texts[:1]))
    labels, _, probabilities = _expected(trained["model"], jpegs[:1], texts[:1])
    assert [out["labels"].numpy()[0].decode()] == labels
    np.testing.assert_allclose(out["probabilities"].numpy(), probabilities, atol=1e-5)


def test_export_cli_exports_a_classifier(trained, tmp_path):
    export_dir = tmp_path / "saved_models"
    proc = subprocess.run(
        [sys.executable, "-m", "serving.export", f"--model_dir={trained['model_dir']}",
         f"--export_dir={export_dir}"],
        capture_output=True, text=True, env=QUIET_ENV,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    version_dir = export_dir / "classifier" / "1"
    assert (version_dir / "saved_model.pb").exists()
    for asset in ("vocabulary.txt", "labels.txt"):
        assert (version_dir / "assets" / asset).exists(), asset
    assert sorted(os.listdir(export_dir / "classifier")) == ["1"]
    loaded = tf.saved_model.load(str(version_dir))
    assert set(loaded.signatures) == {"serving_default", "classification"}
    out = loaded.signatures["serving_default"](images=tf.constant(trained["pngs"]),
                                               texts=tf.constant(trained["texts"]))
    labels, _, probabilities = _expected(trained["model"], trained["pngs"], trained["texts"])
    assert [label.decode() for label in out["labels"].numpy()] == labels
    np.testing.assert_allclose(out["probabilities"].numpy(), probabilities, atol=1e-5)


def test_served_over_grpc_and_rest_like_in_memory(trained):
    from serving.client import PredictionClient
    from serving.client import ServingClientError
    from tests.serving_fixtures import ServerProcess

    export_dir = trained["export_dir"]
    server = ServerProcess([
        "--port=0", "--rest_api_port=-1", f"--model_config_file={os.path.join(export_dir, 'models.config')}",
        "--enable_batching", f"--batching_parameters_file={os.path.join(export_dir, 'batching_parameters.pbtxt')}",
    ]).start()
    try:
        images = trained["jpegs"][:2] + trained["pngs"][2:]
        texts = trained["texts"]
        labels, class_ids, probabilities = _expected(trained["model"], images, texts)
        for address, rest in ((server.grpc_address, False), (server.rest_url, True)):
            transport = "REST" if rest else "gRPC"
            with PredictionClient(address, rest=rest) as client:
                got = client.classify("classifier", images, texts)
                assert [g.label for g in got] == labels, transport
                assert [g.class_id for g in got] == class_ids.tolist(), transport
                np.testing.assert_allclose([g.probabilities for g in got], probabilities, atol=1e-5)

                top = client.classify_examples("classifier", images, texts)
                assert [row[0][0] for row in top] == labels, transport
                np.testing.assert_allclose([row[0][1] for row in top], probabilities.max(axis=-1), atol=1e-5)

                with pytest.raises(ServingClientError) as error:
                    client.classify("classifier", [images[0], b"not an image"], texts[:2])
                if rest:
                    assert error.value.http_status == 400
                else:
                    assert error.value.code == "INVALID_ARGUMENT"
                assert "images" in error.value.message
                # The server keeps serving good requests.
                assert [g.label for g in client.classify("classifier", images[:1], texts[:1])] == labels[:1]
        assert server.alive()
    finally:
        server.stop()


def test_multi_label_export_joins_labels_over_thresholds(multi_label):
    model = multi_label["model"]
    assert model.multi_label
    thresholds = model.thresholds.numpy()
    loaded = tf.saved_model.load(multi_label["results"]["export_path"])
    images, texts = multi_label["pngs"], multi_label["texts"]
    out = loaded.signatures["serving_default"](images=tf.constant(images), texts=tf.constant(texts))

    probabilities = model.probabilities_from_raw(tf.constant(images), tf.constant(texts)).numpy()
    decisions = np.asarray(model.decisions(probabilities))
    np.testing.assert_allclose(out["probabilities"].numpy(), probabilities, atol=1e-5)
    assert out["class_ids"].dtype == tf.int64
    assert out["class_ids"].shape == (len(texts), model.num_classes)
    np.testing.assert_array_equal(out["class_ids"].numpy(), decisions)
    np.testing.assert_array_equal(decisions, (probabilities > thresholds).astype(np.int64))
    expected_labels = ["|".join(n for n, d in zip(model.label_names, row) if d) for row in decisions]
    assert [label.decode() for label in out["labels"].numpy()] == expected_labels
    assert decisions.any(), "thresholds chose no label at all: the check would be vacuous"
    labels, _ = model.classify(tf.constant(images), tf.constant(texts))
    assert ["|".join(row) for row in labels] == expected_labels

    # The client reads the [batch, classes] decisions of a multi-label model.
    from serving.client import PredictionClient
    from tests.serving_fixtures import ServerProcess

    base_path = os.path.dirname(multi_label["results"]["export_path"])
    with ServerProcess(["--port=0", "--rest_api_port=-1", "--model_name=classifier",
                        f"--model_base_path={base_path}"]) as server:
        for address, rest in ((server.grpc_address, False), (server.rest_url, True)):
            with PredictionClient(address, rest=rest) as client:
                got = client.classify("classifier", images, texts)
            assert [g.label for g in got] == expected_labels
            np.testing.assert_array_equal([g.class_id for g in got], decisions)
            np.testing.assert_allclose([g.probabilities for g in got], probabilities, atol=1e-5)
