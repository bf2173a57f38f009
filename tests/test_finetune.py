"""Freezing controls: `all`, `none`, `top:N` on both encoders."""

import keras
import numpy as np
import pytest

from mmkeras.layers import ImageEncoder
from mmkeras.layers.text_encoder import TextEncoder
from tests.backbone_fixtures import tiny_resnet_kwargs
from training import finetune


def image_encoder():
    encoder = ImageEncoder(hidden_dim=8, stem_filters=(4, 8, 8), convs_per_stage=1)
    encoder.build((None, 32, 32, 3))
    return encoder


def text_encoder():
    encoder = TextEncoder(vocabulary_size=20, sequence_length=6, hidden_dim=8, num_layers=3, num_heads=2,
                          intermediate_dim=16)
    encoder.build((None, 6))
    return encoder


def trainable_names(layer):
    return {w.path for w in layer.trainable_weights}


@pytest.mark.parametrize("make", [image_encoder, text_encoder])
def test_none_freezes_the_feature_extractor_but_not_the_projection(make):
    encoder = make()
    everything = trainable_names(encoder)
    frozen = finetune.apply_trainable(encoder, "none")
    assert frozen == len(finetune.feature_blocks(encoder)) >= 3
    left = trainable_names(encoder)
    assert left and left < everything
    for block in finetune.feature_blocks(encoder):
        for layer in block:
            assert not layer.trainable_weights


def hub_image_encoder():
    import keras_hub

    backbone = keras_hub.models.ResNetBackbone(**tiny_resnet_kwargs(16, stackwise_num_filters=(64, 64)))
    encoder = ImageEncoder(hidden_dim=8, backbone=backbone)
    encoder.build((None, 16, 16, 3))
    return encoder


def hub_text_encoder():
    import keras_hub

    backbone = keras_hub.models.BertBackbone(vocabulary_size=30, num_layers=2, num_heads=2, hidden_dim=8,
                                             intermediate_dim=16, max_sequence_length=6)
    encoder = TextEncoder(vocabulary_size=30, sequence_length=6, hidden_dim=8, backbone=backbone)
    encoder.build((None, 6))
    return encoder


def hub_image_encoder_by_class():
    """A backbone built from its class: at every build its input layer gets a new numbered name."""
    kwargs = tiny_resnet_kwargs(16, stackwise_num_filters=(64, 64))
    encoder = ImageEncoder(hidden_dim=8, backbone_class="ResNetBackbone", backbone_kwargs=kwargs)
    encoder.build((None, 16, 16, 3))
    return encoder


@pytest.mark.parametrize("make", [image_encoder, text_encoder, hub_image_encoder, hub_text_encoder,
                                  hub_image_encoder_by_class])
@pytest.mark.parametrize("setting", ["none", "top:1"])
def test_frozen_layers_stay_frozen_after_saving(make, setting):
    """The encoder's config records what is frozen: a reloaded model trains what the run trained."""
    encoder = make()
    everything = trainable_names(encoder)
    finetune.apply_trainable(encoder, setting)
    assert trainable_names(encoder) < everything
    restored = keras.layers.deserialize(keras.layers.serialize(encoder))
    assert restored.built
    assert trainable_names(restored) == trainable_names(encoder)
    assert finetune.is_frozen(restored) == (setting == "none")
    if setting == "none" and encoder.backbone is not None:
        assert not restored.backbone_trainable


def test_a_wholly_frozen_encoder_reloads_around_a_rebuilt_backbone():
    """As an ensemble freezes its members: weightless layers (numbered input layers) are not recorded."""
    encoder = hub_image_encoder_by_class()
    encoder.trainable = False
    assert all(not name.startswith("input_layer") for name in encoder.get_config()["frozen_layers"])
    restored = keras.layers.deserialize(keras.layers.serialize(encoder))
    assert not restored.trainable_weights and finetune.is_frozen(restored)


def test_frozen_layers_naming_unknown_layers_fail_clearly():
    with pytest.raises(ValueError, match="no_such_layer"):
        ImageEncoder(hidden_dim=8, stem_filters=(4,), frozen_layers=["stem_0_conv_0", "no_such_layer"])
    with pytest.raises(ValueError, match="block_9"):
        TextEncoder(vocabulary_size=20, sequence_length=6, hidden_dim=8, num_layers=1, num_heads=2,
                    frozen_layers=["block_9"])


def test_top_n_trains_only_the_top_blocks():
    encoder = image_encoder()
    assert finetune.apply_trainable(encoder, "top:1") == 2
    blocks = finetune.feature_blocks(encoder)
    assert all(not layer.trainable for block in blocks[:2] for layer in block)
    assert all(layer.trainable for layer in blocks[2])
    # A frozen batch norm runs on its moving statistics, also when training.
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    norm = blocks[0][1]
    before = norm.moving_mean.numpy().copy()
    encoder(images, training=True)
    np.testing.assert_array_equal(before, norm.moving_mean.numpy())


def test_text_top_n_counts_transformer_layers():
    encoder = text_encoder()
    # Embedding + 3 Transformer layers; top:2 freezes the embedding and one layer.
    assert finetune.apply_trainable(encoder, "top:2") == 2
    assert not encoder.embedding.trainable and not encoder.blocks[0].trainable
    assert encoder.blocks[1].trainable and encoder.blocks[2].trainable


def test_all_changes_nothing_and_bad_values_name_the_field():
    encoder = image_encoder()
    before = trainable_names(encoder)
    assert finetune.apply_trainable(encoder, "all") == 0
    assert trainable_names(encoder) == before
    with pytest.raises(ValueError, match=r"model.image_encoder.trainable=.top-2."):
        finetune.apply_trainable(encoder, "top-2", "model.image_encoder.trainable")


def test_frozen_weights_do_not_move_in_a_fit_step():
    encoder = image_encoder()
    finetune.apply_trainable(encoder, "top:1")
    inputs = keras.Input((32, 32, 3))
    model = keras.Model(inputs, encoder(inputs)["pooled"])
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    frozen = finetune.feature_blocks(encoder)[0][0].kernel
    top = finetune.feature_blocks(encoder)[2][0].kernel
    frozen_before, top_before = frozen.numpy().copy(), top.numpy().copy()
    rng = np.random.default_rng(1)
    model.fit(rng.uniform(0, 255, (4, 32, 32, 3)), rng.normal(size=(4, 8)), verbose=0)
    np.testing.assert_array_equal(frozen_before, frozen.numpy())
    assert not np.allclose(top_before, top.numpy())


def test_image_token_dropout_reaches_every_model_family():
    """`model.image_encoder.dropout` is one setting for captioner, classifier and dual encoder."""
    from mmkeras.data.tokenizer import build_tokenizer, learn_vocabulary
    from mmkeras.models import build_dual_encoder, build_fusion_classifier
    from training import config as config_lib
    from training.tasks import caption
    from training.tasks.base import image_encoder_kwargs

    cfg = config_lib.override(config_lib.ExperimentConfig(), [
        "model.image_encoder.dropout=0.5", "model.hidden_dim=16", "model.intermediate_dim=16",
        "model.num_layers=1", "model.image_encoder.stem_filters=(4,8)", "data.image_size=16",
    ])
    tokenizer = build_tokenizer(learn_vocabulary(["a red circle", "a blue square"] * 5, 30, level="word"))
    kwargs = image_encoder_kwargs(cfg.model.image_encoder)
    models = {
        "captioner": caption.build_model(cfg, tokenizer),
        "classifier": build_fusion_classifier(3, image_size=16, vocabulary_size=30, hidden_dim=16, num_heads=2,
                                              intermediate_dim=16, image_encoder_kwargs=kwargs),
        "dual_encoder": build_dual_encoder(image_size=16, vocabulary_size=30, hidden_dim=16, num_heads=2,
                                           intermediate_dim=16, projection_dim=8, image_encoder_kwargs=kwargs),
    }
    images = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)).astype("float32")
    for name, model in models.items():
        encoder = model.image_encoder
        assert encoder.dropout == 0.5 and encoder.get_config()["dropout"] == 0.5, name
        inference = [np.asarray(encoder(images, training=False)["tokens"]) for _ in range(2)]
        np.testing.assert_array_equal(*inference)
        dropped = np.asarray(encoder(images, training=True)["tokens"])
        assert 0.3 < np.mean(dropped == 0) < 0.7, (name, np.mean(dropped == 0))
    default = build_fusion_classifier(3, image_size=16, vocabulary_size=30, hidden_dim=16, num_heads=2,
                                      intermediate_dim=16,
                                      image_encoder_kwargs=image_encoder_kwargs(config_lib.ImageEncoderConfig()))
    assert default.image_encoder.dropout == 0.0
