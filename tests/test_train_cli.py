"""`python -m training.train` as a user runs it: help, bad data, skipping."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def run_train(*args, timeout=600):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "training.train", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_help_documents_the_flags():
    proc = run_train("--help")
    # absl prints usage and exits 1 for --help; what matters is the text.
    assert proc.returncode in (0, 1)
    assert "python -m training.train" in proc.stdout
    for flag in ("--task", "--data", "--model_dir", "--export_dir", "--max_minutes", "--max_steps",
                 "--experiment", "--set", "--[no]skip_bad_examples", "--strategy", "--fusion"):
        assert flag in proc.stdout, flag
    # Every fusion strategy, task, data form and experiment is listed.
    for name in ("concat", "add", "weighted_sum", "gated", "cross_attention", "gcn", "late",
                 "classify", "vqa", "easy_vqa", "flickr8k_match:DIR", "vqa_easy_vqa", "classify_flickr8k_match"):
        assert name in proc.stdout, name


def write_manifest(tmp_path, bad_row):
    rng = np.random.default_rng(0)
    rows = ["image,caption,split"]
    words = ["red", "blue", "green", "yellow"]
    for i in range(12):
        name = f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / name)
        split = "train" if i < 8 else ("validation" if i < 10 else "test")
        rows.append(f"{name},a {words[i % 4]} square,{split}")
    # Truncate one PNG so it has no IEND chunk.
    data = (tmp_path / f"img{bad_row}.png").read_bytes()
    (tmp_path / f"img{bad_row}.png").write_bytes(data[: len(data) // 2])
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def test_bad_image_names_file_and_row_and_writes_nothing_else(tmp_path):
    manifest = write_manifest(tmp_path, bad_row=3)
    model_dir = tmp_path / "run"
    proc = run_train("--experiment=caption_tiny", f"--data=csv:{manifest}", f"--model_dir={model_dir}",
                     "--export_dir=", "--max_steps=2")
    assert proc.returncode == 1
    assert "manifest.csv" in proc.stderr and "row 5" in proc.stderr and "img3.png" in proc.stderr
    assert "--skip_bad_examples" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (model_dir / "checkpoints").exists()


def test_unknown_data_spec_is_a_clear_error(tmp_path):
    proc = run_train("--experiment=caption_tiny", "--data=parquet:/nope", f"--model_dir={tmp_path}", "--export_dir=")
    assert proc.returncode == 1
    assert "parquet" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_set_override_is_a_usage_error(tmp_path):
    proc = run_train("--set=model.hidden_size=3", f"--model_dir={tmp_path}")
    assert proc.returncode != 0
    assert "hidden_size" in proc.stderr and "hidden_dim" in proc.stderr


def test_tiny_run_skips_bad_examples_trains_evaluates_and_exports(tmp_path):
    # One run for two checks (each run pays TensorFlow's start, tracing and export).
    manifest = write_manifest(tmp_path, bad_row=3)
    model_dir, export_dir = tmp_path / "run", tmp_path / "saved_models"
    proc = run_train("--experiment=caption_tiny", f"--data=csv:{manifest}", f"--model_dir={model_dir}",
                     f"--export_dir={export_dir}", "--max_steps=4", "--skip_bad_examples",
                     "--set=data.batch_size=4", "--verbose=0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((model_dir / "data_report.json").read_text())
    assert report["skipped_bad_examples"] == 1
    assert report["images_per_split"] == {"train": 7, "validation": 2, "test": 2}
    assert (export_dir / "captioner" / "1" / "saved_model.pb").exists()
    assert (export_dir / "models.config").exists()
    metrics = json.loads((model_dir / "eval_metrics.json").read_text())
    assert metrics["train_steps"] == 4 and metrics["num_test_images"] == 2
    assert {"bleu_4", "cider", "beam_bleu_4", "beam_cider"} <= set(metrics)  # greedy and beam side by side
    for prefix in ("", "beam_"):  # CIDEr-D's 95% interval over the test images holds the score
        assert metrics[prefix + "cider_ci_low"] <= metrics[prefix + "cider"] <= metrics[prefix + "cider_ci_high"]
    # The final metrics are one JSON line on stdout (after the trainable parameter count).
    assert "Trainable parameters:" in proc.stdout
    metrics_lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(metrics_lines) == 1 and json.loads(metrics_lines[0])["train_steps"] == 4


def test_vqa_run_with_a_fusion_flag_trains_evaluates_and_exports(tmp_path):
    model_dir, export_dir = tmp_path / "run", tmp_path / "saved_models"
    proc = run_train("--task=vqa", "--experiment=vqa_tiny", "--fusion=gcn", f"--model_dir={model_dir}",
                     f"--export_dir={export_dir}", "--max_steps=3", "--verbose=0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (export_dir / "vqa" / "1" / "saved_model.pb").exists()
    cfg = json.loads((model_dir / "config.json").read_text())
    assert (cfg["task"], cfg["model"]["fusion"]) == ("vqa", "gcn")
    metrics = json.loads((model_dir / "eval_metrics.json").read_text())
    for key in ("accuracy", "macro_f1", "weighted_f1", "accuracy_image_only", "accuracy_text_only",
                "num_test_examples", "train_steps"):
        assert key in metrics, key
    assert metrics["train_steps"] == 3
    assert metrics["accuracy_ci_low"] <= metrics["accuracy"] <= metrics["accuracy_ci_high"]
    assert "macro avg" in proc.stdout  # the classification report is printed


def test_unknown_fusion_and_fusion_for_captions_are_clear_errors(tmp_path):
    proc = run_train("--experiment=classify_tiny", "--fusion=nope", f"--model_dir={tmp_path / 'a'}", "--export_dir=")
    assert proc.returncode == 2
    assert "fusion='nope'" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_train("--fusion=gcn", f"--model_dir={tmp_path / 'b'}", "--export_dir=")
    assert proc.returncode != 0 and "--fusion applies to" in proc.stderr


def test_resuming_with_other_settings_names_them_and_keeps_the_run(tmp_path):
    model_dir = tmp_path / "run"
    flags = ("--experiment=caption_tiny", f"--model_dir={model_dir}", "--export_dir=", "--verbose=0",
             "--report=false", "--set=eval.max_images=4", "--set=eval.num_samples=0",
             "--set=caption.eval_beam=false")
    proc = run_train(*flags, "--max_steps=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = {p.name: p.read_bytes() for p in model_dir.iterdir() if p.is_file()}
    assert {"config.json", "vocabulary.txt", "data_report.json", "eval_metrics.json"} <= set(files)

    # Another decoder width and another vocabulary (the data step rewrites
    # vocabulary.txt before the checkpoint is read).
    proc = run_train(*flags, "--max_steps=6", "--set=model.hidden_dim=48", "--set=caption.vocabulary=wordpiece")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    error = proc.stderr[proc.stderr.index("error:"):]
    assert "ckpt-3" in error and "model.hidden_dim: 32 -> 48" in error and "--model_dir" in error
    assert 'caption.vocabulary: "word" -> "wordpiece"' in error
    # The directory still describes the run its checkpoints belong to.
    assert {p.name: p.read_bytes() for p in model_dir.iterdir() if p.is_file()} == files

    # So it does after any failure before a checkpoint of the new command: here a missing preset.
    missing = tmp_path / "no_such_preset"
    proc = run_train(*flags, "--max_steps=6", f"--set=model.image_encoder.backbone_preset={missing}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"The preset folder does not exist: {missing}" in proc.stderr
    assert {p.name: p.read_bytes() for p in model_dir.iterdir() if p.is_file()} == files

    proc = run_train(*flags, "--max_steps=6")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((model_dir / "eval_metrics.json").read_text())["train_steps"] == 6


def write_classification_manifest(tmp_path, test_label="red"):
    rng = np.random.default_rng(0)
    rows = ["image,text,label,split"]
    for i in range(12):
        name = f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / name)
        split = "train" if i < 8 else ("validation" if i < 10 else "test")
        label = test_label if split == "test" else ("red", "blue")[i % 2]
        rows.append(f"{name},what colour is it,{label},{split}")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def test_classify_manifest_with_an_unseen_label_names_file_and_row(tmp_path):
    manifest = write_classification_manifest(tmp_path, test_label="green")
    model_dir = tmp_path / "run"
    proc = run_train("--experiment=classify_tiny", f"--data=csv:{manifest}", f"--model_dir={model_dir}",
                     "--export_dir=", "--max_steps=2")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "manifest.csv" in proc.stderr and "row 12" in proc.stderr and "green" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (model_dir / "checkpoints").exists()


def test_cross_validated_fusion_weights_and_early_stopping(tmp_path):
    manifest = write_classification_manifest(tmp_path)
    model_dir = tmp_path / "run"
    proc = run_train("--experiment=classify_tiny", f"--data=csv:{manifest}", "--fusion=weighted_sum",
                     "--set=model.fusion_weights=cv", "--set=data.batch_size=4", "--set=train.eval_every=2",
                     "--set=train.early_stopping_patience=2", f"--model_dir={model_dir}", "--export_dir=",
                     "--max_steps=6", "--verbose=0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    cv = json.loads((model_dir / "cv_results.json").read_text())
    assert [row["image_weight"] for row in cv["grid"]] == [0.25, 0.75]
    assert all(len(row["fold_accuracy"]) == 2 for row in cv["grid"])
    assert cv["chosen"] == max(cv["grid"], key=lambda row: row["mean_accuracy"])
    assert "Cross-validated fusion weights" in proc.stdout
    assert not (model_dir / "cv").exists()  # the inner runs' scratch is removed
    # The final model uses the chosen weights.
    import keras
    import mmkeras  # noqa: F401

    model = keras.saving.load_model(model_dir / "model.keras")
    chosen = cv["chosen"]
    np.testing.assert_allclose(model.fusion.normalized_weights, (chosen["image_weight"], chosen["text_weight"]))
    state = json.loads((model_dir / "early_stopping.json").read_text())
    assert state["metric"] == "val_accuracy" and (model_dir / "best.weights.h5").exists()
    metrics = json.loads((model_dir / "eval_metrics.json").read_text())
    assert metrics["best_step"] == state["best_step"]


def test_every_command_imports_into_one_process():
    # Flags are defined only under __main__: a user's script (or this suite) may import any
    # mix of the commands without absl's DuplicateFlagError.
    code = ("import importlib\n"
            "for name in ('training.train', 'training.ensemble', 'training.prepare_data', "
            "'training.search', 'training.explain', 'training.report', 'training.presets', "
            "'serving.export'):\n"
            "    module = importlib.import_module(name)\n"
            "    assert hasattr(module, 'main'), name\n"
            "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


@pytest.mark.parametrize("module", ["training.ensemble", "training.prepare_data"])
def test_other_commands_still_document_their_flags(module):
    proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode in (0, 1)
    assert "--output" in proc.stdout or "--members" in proc.stdout, proc.stdout[-2000:]
