"""Exports a briefly trained captioner and checks it as TF Serving would see it."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from mmkeras.data.caption_pipeline import decode_images, image_bytes
from training import config as config_lib
from training import experiment
from training import named_experiments
from training.tasks import caption as caption_task

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    cfg = config_lib.override(named_experiments.get_experiment("caption_tiny"), ["train.steps=30"])
    model_dir, export_dir = str(root / "run"), str(root / "saved_models")
    os.makedirs(model_dir)
    results = experiment.run(cfg, model_dir, export_dir, tf.distribute.get_strategy(), verbose=0)
    splits, _, synthetic = caption_task.load_splits(cfg.data, cfg.train.seed)
    jpegs = image_bytes(splits["test"][:6], synthetic, image_format="jpeg")
    return results, model_dir, jpegs


def test_run_writes_model_dir(trained):
    results, model_dir, _ = trained
    for name in ("config.json", "vocabulary.txt", "eval_metrics.json", "samples.json", "model.keras", "data_report.json"):
        assert os.path.exists(os.path.join(model_dir, name)), name
    assert os.listdir(os.path.join(model_dir, "logs"))
    assert os.listdir(os.path.join(model_dir, "checkpoints"))
    metrics = json.load(open(os.path.join(model_dir, "eval_metrics.json")))
    for key in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider", "token_accuracy",
                "num_test_images", "train_steps"):
        assert key in metrics, key
    # Beam search (caption.eval_beam) is reported beside greedy decoding.
    for key in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider"):
        assert 0.0 <= metrics[f"beam_{key}"] <= (10.0 if key == "cider" else 1.0), key
    samples = json.load(open(os.path.join(model_dir, "samples.json")))
    assert samples and all(isinstance(s["beam"], str) and "generated" in s for s in samples)
    assert metrics["train_steps"] == 30
    assert metrics["num_test_images"] == 32
    assert results["export_path"].endswith(os.path.join("captioner", "1"))


def test_saved_model_cli_lists_signatures(trained):
    results, _, _ = trained
    out = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "saved_model_cli"), "show", "--all",
         "--dir", results["export_path"]],
        capture_output=True, text=True, check=True,
    ).stdout
    for fragment in ("signature_def['serving_default']", "signature_def['beam_search']",
                     "inputs['images']", "outputs['captions']", "outputs['scores']", "DT_STRING", "DT_FLOAT"):
        assert fragment in out, fragment
    # Only ops TF Serving has: no XLA clusters in the serving graph.
    assert "XlaLaunch" not in out and "_XlaCompile" not in out


FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf
    import tensorflow_text  # registers the TF Text ops the export uses
    path, images_file = sys.argv[1], sys.argv[2]
    images = json.load(open(images_file))
    images = [bytes.fromhex(h) for h in images]
    loaded = tf.saved_model.load(path)
    out = {}
    for name in ("serving_default", "beam_search"):
        result = loaded.signatures[name](images=tf.constant(images))
        out[name] = {
            "captions": [c.decode() for c in result["captions"].numpy().tolist()],
            "scores": result["scores"].numpy().tolist(),
        }
    assert not any(m.startswith(("mmkeras", "keras_hub")) for m in sys.modules), "export needs the library"
    print(json.dumps(out))
    """
)


def serve_in_fresh_process(export_path, jpegs, tmp_path):
    """Both signatures' outputs for `jpegs`, from a process that never imported mmkeras."""
    images_file = tmp_path / "images.json"
    images_file.write_text(json.dumps([b.hex() for b in jpegs]))
    script = tmp_path / "load.py"
    script.write_text(FRESH_PROCESS)
    proc = subprocess.run([sys.executable, str(script), export_path, str(images_file)],
                          capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_export_stores_each_weight_once(trained):
    results, _, _ = trained
    model = results["model"]
    stored = tf.train.list_variables(os.path.join(results["export_path"], "variables", "variables"))
    stored_values = sum(int(np.prod(shape)) for name, shape in stored if not name.startswith("_CHECKPOINTABLE"))
    # Every weight once, not once per Keras wrapper and once per tf.Variable (keras-team/keras#23553).
    assert stored_values == sum(int(np.prod(v.shape)) for v in model.variables)


def test_fresh_process_matches_in_memory_model(trained, tmp_path):
    results, _, jpegs = trained
    model = results["model"]
    served = serve_in_fresh_process(results["export_path"], jpegs, tmp_path)

    pixels = decode_images(tf.constant(jpegs), model.image_size)
    for name, method in (("serving_default", "greedy"), ("beam_search", "beam")):
        expected = model.generate(pixels, method=method)
        assert served[name]["captions"] == model.caption(pixels, method=method)
        np.testing.assert_allclose(served[name]["scores"], expected["scores"].numpy(), atol=1e-5)


def test_exported_decoding_options_match_in_memory_model(trained, tmp_path):
    from serving.export import export_captioner

    results, _, jpegs = trained
    model = results["model"]
    options = {"no_repeat_ngram_size": 1, "length_penalty": 2.0}
    path = export_captioner(model, str(tmp_path / "saved_models"), num_beams=3, **options)
    served = serve_in_fresh_process(path, jpegs, tmp_path)
    pixels = decode_images(tf.constant(jpegs), model.image_size)
    # The briefly trained model does repeat words ("a small a a ...") by default.
    assert any(len(c.split()) > len(set(c.split())) for c in model.caption(pixels, method="beam"))
    for name, method, kwargs in (
        ("serving_default", "greedy", {"no_repeat_ngram_size": 1}),  # length_penalty: beam only
        ("beam_search", "beam", options),
    ):
        expected = model.generate(pixels, method=method, **kwargs)
        assert served[name]["captions"] == model.caption(pixels, method=method, **kwargs)
        np.testing.assert_allclose(served[name]["scores"], expected["scores"].numpy(), atol=1e-5)
        for caption in served[name]["captions"]:  # word vocabulary: a token is a word
            assert len(caption.split()) == len(set(caption.split())), (name, caption)
    assert any(served["beam_search"]["captions"]), "length_penalty=2 favours non-empty captions"


def test_export_rejects_non_image_bytes_naming_the_input(trained):
    results, _, jpegs = trained
    loaded = tf.saved_model.load(results["export_path"])
    serve = loaded.signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="images"):
        serve(images=tf.constant([jpegs[0], b"this is not an image"]))
    # The same loaded model keeps answering good requests afterwards.
    assert serve(images=tf.constant(jpegs[:1]))["captions"].shape == (1,)


def test_versions_are_atomic_and_increment(trained, tmp_path):
    from serving.export import export_captioner

    results, model_dir, _ = trained
    model = results["model"]
    first = export_captioner(model, str(tmp_path), version=None)
    second = export_captioner(model, str(tmp_path), version=None)
    assert [os.path.basename(first), os.path.basename(second)] == ["1", "2"]
    assert sorted(os.listdir(tmp_path / "captioner")) == ["1", "2"], "no temporary dirs left behind"
    with pytest.raises(FileExistsError):
        export_captioner(model, str(tmp_path), version=2)


def test_saved_model_cli_run_on_export(trained, tmp_path):
    results, _, jpegs = trained
    np.save(tmp_path / "images.npy", np.array(jpegs[:2], dtype=object), allow_pickle=True)
    # `saved_model_cli run` must see the TF Text ops registered, as any loader must.
    launcher = ("import sys, tensorflow_text; from tensorflow.python.tools import saved_model_cli; "
                "sys.argv[0] = 'saved_model_cli'; saved_model_cli.main()")
    proc = subprocess.run(
        [sys.executable, "-c", launcher, "run", "--dir",
         results["export_path"], "--tag_set", "serve", "--signature_def", "serving_default",
         "--inputs", f"images={tmp_path / 'images.npy'}"],
        capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "captions" in proc.stdout and "scores" in proc.stdout


def test_export_cli_and_models_config(trained, tmp_path):
    from serving import model_config

    _, model_dir, _ = trained
    export_dir = tmp_path / "saved_models"
    proc = subprocess.run(
        [sys.executable, "-m", "serving.export", f"--model_dir={model_dir}", f"--export_dir={export_dir}",
         "--name=my_captioner", "--version=7"],
        capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (export_dir / "my_captioner" / "7" / "saved_model.pb").exists()
    assert (export_dir / "my_captioner" / "7" / "assets" / "vocabulary.txt").exists()
    config = model_config.read_models_config(str(export_dir / "models.config"))
    names = {c.name: c.base_path for c in config.model_config_list.config}
    assert names == {"my_captioner": "/models/my_captioner"}
    assert (export_dir / "batching_parameters.pbtxt").exists()
    again = subprocess.run(
        [sys.executable, "-m", "serving.export", f"--model_dir={model_dir}", f"--export_dir={export_dir}",
         "--name=my_captioner", "--version=7"],
        capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert again.returncode == 1 and "already exists" in again.stderr


def test_served_over_grpc_and_rest_like_in_memory(trained, tmp_path):
    from serving.client import PredictionClient
    from tests.serving_fixtures import ServerProcess

    results, _, jpegs = trained
    model = results["model"]
    export_dir = os.path.dirname(os.path.dirname(results["export_path"]))
    server = ServerProcess([
        "--port=0", "--rest_api_port=-1", f"--model_config_file={os.path.join(export_dir, 'models.config')}",
        "--enable_batching", f"--batching_parameters_file={os.path.join(export_dir, 'batching_parameters.pbtxt')}",
    ]).start()
    try:
        pixels = decode_images(tf.constant(jpegs), model.image_size)
        expected = model.caption(pixels)
        expected_beam = model.caption(pixels, method="beam")
        with PredictionClient(server.grpc_address) as client:
            got = client.caption("captioner", jpegs)
            assert [c.caption for c in got] == expected
            beam = client.caption("captioner", jpegs, signature="beam_search")
            assert [c.caption for c in beam] == expected_beam
            with pytest.raises(Exception, match="images"):
                client.caption("captioner", [b"not an image"])
        with PredictionClient(server.rest_url, rest=True) as client:
            assert [c.caption for c in client.caption("captioner", jpegs)] == expected
        assert server.alive()
    finally:
        server.stop()


def test_exported_captioner_takes_any_image_shape_and_refuses_bombs(trained):
    from serving.export import DEFAULT_MAX_PIXELS
    from serving.export import read_export_metadata
    from tests.test_image_header import jpeg_declaring, odd_images, png_bomb

    results, _, jpegs = trained
    model = results["model"]
    assert read_export_metadata(results["export_path"]) == {"max_pixels": DEFAULT_MAX_PIXELS}
    loaded = tf.saved_model.load(results["export_path"])
    # Greyscale and RGBA PNGs, a 1x1 PNG and a 37x500 JPEG (issue 8).
    images = odd_images()
    pixels = decode_images(tf.constant(images), model.image_size)
    for name, method in (("serving_default", "greedy"), ("beam_search", "beam")):
        serve = loaded.signatures[name]
        assert [c.decode() for c in serve(images=tf.constant(images))["captions"].numpy()] == (
            model.caption(pixels, method=method)), name
        for bomb, size in ((png_bomb(), "16000x16000"), (jpeg_declaring(60000, 50000), "60000x50000")):
            with pytest.raises(tf.errors.InvalidArgumentError, match=rf"Input images\[1\] declares {size} pixels"):
                serve(images=tf.constant([jpegs[0], bomb]))
        assert serve(images=tf.constant(jpegs[:1]))["captions"].shape == (1,)
