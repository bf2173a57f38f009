"""`--task=contrastive` end to end: a tiny run's metrics and files, its export reloaded
in a fresh process, the search CLI and its index, and transfer of the towers
(`--init_from`, `--lora_rank`) into other tasks."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from mmkeras.data.synthetic_captions import SyntheticCaptions
from mmkeras.data.synthetic_captions import encode_png
from tests.training_fixtures import REPO
from tests.training_fixtures import train_command
from tests.training_fixtures import train_env
from training import search_index
from training import transfer

pytestmark = pytest.mark.slow


def run(command, timeout=900):
    return subprocess.run(command, cwd=REPO, env=train_env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def contrastive_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("contrastive")
    model_dir, export_dir = root / "run", root / "export"
    out = run(train_command(model_dir, f"--export_dir={export_dir}", "--set=eval.max_images=12",
                            "--set=contrastive.num_retrieval_samples=3", experiment="contrastive_tiny"))
    assert out.returncode == 0, out.stderr[-3000:]
    return model_dir, export_dir


def test_run_reports_retrieval_and_zero_shot_metrics(contrastive_run):
    model_dir, _ = contrastive_run
    metrics = json.loads((model_dir / "eval_metrics.json").read_text())
    for direction in ("image_to_text", "text_to_image"):
        for k in (1, 5, 10):
            name = f"{direction}_recall@{k}"
            assert 0.0 <= metrics[name + "_ci_low"] <= metrics[name] <= metrics[name + "_ci_high"] <= 1.0
        assert metrics[f"{direction}_recall@1"] <= metrics[f"{direction}_recall@5"] <= metrics[
            f"{direction}_recall@10"]
        assert 1.0 <= metrics[f"{direction}_median_rank"] <= 36
    assert metrics["num_test_images"] == 12 and metrics["num_test_texts"] == 36
    assert 1.0 <= metrics["logit_scale"] <= 100.0
    for name in ("synthetic_shape", "synthetic_color", "easy_vqa_shape", "easy_vqa_color"):
        assert 0.0 <= metrics[f"zero_shot_{name}_accuracy"] <= 1.0
    zero_shot = json.loads((model_dir / "zero_shot.json").read_text())
    assert zero_shot["easy_vqa_color"]["num_images"] == 20
    assert zero_shot["synthetic_shape"]["num_templates"] == 16
    samples = json.loads((model_dir / "retrieval_samples.json").read_text())
    assert len(samples) == 3
    for sample in samples:
        assert len(sample["top_images"]) == 5 and len(sample["scores"]) == 5
        assert sample["scores"] == sorted(sample["scores"], reverse=True)
        for image, correct in zip(sample["top_images"], sample["correct"]):
            if image == sample["correct_image"]:
                assert correct


FRESH_PROCESS = """
import json, sys
import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401  (ops of the in-graph tokenizer)
loaded = tf.saved_model.load(sys.argv[1])
images = [open(p, "rb").read() for p in sys.argv[2].split(",")]
texts = sys.argv[3].split("|")
out = {
    "signatures": sorted(loaded.signatures),
    "images": loaded.signatures["embed_images"](images=tf.constant(images))["embeddings"].numpy().tolist(),
    "texts": loaded.signatures["embed_texts"](texts=tf.constant(texts))["embeddings"].numpy().tolist(),
}
print(json.dumps(out))
"""


def test_export_in_a_fresh_process_embeds_like_the_trained_model(contrastive_run, tmp_path):
    model_dir, export_dir = contrastive_run
    data = SyntheticCaptions(seed=0, image_size=48, num_train=3)
    paths = []
    for i in range(3):
        path = tmp_path / f"{i}.png"
        path.write_bytes(encode_png(data.render("train", i)[0]))
        paths.append(str(path))
    texts = ["a small red circle", "a large blue square left of a small green cross", "there is a cyan diamond"]
    out = run([sys.executable, "-c", FRESH_PROCESS, str(export_dir / "dual_encoder" / "1"), ",".join(paths),
               "|".join(texts)])
    assert out.returncode == 0, out.stderr[-3000:]
    served = json.loads(out.stdout.strip().splitlines()[-1])
    # Keras' export makes the first endpoint (embed_images) the default too.
    assert served["signatures"] == ["embed_images", "embed_texts", "serving_default"]

    import mmkeras  # noqa: F401
    import tensorflow as tf

    model = keras.saving.load_model(model_dir / "model.keras")
    expected_images = model.embed_raw_images(tf.constant([open(p, "rb").read() for p in paths])).numpy()
    expected_texts = model.embed_raw_texts(tf.constant(texts)).numpy()
    np.testing.assert_allclose(served["images"], expected_images, atol=1e-4)
    np.testing.assert_allclose(served["texts"], expected_texts, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(served["texts"], axis=1), 1.0, atol=1e-5)


def test_search_cli_indexes_once_skips_bad_files_and_answers(contrastive_run, tmp_path):
    model_dir, _ = contrastive_run
    folder = tmp_path / "photos"
    folder.mkdir()
    data = SyntheticCaptions(seed=0, image_size=32, num_train=4)
    for i in range(4):
        (folder / f"photo_{i}.png").write_bytes(encode_png(data.render("train", i)[0]))
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    command = [sys.executable, "-m", "training.search", f"--model_dir={model_dir}", f"--images={folder}",
               "--query=a small red circle", "--top_k=3"]
    out = run(command)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Indexed 4 images" in out.stdout and "(no index)" in out.stdout
    assert "Skipped 2 files" in out.stdout
    results = [line for line in out.stdout.splitlines() if line[:2] in ("1.", "2.", "3.")]
    assert len(results) == 3 and all("photo_" in line for line in results)
    scores = [float(line.split()[1]) for line in results]
    assert scores == sorted(scores, reverse=True)

    # Bad arguments fail before any TensorFlow work, naming the flag.
    for flag, message in (("--query=  ", "--query is empty"), ("--top_k=0", "--top_k must be >= 1")):
        bad = run([c if not c.startswith(flag.split("=")[0]) else flag for c in command])
        assert bad.returncode != 0 and message in bad.stderr, bad.stderr[-2000:]


def test_index_is_reused_and_rebuilt_when_the_model_or_the_folder_changes(tmp_path):
    model_dir, folder = tmp_path / "run", tmp_path / "images"
    model_dir.mkdir()
    folder.mkdir()
    (model_dir / "model.keras").write_bytes(b"model one")
    data = SyntheticCaptions(seed=0, image_size=32, num_train=3)
    for i in range(2):
        (folder / f"{i}.png").write_bytes(encode_png(data.render("train", i)[0]))
    calls = []

    def embed(paths):
        calls.append(list(paths))
        return np.eye(len(paths), 4, dtype="float32")

    index, reason = search_index.load_or_build(str(model_dir), str(folder), embed)
    assert reason == "no index" and len(index.paths) == 2 and len(calls) == 1
    index, reason = search_index.load_or_build(str(model_dir), str(folder), embed)
    assert reason is None and len(calls) == 1 and index.embeddings.shape == (2, 4)
    (folder / "2.png").write_bytes(encode_png(data.render("train", 2)[0]))
    index, reason = search_index.load_or_build(str(model_dir), str(folder), embed)
    assert reason == "the folder changed" and len(index.paths) == 3
    (model_dir / "model.keras").write_bytes(b"model two")
    _, reason = search_index.load_or_build(str(model_dir), str(folder), embed)
    assert reason == "the model changed"
    best = index.search(np.array([0, 1, 0, 0], "float32"), top_k=2)
    assert best[0] == (index.paths[1], 1.0)
    with pytest.raises(ValueError, match="top_k"):
        index.search(np.zeros(4), top_k=0)


def test_init_from_loads_both_towers_into_vqa_and_lora_trains_few_parameters(contrastive_run, tmp_path):
    model_dir, _ = contrastive_run
    # vqa_tiny reads 12 tokens, the dual encoder was trained on 20: named mismatch.
    mismatch = run(train_command(tmp_path / "bad", f"--init_from={model_dir}", "--export_dir=",
                                 experiment="vqa_tiny"))
    assert mismatch.returncode == 2
    assert "text_encoder/" in mismatch.stderr and "(12, 32)" in mismatch.stderr and "(20, 32)" in mismatch.stderr

    out = run(train_command(tmp_path / "vqa", f"--init_from={model_dir}", "--lora_rank=4", "--export_dir=",
                            "--set=data.sequence_length=20", experiment="vqa_tiny"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"Initialised image_encoder, text_encoder from {model_dir}" in out.stdout
    line = next(x for x in out.stdout.splitlines() if x.startswith("Trainable parameters:"))
    trainable, total = (int(v.replace(",", "")) for v in line.split(":")[1].split(" of "))
    assert trainable < total / 2
    # The text tower keeps the vocabulary it was trained with.
    assert (tmp_path / "vqa" / "vocabulary.txt").read_text() == (model_dir / "vocabulary.txt").read_text()


def test_load_encoders_copies_the_image_tower_into_a_captioner(tmp_path):
    from mmkeras.models import build_image_captioner
    from mmkeras.models.dual_encoder import build_dual_encoder

    keras.utils.set_random_seed(1)
    source = build_dual_encoder(image_size=32, sequence_length=6, vocabulary_size=30, hidden_dim=16, num_heads=2,
                                intermediate_dim=32, projection_dim=8, image_encoder_kwargs={"stem_filters": (8, 16)},
                                text_encoder_kwargs={"num_layers": 1})
    os.makedirs(tmp_path / "src")
    source.save(tmp_path / "src" / "model.keras")
    captioner = build_image_captioner(vocabulary_size=30, sequence_length=6, image_size=32, hidden_dim=16,
                                      num_layers=1, num_heads=2, intermediate_dim=32, stem_filters=(8, 16))
    encoders = {"image_encoder": captioner.image_encoder}
    assert transfer.load_encoders(captioner, encoders, str(tmp_path / "src")) == ["image_encoder"]
    for a, b in zip(source.image_encoder.weights, captioner.image_encoder.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    adapted = transfer.enable_lora(encoders.values(), 2)
    assert adapted >= 1
    trainable = [w.path for w in captioner.image_encoder.trainable_weights]
    assert trainable and all("lora_" in path for path in trainable)
    other = build_image_captioner(vocabulary_size=30, sequence_length=6, image_size=32, hidden_dim=24,
                                  num_layers=1, num_heads=2, intermediate_dim=32, stem_filters=(8, 16))
    with pytest.raises(ValueError, match=r"image_encoder/projection/kernel has shape \(16, 24\)"):
        transfer.load_encoders(other, {"image_encoder": other.image_encoder}, str(tmp_path / "src"))
