"""Sharded TFRecords: streaming manifests, writer, per-worker reader, resume."""

import csv
import json
import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
import tensorflow as tf

from mmkeras.data import tfrecords
from mmkeras.data.records import BadExampleError
from mmkeras.data.splits import SPLITS
from mmkeras.data.synthetic_captions import SyntheticCaptions, encode_png
from mmkeras.data.tokenizer import build_tokenizer, learn_vocabulary
from tests import training_fixtures as tfx


def write_manifest(path, num_images, captions_per_image):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        for i in range(num_images):
            for j in range(captions_per_image):
                writer.writerow([f"images/{i:06d}.jpg", f"caption {j} of image number {i}"])


def test_manifest_of_100k_rows_is_streamed(tmp_path):
    path = tmp_path / "manifest.csv"
    write_manifest(path, 20_000, 5)  # 100,000 rows
    tracemalloc.start()
    try:
        records = tfrecords.iter_caption_manifest(path)
        split, first = next(records)
        _, first_peak = tracemalloc.get_traced_memory()
        count = 1 + sum(1 for _ in records)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 20_000
    assert first.captions == tuple(f"caption {j} of image number 0" for j in range(5))
    assert first.image.endswith(os.path.join("images", "000000.jpg"))
    assert split in ("train", "validation", "test")
    # The first record comes out before the file is read: no row list exists.
    assert first_peak < 1_000_000
    # Rows and records are dropped as they go; only 8-byte image keys stay
    # (about 3 MB here; holding the 20,000 records would take about 19 MB).
    assert peak < 8_000_000


def test_streamed_manifest_matches_loader_and_rejects_scattered_rows(tmp_path):
    path = tmp_path / "m.csv"
    with open(path, "w") as f:
        f.write("image,caption,split\na.jpg,one,train\na.jpg,two,train\nb.jpg,  ,test\nb.jpg,three,test\n")
    got = list(tfrecords.iter_caption_manifest(path))
    assert [(s, r.captions) for s, r in got] == [("train", ("one", "two")), ("test", ("three",))]
    with open(path, "a") as f:
        f.write("a.jpg,four,train\n")
    with pytest.raises(BadExampleError, match="rows of one image together"):
        list(tfrecords.iter_caption_manifest(path))
    assert len(list(tfrecords.iter_caption_manifest(path, skip_bad_examples=True))) == 2


@pytest.fixture(scope="module")
def synthetic_shards(tmp_path_factory):
    """22 training images over 4 shards (6, 6, 5, 5), 4 test, 2 validation."""
    directory = str(tmp_path_factory.mktemp("shards"))
    synthetic = SyntheticCaptions(seed=3, image_size=32, num_train=22, num_validation=2, num_test=4)
    pairs = [(s, r) for s in SPLITS for r in synthetic.records(s)]
    info = tfrecords.write_caption_shards(
        pairs, directory, num_shards=4, read_image=lambda r: encode_png(synthetic.render_image(r.image))
    )
    vocabulary = learn_vocabulary([c for _, r in pairs for c in r.captions], 100)
    return directory, info, synthetic, build_tokenizer(vocabulary)


def test_shards_round_trip(synthetic_shards, tmp_path):
    directory, info, synthetic, _ = synthetic_shards
    assert [f["num_examples"] for f in info["splits"]["train"]["files"]] == [6, 6, 5, 5]
    assert info["splits"]["test"]["num_examples"] == 4
    assert tfrecords.read_dataset_info(directory) == info
    train = list(tfrecords.iter_records(directory, "train"))
    # Round-robin: shard 0 holds images 0, 4, 8, ...
    assert [r.image for r in train[:3]] == ["synthetic:train:0", "synthetic:train:4", "synthetic:train:8"]
    assert sorted(r.captions for r in train) == sorted(r.captions for r in synthetic.records("train"))
    test = tfrecords.extract_images(directory, "test", str(tmp_path / "test"))
    for record, original in zip(test, synthetic.records("test")):
        pixels = tf.io.decode_png(open(record.image, "rb").read()).numpy()
        np.testing.assert_array_equal(pixels, synthetic.render_image(original.image))
        assert record.captions == original.captions
    with pytest.raises(FileExistsError):
        tfrecords.write_caption_shards([], directory, num_shards=1)


def _stream(directory, tokenizer, batch_size, count, **kwargs):
    ds = tfrecords.caption_train_dataset(directory, tokenizer, 32, 12, batch_size, seed=5, **kwargs)
    return [(x["images"].numpy(), x["token_ids"].numpy()) for x, _, _ in ds.take(count)]


def _image_keys(batches):
    return [image.tobytes() for images, _ in batches for image in images]


def test_workers_read_disjoint_files_covering_an_epoch(synthetic_shards):
    directory, _, synthetic, tokenizer = synthetic_shards
    everything = {np.asarray(synthetic.render_image(r.image)).astype(np.float32).tobytes()
                  for r in synthetic.records("train")}
    seen = []
    for worker in range(2):
        files, epoch_size, by_data = tfrecords.pipeline_files(directory, 2, worker)
        assert not by_data and len(files) == 2 and epoch_size == 11
        keys = _image_keys(_stream(directory, tokenizer, 1, epoch_size, num_input_pipelines=2,
                                   input_pipeline_id=worker))
        assert len(set(keys)) == epoch_size  # each example once per epoch
        seen.append(set(keys))
    assert not seen[0] & seen[1] and seen[0] | seen[1] == everything
    # Fewer files than pipelines: every pipeline reads all, keeps every 5th record.
    _, epoch_size, by_data = tfrecords.pipeline_files(directory, 5, 4)
    assert by_data and epoch_size == 4


def test_stream_resumes_at_any_example(synthetic_shards):
    directory, _, _, tokenizer = synthetic_shards
    full = _stream(directory, tokenizer, 4, 9)  # crosses two epochs of 22
    for start_batch in (1, 5, 6):
        resumed = _stream(directory, tokenizer, 4, 9 - start_batch, start_example=4 * start_batch)
        for (images, tokens), (want_images, want_tokens) in zip(resumed, full[start_batch:]):
            np.testing.assert_array_equal(images, want_images)
            np.testing.assert_array_equal(tokens, want_tokens)
    # Epochs are shuffled differently.
    assert _image_keys(full)[:22] != _image_keys(full)[22:]


@pytest.mark.slow
def test_prepare_data_then_train_captioner_and_dual_encoder(tmp_path):
    data_dir, model_dir = str(tmp_path / "tfrecords"), str(tmp_path / "run")
    prepare = subprocess.run(
        [sys.executable, "-m", "training.prepare_data", "--data=synthetic", "--experiment=caption_tiny",
         f"--output={data_dir}", "--num_shards=4"],
        cwd=tfx.REPO, env=tfx.train_env(), capture_output=True, text=True, timeout=120,
    )
    assert prepare.returncode == 0, prepare.stderr[-3000:]
    summary = json.loads(prepare.stdout.strip().splitlines()[-1])
    assert summary["examples"] == {"train": 256, "validation": 32, "test": 32}
    assert summary["train_shards"] == 4
    train = subprocess.run(
        tfx.train_command(model_dir, f"--data=tfrecord:{data_dir}", "--export_dir=", "--max_steps=4"),
        cwd=tfx.REPO, env=tfx.train_env(), capture_output=True, text=True, timeout=180,
    )
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-3000:]
    with open(os.path.join(model_dir, "eval_metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["train_steps"] == 4 and metrics["num_test_images"] == 4
    # FAST_FLAGS set caption.eval_beam=false: greedy metrics only.
    assert "cider" in metrics and not [k for k in metrics if k.startswith("beam_")]
    with open(os.path.join(model_dir, "data_report.json")) as f:
        assert json.load(f)["images_per_split"] == {"train": 256, "validation": 32, "test": 32}
    # The dual encoder streams the same shards (its in-batch negatives from their images).
    contrastive_dir = str(tmp_path / "contrastive")
    train = subprocess.run(
        tfx.train_command(contrastive_dir, f"--data=tfrecord:{data_dir}", "--export_dir=", "--max_steps=4",
                          "--set=contrastive.zero_shot=false", experiment="contrastive_tiny"),
        cwd=tfx.REPO, env=tfx.train_env(), capture_output=True, text=True, timeout=180,
    )
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-3000:]
    with open(os.path.join(contrastive_dir, "eval_metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["train_steps"] == 4 and metrics["num_test_images"] == 4
    assert 0.0 <= metrics["text_to_image_recall@1"] <= metrics["text_to_image_recall@5"] <= 1.0
