"""Tests for the classification / VQA tf.data pipeline."""

import numpy as np
import pytest
import tensorflow as tf

from mmkeras.data import caption_pipeline
from mmkeras.data.classification_pipeline import classification_dataset
from mmkeras.data.classification_pipeline import classification_texts
from mmkeras.data.classification_pipeline import label_ids
from mmkeras.data.classification_records import ClassificationRecord
from mmkeras.data.records import SKIP_HINT
from mmkeras.data.records import BadExampleError
from mmkeras.data.synthetic_captions import encode_png
from mmkeras.data.synthetic_vqa import load_synthetic_vqa

LENGTH = 8


def text_preprocessor(texts):
    """Hashes words to ids 1..100, pads with 0 to LENGTH: a stand-in tokenizer."""
    words = tf.strings.split(texts)
    ids = tf.strings.to_hash_bucket_fast(words, 100) + 1
    ids = ids.to_tensor(shape=(None, LENGTH))
    return {"token_ids": ids, "padding_mask": ids != 0}


@pytest.fixture(scope="module")
def vqa():
    return load_synthetic_vqa(seed=3, image_size=32, num_train=12, num_validation=4,
                              num_test=4)


@pytest.fixture(scope="module")
def multi_vqa():
    return load_synthetic_vqa(seed=3, image_size=32, num_train=12, num_validation=4,
                              num_test=4, multi_label=True)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    """Five distinct 24x24 PNGs (random pixels) and a list of their paths."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(5):
        path = folder / f"{i}.png"
        path.write_bytes(encode_png(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)))
        paths.append(str(path))
    return paths


def file_records(paths):
    """Three questions per image, interleaved (not contiguous by image); the
    label names the image, so every example says which image it must carry."""
    return [
        ClassificationRecord(path, f"question {q} about image {i}", (f"image{i}",),
                             f"manifest row {3 * q + i}")
        for q in range(3)
        for i, path in enumerate(paths)
    ]


def decoded(path, size):
    image = caption_pipeline.decode_image(tf.io.read_file(path), size)
    return tf.cast(tf.round(image), tf.uint8).numpy()


def test_training_batches_shapes_and_dtypes(vqa):
    ds = classification_dataset(vqa.splits["train"], vqa.label_names, text_preprocessor,
                                32, 4, training=True, seed=1, synthetic=vqa.synthetic)
    for x, y in ds.take(3):
        assert set(x) == {"images", "token_ids", "padding_mask"}
        assert x["images"].shape == (4, 32, 32, 3) and x["images"].dtype == tf.float32
        assert 0 <= x["images"].numpy().min() and x["images"].numpy().max() <= 255
        assert x["token_ids"].shape == (4, LENGTH) and x["token_ids"].dtype == tf.int32
        assert x["padding_mask"].dtype == tf.bool
        np.testing.assert_array_equal(x["padding_mask"], x["token_ids"].numpy() != 0)
        assert y.shape == (4,) and y.dtype == tf.int32
        assert 0 <= y.numpy().min() and y.numpy().max() < len(vqa.label_names)
    # Repeats forever: many more full batches than one epoch has.
    assert sum(1 for _ in ds.take(3 * len(vqa.splits["train"]))) == 3 * len(vqa.splits["train"])


def test_evaluation_is_one_pass_in_order_with_remainder(vqa):
    records = vqa.splits["test"][:10]
    ds = classification_dataset(records, vqa.label_names, text_preprocessor, 32, 4,
                                training=False, synthetic=vqa.synthetic)
    batches = list(ds)
    assert [len(y) for _, y in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([y for _, y in batches]),
                                  label_ids(records, vqa.label_names))
    tokens = np.concatenate([x["token_ids"] for x, _ in batches])
    expected = text_preprocessor(tf.constant(classification_texts(records)))["token_ids"]
    np.testing.assert_array_equal(tokens, expected)
    images = np.concatenate([x["images"] for x, _ in batches])
    for image, record in zip(images, records):
        np.testing.assert_array_equal(image, vqa.synthetic.render_image(record.image))


def test_multi_label_targets_are_multi_hot(multi_vqa):
    records = multi_vqa.splits["validation"]
    targets = label_ids(records, multi_vqa.label_names, multi_label=True)
    assert targets.shape == (len(records), len(multi_vqa.label_names))
    for row, record in zip(targets, records):
        assert {multi_vqa.label_names[i] for i in np.flatnonzero(row)} == set(record.labels)
    ds = classification_dataset(records, multi_vqa.label_names, text_preprocessor, 32, 3,
                                training=False, multi_label=True,
                                synthetic=multi_vqa.synthetic)
    ys = [y for _, y in ds]
    assert ys[0].dtype == tf.float32 and ys[0].shape == (3, len(multi_vqa.label_names))
    np.testing.assert_array_equal(np.concatenate(ys), targets)
    # Some examples carry several labels.
    assert targets.sum(axis=1).max() > 1


def test_training_order_is_reproducible_for_a_seed(vqa):
    def labels(seed):
        ds = classification_dataset(vqa.splits["train"], vqa.label_names,
                                    text_preprocessor, 32, 4, training=True, seed=seed,
                                    synthetic=vqa.synthetic)
        return np.concatenate([y for _, y in ds.take(8)])

    np.testing.assert_array_equal(labels(5), labels(5))
    assert not np.array_equal(labels(5), labels(6))


@pytest.mark.parametrize("cache", [True, False])
def test_each_example_gets_its_own_image(image_files, cache):
    records = file_records(image_files)
    names = [f"image{i}" for i in range(len(image_files))]
    expected = [decoded(path, 16) for path in image_files]
    # Evaluation, in record order: image and label of every example.
    ds = classification_dataset(records, names, text_preprocessor, 16, 4, training=False,
                                cache=cache)
    images = np.concatenate([x["images"] for x, _ in ds])
    assert len(images) == len(records)
    for image, record in zip(images, records):
        np.testing.assert_array_equal(image, expected[names.index(record.labels[0])])
    # Training, shuffled: the label says which image each example must show.
    ds = classification_dataset(records, names, text_preprocessor, 16, 4, training=True,
                                seed=2, cache=cache)
    for x, y in ds.take(10):
        for image, label in zip(x["images"].numpy(), y.numpy()):
            np.testing.assert_array_equal(image, expected[label])


def test_cache_loads_each_distinct_image_once(image_files, monkeypatch):
    calls = []
    real_loader = caption_pipeline.image_loader

    def counting_loader(records, image_size, synthetic=None):
        load = real_loader(records, image_size, synthetic)

        def counted(image_id):
            tf.py_function(lambda i: calls.append(i.numpy()) or 0, [image_id], tf.int32)
            return load(image_id)

        return counted

    monkeypatch.setattr("mmkeras.data.classification_pipeline.image_loader", counting_loader)
    records = file_records(image_files)
    ds = classification_dataset(records, [f"image{i}" for i in range(5)],
                                text_preprocessor, 16, 4, training=True)
    for _ in ds.take(20):
        pass
    assert sorted(calls) == sorted(p.encode() for p in image_files)


def undecodable_png(path):
    """Passes the cheap header/end check of records.py but does not decode."""
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not png data" * 8
                     + b"\x00\x00\x00\x00IEND\xaeB`\x82")
    return str(path)


@pytest.mark.parametrize("cache", [True, False])
def test_undecodable_image_is_dropped_with_skip_bad_examples(image_files, tmp_path,
                                                             cache):
    bad = undecodable_png(tmp_path / "bad.png")
    paths = image_files[:2] + [bad]
    records = file_records(paths)
    names = ["image0", "image1", "image2"]
    ds = classification_dataset(records, names, text_preprocessor, 16, 4, training=False,
                                cache=cache, skip_bad_examples=True)
    labels = np.concatenate([y for _, y in ds])
    # The three examples of the bad image are gone, the others kept in order.
    np.testing.assert_array_equal(labels, [0, 1] * 3)
    if cache:
        with pytest.raises(BadExampleError, match="manifest row 2") as error:
            classification_dataset(records, names, text_preprocessor, 16, 4,
                                   training=False)
        assert bad in str(error.value) and str(error.value).endswith(SKIP_HINT)


def test_augmentation_only_changes_training_images(vqa):
    records = vqa.splits["train"]
    plain = classification_dataset(records, vqa.label_names, text_preprocessor, 32, 4,
                                   training=True, seed=1, synthetic=vqa.synthetic)
    augmented = classification_dataset(records, vqa.label_names, text_preprocessor, 32, 4,
                                       training=True, seed=1, synthetic=vqa.synthetic,
                                       augment=True)
    (x_plain, y_plain), = plain.take(1)
    (x_aug, y_aug), = augmented.take(1)
    np.testing.assert_array_equal(y_plain, y_aug)  # same order, same seed
    assert x_aug["images"].shape == x_plain["images"].shape
    assert not np.array_equal(x_aug["images"], x_plain["images"])
    evaluation = classification_dataset(records[:4], vqa.label_names, text_preprocessor,
                                        32, 4, training=False, synthetic=vqa.synthetic,
                                        augment=True)
    (x_eval, _), = evaluation.take(1)
    for image, record in zip(x_eval["images"].numpy(), records[:4]):
        np.testing.assert_array_equal(image, vqa.synthetic.render_image(record.image))


def test_label_ids_rejects_unknown_and_multiple_labels():
    record = ClassificationRecord("a.png", "q", ("cat",), "m.csv row 2")
    assert label_ids([record], ["dog", "cat"]).tolist() == [1]
    with pytest.raises(ValueError, match="m.csv row 2.*'cat'"):
        label_ids([record], ["dog"])
    two = ClassificationRecord("a.png", "q", ("cat", "dog"), "m.csv row 3")
    with pytest.raises(ValueError, match="m.csv row 3.*exactly one"):
        label_ids([two], ["dog", "cat"])
    np.testing.assert_array_equal(label_ids([two], ["dog", "cat"], multi_label=True),
                                  [[1.0, 1.0]])
