"""The HTML run report, rendered in headless Chromium: it loads cleanly, every image decodes."""

import io
import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from mmkeras.data.synthetic_captions import encode_png
from tests import explain_fixtures
from tests import headless_chromium
from training import explain
from training import report

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser():
    if not headless_chromium.available():
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    with headless_chromium.Chromium() as chromium:
        yield chromium


@pytest.fixture(scope="module")
def captioner_run(tmp_path_factory):
    return explain_fixtures.attending_captioner_run(tmp_path_factory)


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory):
    """A VQA run directory with the files the classify task writes, from an untrained model.

    Training one (even for a few steps) costs far more than the report it
    feeds; the files are written with the functions and schema the task uses.
    """
    from mmkeras.data.synthetic_vqa import load_synthetic_vqa
    from mmkeras.data.text_preprocessor import text_preprocessor_from_vocabulary
    from mmkeras.data.tokenizer import learn_vocabulary
    from mmkeras.metrics import classification_report
    from mmkeras.metrics.plots import plot_confusion_matrix
    from mmkeras.models import build_fusion_classifier

    model_dir = tmp_path_factory.mktemp("classifier_run")
    config = {"task": "vqa", "train": {"seed": 0}, "model": {"fusion": "cross_attention"},
              "data": {"spec": "synthetic", "image_size": 32, "synthetic_num_train": 8,
                       "synthetic_num_validation": 2, "synthetic_num_test": 6}}
    (model_dir / "config.json").write_text(json.dumps(config))
    data = load_synthetic_vqa(seed=0, image_size=32, num_train=8, num_validation=2, num_test=6)
    records, names = data.splits["test"], list(data.label_names)
    (model_dir / "labels.txt").write_text("\n".join(names) + "\n")
    vocabulary = learn_vocabulary([r.text for r in data.splits["train"] + records] * 10, 200)
    model = build_fusion_classifier(
        num_classes=len(names), image_size=32, sequence_length=12, hidden_dim=16, num_heads=2,
        vocabulary_size=len(vocabulary), intermediate_dim=32, fusion="cross_attention", label_names=names,
        text_preprocessor=text_preprocessor_from_vocabulary(vocabulary, 12),
        image_encoder_kwargs={"stem_filters": (8, 16), "convs_per_stage": 1}, text_encoder_kwargs={"num_layers": 1},
    )
    images = np.stack([data.synthetic.render_image(r.image) for r in records])
    predicted = explain.classifier_attention(model, images, [r.text for r in records])
    rows = [{"image": r.image, "text": r.text, "labels": list(r.labels), "predicted": [p["label"]],
             "confidence": p["confidence"], "correct": [p["label"]] == list(r.labels)}
            for r, p in zip(records, predicted)]
    (model_dir / "predictions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = classification_report([names.index(r.labels[0]) for r in records],
                                   [names.index(p["label"]) for p in predicted], names)
    (model_dir / "classification_report.json").write_text(json.dumps(result))
    plot_confusion_matrix(np.asarray(result["confusion_matrix"]), names, model_dir / "confusion_matrix.png")
    (model_dir / "eval_metrics.json").write_text(json.dumps({"accuracy": result["accuracy"]}))
    return model_dir, model


def rendered(browser, path):
    """Loads the page and checks what every report must do in a browser; returns (load, text)."""
    page = path.read_text(encoding="utf-8")
    assert path.stat().st_size < 5e6
    # Self-contained: nothing to fetch, nothing to run.
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", page)
    assert "<script" not in page
    load = browser.load(path)
    assert load.errors == [], load.errors
    assert load.external_resources == []
    assert load.images and all(i["complete"] and i["natural_width"] > 0 for i in load.images), load.images
    shot = np.asarray(Image.open(io.BytesIO(load.screenshot_png)).convert("RGB")).astype("float32")
    assert shot.std() > 20 and len(np.unique(shot.reshape(-1, 3), axis=0)) > 200, "blank screenshot"
    return load, re.sub(r"<[^>]+>", " ", page)


def test_captioner_report(browser, captioner_run, tmp_path):
    model_dir, model = captioner_run
    path, missing = report.write_report(str(model_dir), output=str(tmp_path / "report.html"), model=model)
    assert missing == []
    load, text = rendered(browser, tmp_path / "report.html")
    rows = [json.loads(line) for line in (model_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 24 and all({"generated", "beam", "references"} <= set(r) for r in rows)
    for heading in ("Test metrics", "Training curves", "best", "median", "worst", "Attention maps",
                    "Configuration"):
        assert heading in text
    # Training curves + 9 gallery thumbnails + 3 attention grids.
    assert len(load.images) == 1 + 9 + 3
    assert text.count("greedy") >= 9 and text.count("beam") >= 9
    assert "Missing" not in text


def test_report_without_logs_or_model_says_so_and_renders_the_rest(browser, captioner_run, tmp_path):
    model_dir, _ = captioner_run
    bare = tmp_path / "bare"
    shutil.copytree(model_dir, bare, ignore=shutil.ignore_patterns("logs", "model.keras", "checkpoints"))
    path, missing = report.write_report(str(bare))
    assert {name for name, _ in missing} == {"logs/train_log.jsonl", "model.keras"}
    _, text = rendered(browser, bare / "report.html")
    assert "logs/train_log.jsonl" in text and "no training curves" in text
    assert "model.keras" in text and "no attention maps" in text
    assert "best" in text and "worst" in text  # the gallery still renders


def test_classifier_report(browser, classifier_run, tmp_path):
    model_dir, model = classifier_run
    report.write_report(str(model_dir), output=str(tmp_path / "report.html"), model=model)
    load, text = rendered(browser, tmp_path / "report.html")
    for heading in ("Classification", "Per class", "Most confident mistakes", "Attention maps"):
        assert heading in text
    rows = [json.loads(line) for line in (model_dir / "predictions.jsonl").read_text().splitlines()]
    mistakes = [r for r in rows if not r["correct"]]
    assert mistakes, "an untrained classifier should make mistakes"
    assert f"{len(mistakes)} of {len(rows)} test examples wrong" in text
    for label in (model_dir / "labels.txt").read_text().split():
        assert f"<td>{label}</td>" in (tmp_path / "report.html").read_text()  # per-class rows
    # The confusion matrix, the 6 most confident mistakes, attention grids of
    # two of them and of one right answer.
    attention = min(len(mistakes), 2) + (len(mistakes) < len(rows))
    assert len(load.images) == 1 + min(len(mistakes), 6) + attention


def test_retrieval_grid_marks_the_correct_image(browser, tmp_path):
    run = tmp_path / "retrieval_run"
    run.mkdir()
    config = {"task": "contrastive", "train": {"seed": 3},
              "data": {"spec": "synthetic", "image_size": 48, "synthetic_num_train": 10,
                       "synthetic_num_validation": 4, "synthetic_num_test": 8}}
    (run / "config.json").write_text(json.dumps(config))
    synthetic = explain.synthetic_from_config(config)
    photo = tmp_path / "photo.png"
    photo.write_bytes(encode_png(synthetic.render("test", 7)[0]))
    samples = [
        {"query": synthetic.captions("test", 0)[0], "correct_image": "synthetic:test:0",
         "top_images": ["synthetic:test:0", "synthetic:test:1", "synthetic:test:2", "synthetic:test:3",
                        str(photo)], "scores": [0.9, 0.5, 0.4, 0.3, 0.2]},
        {"query": synthetic.captions("test", 6)[0], "correct_image": "synthetic:test:6",
         "top_images": ["synthetic:test:1", "synthetic:test:2", "synthetic:test:3", "synthetic:test:4",
                        "synthetic:test:5"], "scores": [0.6, 0.5, 0.4, 0.3, 0.2]},
    ]
    (run / "retrieval_samples.json").write_text(json.dumps(samples))
    path, missing = report.write_report(str(run))
    load, text = rendered(browser, run / "report.html")
    assert len(load.images) == 5 + 6  # two queries' top 5, and the second's correct image after them
    assert text.count("correct") >= 3 and "not in top 5" in text
    assert samples[0]["query"] in text
    page = (run / "report.html").read_text()
    assert page.count('class="correct"') == 2
    assert {name for name, _ in missing} == {"eval_metrics.json", "logs/train_log.jsonl"}


def test_a_failing_report_never_fails_the_run(monkeypatch, tmp_path, caplog):
    from training import train

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report, "write_report", broken)
    train.write_run_report(str(tmp_path), None)  # logs, does not raise
    assert "Could not write the run report" in caplog.text and "disk full" in caplog.text
