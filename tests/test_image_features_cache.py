"""Cached image features of a frozen image encoder: same data, same training."""

import numpy as np
import pytest

from mmkeras.data import caption_pipeline
from mmkeras.data.classification_pipeline import classification_dataset
from mmkeras.data.image_table import feature_table
from mmkeras.data.image_table import view_feature_table
from mmkeras.data.records import CaptionRecord
from mmkeras.data.synthetic_captions import SyntheticCaptions
from mmkeras.data.synthetic_vqa import load_synthetic_vqa
from mmkeras.data.text_preprocessor import text_preprocessor_from_vocabulary
from mmkeras.data.tokenizer import build_tokenizer, learn_vocabulary
from mmkeras.layers import ImageEncoder
from training import config as config_lib
from training import finetune
from tests.training_fixtures import train_in_process

IMAGE_SIZE = 32


def _extractor():
    encoder = ImageEncoder(hidden_dim=8, stem_filters=(4, 8))
    encoder.build((None, IMAGE_SIZE, IMAGE_SIZE, 3))
    return encoder, lambda images: encoder.features(images, training=False)


def _caption_records(n=6):
    return [CaptionRecord(f"synthetic:train:{i}", (f"caption {i}", f"other {i}"), f"row {i}") for i in range(n)]


def test_caption_dataset_serves_the_extractors_features():
    synthetic = SyntheticCaptions(image_size=IMAGE_SIZE, num_train=6, num_validation=1, num_test=1)
    records = _caption_records()
    tokenizer = build_tokenizer(learn_vocabulary(["caption other 0 1 2 3 4 5"], 50, level="word"))
    encoder, extract = _extractor()
    kwargs = dict(tokenizer=tokenizer, image_size=IMAGE_SIZE, sequence_length=6, batch_size=12,
                  training=False, synthetic=synthetic)
    plain = next(iter(caption_pipeline.caption_dataset(records, **kwargs)))
    cached = next(iter(caption_pipeline.caption_dataset(records, feature_extractor=extract, **kwargs)))
    assert "images" not in cached[0] and "image_features" in cached[0]
    expected = encoder.features(plain[0]["images"], training=False)
    np.testing.assert_allclose(cached[0]["image_features"].numpy(), expected.numpy(), atol=1e-5)
    np.testing.assert_array_equal(cached[0]["token_ids"].numpy(), plain[0]["token_ids"].numpy())
    np.testing.assert_array_equal(cached[1].numpy(), plain[1].numpy())
    with pytest.raises(ValueError, match="feature_views"):
        caption_pipeline.caption_dataset(records, feature_extractor=extract, augment=True,
                                         **{**kwargs, "training": True})


def test_feature_views_serve_augmented_versions_of_each_image():
    synthetic = SyntheticCaptions(image_size=IMAGE_SIZE, num_train=6, num_validation=1, num_test=1)
    records = _caption_records()
    tokenizer = build_tokenizer(learn_vocabulary(["caption other 0 1 2 3 4 5"], 50, level="word"))
    encoder, extract = _extractor()
    table = np.stack([synthetic.render_image(r.image) for r in records])
    views = view_feature_table(table, extract, caption_pipeline.build_augmenter(0), views=3)
    plain = feature_table(table, extract)
    assert views.shape == (18,) + plain.shape[1:]
    np.testing.assert_allclose(views[0::3], plain, atol=1e-5)  # view 0: the image itself
    for v in (1, 2):
        assert np.abs(views[v::3] - plain).max() > 1e-2  # augmented, and not alike
    assert np.abs(views[1::3] - views[2::3]).max() > 1e-2

    ds = caption_pipeline.caption_dataset(
        records, tokenizer, IMAGE_SIZE, 6, 6, training=True, synthetic=synthetic, feature_extractor=extract,
        augment=True, feature_views=3, with_image_index=True,
    )
    used = set()
    for x, _, _ in ds.take(10):
        for index, features in zip(x["image_index"].numpy(), x["image_features"].numpy()):
            distances = np.abs(views[index * 3: index * 3 + 3] - features).reshape(3, -1).max(axis=1)
            assert distances.min() < 1e-6, "a served feature is none of its image's views"
            used.add(int(np.argmin(distances)))
    assert used == {0, 1, 2}


def _vqa_dataset_arguments():
    """`(records, classification_dataset kwargs, encoder, its extractor)` of a few synthetic VQA examples."""
    data = load_synthetic_vqa(image_size=IMAGE_SIZE, num_train=4, num_validation=1, num_test=1)
    records = data.splits["train"][:8]
    vocabulary = learn_vocabulary([r.text for r in records], 60, level="word")
    kwargs = dict(label_names=data.label_names, text_preprocessor=text_preprocessor_from_vocabulary(vocabulary, 12),
                  image_size=IMAGE_SIZE, batch_size=8, synthetic=data.synthetic)
    return (records, kwargs, *_extractor())


def test_classification_dataset_serves_the_extractors_features():
    records, kwargs, encoder, extract = _vqa_dataset_arguments()
    plain = next(iter(classification_dataset(records, training=False, **kwargs)))
    cached = next(iter(classification_dataset(records, training=False, feature_extractor=extract, **kwargs)))
    expected = encoder.features(plain[0]["images"], training=False)
    np.testing.assert_allclose(cached[0]["image_features"].numpy(), expected.numpy(), atol=1e-5)
    np.testing.assert_array_equal(cached[1].numpy(), plain[1].numpy())


def test_classification_feature_views_serve_one_view_per_visit():
    records, kwargs, _, extract = _vqa_dataset_arguments()
    kwargs["feature_extractor"] = extract
    plain = next(iter(classification_dataset(records, training=False, **kwargs)))[0]["image_features"].numpy()
    with pytest.raises(ValueError, match="feature_views"):
        classification_dataset(records, training=True, augment=True, **kwargs)
    ds = classification_dataset(records, training=True, augment=True, feature_views=3, **kwargs)
    served = np.concatenate([x["image_features"].numpy() for x, _ in ds.take(6)])
    # Some served rows are an image's own features, the others augmented views.
    exact = [np.abs(plain - row).reshape(len(plain), -1).max(axis=1).min() < 1e-6 for row in served]
    assert any(exact) and not all(exact)


@pytest.mark.parametrize("experiment_name", ["caption_tiny", "classify_tiny"])
def test_frozen_encoder_trains_the_same_with_and_without_the_cache(tmp_path, experiment_name):
    # Frozen batch norm runs in inference mode either way, so caching changes
    # where the features are computed, not what the model learns.
    weights = {}
    for cache in (True, False):
        task, model = train_in_process(experiment_name, [
            "train.steps=6", "model.image_encoder.trainable=none", "model.dropout=0.0",
            f"data.cache_image_features={cache}", "classify.ablation=false",
        ], tmp_path / f"cache_{cache}")
        assert (task.image_feature_extractor is not None) == cache
        weights[cache] = [w.numpy() for w in model.trainable_weights]
    for a, b in zip(weights[True], weights[False]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_extractor_only_for_a_fully_frozen_encoder():
    data_cfg = config_lib.DataConfig()
    encoder = ImageEncoder(hidden_dim=8, stem_filters=(4, 8))
    assert finetune.image_feature_extractor(encoder, data_cfg) is None
    finetune.apply_trainable(encoder, "top:1")
    assert finetune.image_feature_extractor(encoder, data_cfg) is None
    finetune.apply_trainable(encoder, "none")
    assert finetune.image_feature_extractor(encoder, data_cfg) is not None
    augmenting = config_lib.DataConfig(augment=True)
    assert finetune.image_feature_extractor(encoder, augmenting) is None
    views = config_lib.DataConfig(augment=True, feature_views=4)
    assert finetune.image_feature_extractor(encoder, views) is not None
