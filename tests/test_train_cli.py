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
                 "--experiment", "--set", "--[no]skip_bad_examples", "--strategy"):
        assert flag in proc.stdout, flag


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


def test_skip_bad_examples_trains_and_counts(tmp_path):
    manifest = write_manifest(tmp_path, bad_row=3)
    model_dir = tmp_path / "run"
    proc = run_train("--experiment=caption_tiny", f"--data=csv:{manifest}", f"--model_dir={model_dir}",
                     "--export_dir=", "--max_steps=3", "--skip_bad_examples", "--set=data.batch_size=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((model_dir / "data_report.json").read_text())
    assert report["skipped_bad_examples"] == 1
    assert report["images_per_split"] == {"train": 7, "validation": 2, "test": 2}
    metrics = json.loads((model_dir / "eval_metrics.json").read_text())
    assert metrics["num_test_images"] == 2 and metrics["train_steps"] == 3


def test_unknown_data_spec_is_a_clear_error(tmp_path):
    proc = run_train("--experiment=caption_tiny", "--data=parquet:/nope", f"--model_dir={tmp_path}", "--export_dir=")
    assert proc.returncode == 1
    assert "parquet" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_set_override_is_a_usage_error(tmp_path):
    proc = run_train("--set=model.hidden_size=3", f"--model_dir={tmp_path}")
    assert proc.returncode != 0
    assert "hidden_size" in proc.stderr and "hidden_dim" in proc.stderr


def test_tiny_run_trains_evaluates_and_exports(tmp_path):
    model_dir, export_dir = tmp_path / "run", tmp_path / "saved_models"
    proc = run_train("--experiment=caption_tiny", f"--model_dir={model_dir}", f"--export_dir={export_dir}",
                     "--max_steps=4", "--verbose=0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (export_dir / "captioner" / "1" / "saved_model.pb").exists()
    assert (export_dir / "models.config").exists()
    metrics = json.loads((model_dir / "eval_metrics.json").read_text())
    assert metrics["train_steps"] == 4
    assert json.loads(proc.stdout.strip().splitlines()[0])["train_steps"] == 4
