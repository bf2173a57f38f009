import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from mmkeras.data import caption_pipeline
from mmkeras.data.records import CaptionRecord
from mmkeras.data.synthetic_captions import SyntheticCaptions
from mmkeras.data.tokenizer import (
    build_tokenizer,
    detokenize_generated,
    learn_vocabulary,
    special_token_ids,
)


@pytest.fixture(scope="module")
def synthetic():
    return SyntheticCaptions(seed=1, image_size=32, num_train=24, num_validation=4, num_test=4)


@pytest.fixture(scope="module")
def tokenizer(synthetic):
    captions = [c for r in synthetic.records("train") for c in r.captions]
    return build_tokenizer(learn_vocabulary(captions * 10, 200))


def encode(array, fmt):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def test_decode_image_jpeg_and_png_resize_to_same_shape():
    rng = np.random.default_rng(0)
    array = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    png = caption_pipeline.decode_image(tf.constant(encode(array, "PNG")), 32).numpy()
    jpeg = caption_pipeline.decode_image(tf.constant(encode(array, "JPEG")), 32).numpy()
    assert png.shape == jpeg.shape == (32, 32, 3)
    assert png.dtype == np.float32 and 0 <= png.min() and png.max() <= 255
    # Lossy JPEG of the same pixels stays close to the lossless PNG.
    assert np.abs(png - jpeg).mean() < 20
    batch = caption_pipeline.decode_images(tf.constant([encode(array, "PNG")] * 2), 32).numpy()
    np.testing.assert_array_equal(batch[0], png)


def test_training_batches_are_teacher_forced_and_masked(synthetic, tokenizer):
    ds = caption_pipeline.caption_dataset(synthetic.records("train"), tokenizer, 32, 20, 8,
                                          training=True, seed=3, synthetic=synthetic)
    x, y, w = next(iter(ds))
    ids = special_token_ids(tokenizer)
    assert x["images"].shape == (8, 32, 32, 3) and x["images"].dtype == tf.float32
    assert x["token_ids"].shape == y.shape == w.shape == (8, 20)
    tokens, targets, weights = x["token_ids"].numpy(), y.numpy(), w.numpy()
    assert np.all(tokens[:, 0] == ids["start"])
    np.testing.assert_array_equal(tokens[:, 1:], targets[:, :-1])  # targets are inputs shifted left
    # Weight 1 exactly on real targets: caption tokens and the end token.
    np.testing.assert_array_equal(weights, (targets != ids["pad"]).astype("float32"))
    assert np.all((targets == ids["end"]).sum(axis=1) == 1)


def test_training_order_is_reproducible_for_a_seed(synthetic, tokenizer):
    def first_tokens(seed):
        ds = caption_pipeline.caption_dataset(synthetic.records("train"), tokenizer, 32, 20, 8,
                                              training=True, seed=seed, synthetic=synthetic)
        return np.concatenate([x["token_ids"].numpy() for x, _, _ in ds.take(3)])

    np.testing.assert_array_equal(first_tokens(5), first_tokens(5))
    assert not np.array_equal(first_tokens(5), first_tokens(6))


def test_evaluation_yields_every_caption_once_in_order(synthetic, tokenizer):
    records = synthetic.records("test")
    ds = caption_pipeline.caption_dataset(records, tokenizer, 32, 20, 5, training=False, synthetic=synthetic)
    rows = np.concatenate([x["token_ids"].numpy() for x, _, _ in ds])
    assert len(rows) == sum(len(r.captions) for r in records)
    ids = special_token_ids(tokenizer)
    decoded = detokenize_generated(tokenizer, rows[:2], ids["end"], ids["start"]).numpy()
    assert [d.decode() for d in decoded] == list(records[0].captions[:2])


def test_augmentation_only_changes_training_images(synthetic, tokenizer):
    plain = caption_pipeline.caption_dataset(synthetic.records("train"), tokenizer, 32, 20, 8,
                                             training=True, seed=3, synthetic=synthetic)
    augmented = caption_pipeline.caption_dataset(synthetic.records("train"), tokenizer, 32, 20, 8,
                                                 training=True, seed=3, synthetic=synthetic, augment=True)
    a = next(iter(plain))[0]["images"].numpy()
    b = next(iter(augmented))[0]["images"].numpy()
    assert not np.allclose(a, b)


def test_caption_stats_counts_truncation(tokenizer):
    records = [CaptionRecord("x.png", ("a small red circle", "a " * 40), "test")]
    stats = caption_pipeline.caption_stats(records, tokenizer, sequence_length=10)
    assert stats.num_captions == 2 and stats.truncated_captions == 1 and stats.max_tokens == 40


def test_skip_bad_examples_drops_undecodable_images(tmp_path, tokenizer):
    rng = np.random.default_rng(0)
    records = []
    for i in range(4):
        path = tmp_path / f"{i}.png"
        path.write_bytes(encode(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), "PNG"))
        records.append(CaptionRecord(str(path), ("a red circle",), f"row {i}"))
    # Valid PNG signature and IEND, garbage in between: passes the cheap checks.
    good = (tmp_path / "0.png").read_bytes()
    (tmp_path / "2.png").write_bytes(good[:16] + b"\x00" * 64 + good[-12:])
    strict = caption_pipeline.caption_dataset(records, tokenizer, 16, 10, 4, training=False)
    with pytest.raises(tf.errors.InvalidArgumentError):
        list(strict)
    lenient = caption_pipeline.caption_dataset(records, tokenizer, 16, 10, 4, training=False,
                                               skip_bad_examples=True)
    assert sum(int(x["images"].shape[0]) for x, _, _ in lenient) == 3
