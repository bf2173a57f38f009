"""Cached image features of a frozen image encoder: same data, same training."""

import numpy as np
import pytest

from mmkeras.data import caption_pipeline
from mmkeras.data.classification_pipeline import classification_dataset
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
    with pytest.raises(ValueError, match="augment=True"):
        caption_pipeline.caption_dataset(records, feature_extractor=extract, augment=True, **kwargs)


def test_classification_dataset_serves_the_extractors_features():
    data = load_synthetic_vqa(image_size=IMAGE_SIZE, num_train=4, num_validation=1, num_test=1)
    records = data.splits["train"][:8]
    vocabulary = learn_vocabulary([r.text for r in records], 60, level="word")
    preprocessor = text_preprocessor_from_vocabulary(vocabulary, 12)
    encoder, extract = _extractor()
    kwargs = dict(label_names=data.label_names, text_preprocessor=preprocessor, image_size=IMAGE_SIZE,
                  batch_size=8, training=False, synthetic=data.synthetic)
    plain = next(iter(classification_dataset(records, **kwargs)))
    cached = next(iter(classification_dataset(records, feature_extractor=extract, **kwargs)))
    expected = encoder.features(plain[0]["images"], training=False)
    np.testing.assert_allclose(cached[0]["image_features"].numpy(), expected.numpy(), atol=1e-5)
    np.testing.assert_array_equal(cached[1].numpy(), plain[1].numpy())


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
