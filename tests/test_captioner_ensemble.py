"""Captioner ensembles: the mixture, decoding, shared backbones, saving, export, bad members."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from mmkeras.data.caption_pipeline import decode_images
from mmkeras.data.tokenizer import build_tokenizer, learn_vocabulary
from mmkeras.models import EnsembleImageEncoder, build_captioner_ensemble
from mmkeras.models.caption_search import sequence_scores
from mmkeras.models.shared_backbones import shared_feature_sources
from tests.backbone_fixtures import save_tiny_resnet_preset
from tests.test_export import serve_in_fresh_process
from tests.test_image_captioner import CAPTIONS, batch, tiny_captioner


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(learn_vocabulary(CAPTIONS * 50, 100))


def seeded(tokenizer, seed, **kwargs):
    keras.utils.set_random_seed(seed)
    return tiny_captioner(tokenizer, **kwargs)


@pytest.fixture(scope="module")
def members(tokenizer):
    return [seeded(tokenizer, 0), seeded(tokenizer, 1)]


def numpy(x):
    return ops.convert_to_numpy(x)


@pytest.mark.parametrize("weights", [None, (3.0, 1.0)])
def test_next_word_distribution_is_the_weighted_mean_of_the_members(tokenizer, members, weights):
    x, _, _ = batch(tokenizer)
    ensemble = build_captioner_ensemble(members, weights=weights)
    member_probs = [numpy(ops.softmax(m(x, training=False)["logits"])) for m in members]
    assert not np.allclose(member_probs[0], member_probs[1], atol=1e-3), "members must differ for the test to mean anything"
    w = np.ones(2) if weights is None else np.asarray(weights)
    expected = np.einsum("mbtv,m->btv", np.stack(member_probs), w / w.sum())
    np.testing.assert_allclose(np.exp(numpy(ensemble(x, training=False)["logits"])), expected, atol=1e-6)


def test_a_captioner_with_itself_decodes_as_the_captioner(tokenizer, members):
    x, _, _ = batch(tokenizer)
    model = members[0]
    twice = build_captioner_ensemble([model, model])
    assert twice.image_encoder.feature_sources == [0, 0]  # one backbone pass
    for method in ("greedy", "beam"):
        options = {"no_repeat_ngram_size": 2, "length_penalty": 0.5}
        expected, got = model.generate(x["images"], method=method, **options), twice.generate(
            x["images"], method=method, **options)
        np.testing.assert_array_equal(numpy(got["token_ids"]), numpy(expected["token_ids"]))
        np.testing.assert_allclose(numpy(got["scores"]), numpy(expected["scores"]), atol=1e-5)


def test_a_zero_weight_member_changes_nothing(tokenizer, members):
    x, _, _ = batch(tokenizer)
    ensemble = build_captioner_ensemble(members, weights=(1.0, 0.0))
    assert ensemble.caption(x["images"], method="beam") == members[0].caption(x["images"], method="beam")
    other = build_captioner_ensemble(members, weights=(0.0, 1.0))
    assert other.caption(x["images"]) == members[1].caption(x["images"])


def test_cache_matches_recomputation_and_scores_match_teacher_forcing(tokenizer, members):
    x, _, _ = batch(tokenizer)
    ensemble = build_captioner_ensemble(members)
    for method in ("greedy", "beam"):
        cached = ensemble.generate(x["images"], method=method)
        uncached = ensemble.generate(x["images"], method=method, use_cache=False)
        np.testing.assert_array_equal(numpy(cached["token_ids"]), numpy(uncached["token_ids"]))
    greedy = ensemble.generate(x["images"])
    image_tokens = ensemble.image_encoder(x["images"], training=False)["tokens"]
    expected = sequence_scores(ensemble.text_decoder, image_tokens, greedy["token_ids"], ensemble.special_token_ids)
    np.testing.assert_allclose(numpy(greedy["scores"]), numpy(expected), atol=1e-5)
    # The attention read-out has each member's blocks in turn.
    maps = ensemble.compute_attention_maps(x["images"], x["token_ids"])
    assert len(maps) == sum(m.text_decoder.num_layers for m in members)


def test_identical_backbones_run_once_with_the_same_result(tokenizer):
    a, b = seeded(tokenizer, 0), seeded(tokenizer, 1)
    stem_weights = lambda m: [w for layer in m.image_encoder.stem for w in layer.weights]  # noqa: E731
    assert shared_feature_sources([a.image_encoder, b.image_encoder]) == [0, 1]
    for source, target in zip(stem_weights(a), stem_weights(b)):
        target.assign(source)
    encoders = [a.image_encoder, b.image_encoder]
    assert shared_feature_sources(encoders) == [0, 0]
    x, _, _ = batch(tokenizer)
    shared = EnsembleImageEncoder(encoders, feature_sources=[0, 0])(x["images"])["tokens"]
    separate = EnsembleImageEncoder(encoders)(x["images"])["tokens"]
    np.testing.assert_allclose(numpy(shared), numpy(separate), atol=1e-6)
    # The projections differ, so the members' halves do too.
    assert not np.allclose(numpy(shared)[..., :32], numpy(shared)[..., 32:], atol=1e-3)


def test_save_and_load_keep_the_ensemble(tokenizer, members, tmp_path):
    x, _, _ = batch(tokenizer)
    ensemble = build_captioner_ensemble(members, weights=(2.0, 1.0))
    path = str(tmp_path / "ensemble.keras")
    ensemble.save(path)
    restored = keras.saving.load_model(path)
    assert restored.text_decoder.member_weights == pytest.approx([2 / 3, 1 / 3])
    assert restored.image_encoder.feature_sources == [0, 1]
    np.testing.assert_allclose(numpy(restored(x)["logits"]), numpy(ensemble(x)["logits"]), atol=1e-6)
    for method in ("greedy", "beam"):
        assert restored.caption(x["images"], method=method) == ensemble.caption(x["images"], method=method)


def test_members_over_one_preset_hold_and_save_its_backbone_once(tokenizer, tmp_path):
    import shutil

    from mmkeras.data.tokenizer import special_token_ids
    from mmkeras.models import build_image_captioner

    preset_dir = save_tiny_resnet_preset(tmp_path / "resnet_preset", 32)
    ids = special_token_ids(tokenizer)
    members = []
    for seed in (0, 1):
        keras.utils.set_random_seed(seed)
        members.append(build_image_captioner(
            vocabulary_size=tokenizer.vocabulary_size(), sequence_length=8, image_size=32, hidden_dim=32,
            num_layers=1, num_heads=2, intermediate_dim=48, backbone_preset=preset_dir, tokenizer=tokenizer,
            start_token_id=ids["start"], end_token_id=ids["end"], pad_token_id=ids["pad"]))
    paths = [str(tmp_path / f"member_{i}.keras") for i in range(2)]
    for member, path in zip(members, paths):
        member.save(path)
    x, _, _ = batch(tokenizer)
    member_probs = [numpy(ops.softmax(m(x, training=False)["logits"])) for m in members]

    ensemble = build_captioner_ensemble(members)
    encoders = ensemble.image_encoder.encoders
    assert ensemble.image_encoder.feature_sources == [0, 0]
    assert encoders[1].backbone is encoders[0].backbone
    assert encoders[1].backbone_preset == preset_dir  # its config still says where the backbone came from
    backbone_size = sum(int(np.prod(w.shape)) for w in encoders[0].backbone.weights)
    assert ensemble.count_params() == sum(m.count_params() for m in members) - backbone_size
    # Member 1's copy computes what member 1 did: its projection weights came along.
    np.testing.assert_allclose(np.exp(numpy(ensemble(x, training=False)["logits"])), np.mean(member_probs, axis=0),
                               atol=1e-6)

    path = str(tmp_path / "ensemble.keras")
    ensemble.save(path)
    shutil.rmtree(preset_dir)  # the saved ensemble needs no preset folder
    restored = keras.saving.load_model(path)
    restored_encoders = restored.image_encoder.encoders
    assert restored_encoders[1].backbone is restored_encoders[0].backbone
    np.testing.assert_allclose(numpy(restored(x, training=False)["logits"]),
                               numpy(ensemble(x, training=False)["logits"]), atol=1e-6)
    # One backbone in the file: smaller than the two members' files together by about one backbone.
    member_bytes = sum(os.path.getsize(p) for p in paths)
    assert os.path.getsize(path) < member_bytes - 0.8 * 4 * backbone_size


@pytest.mark.slow
def test_export_serves_the_ensembles_captions(tokenizer, members, tmp_path):
    from serving.export import export_captioner

    ensemble = build_captioner_ensemble(members)
    path = export_captioner(ensemble, str(tmp_path / "saved_models"), "captioner_ensemble", num_beams=3)
    rng = np.random.default_rng(0)
    jpegs = [tf.io.encode_jpeg(rng.integers(0, 255, (40, 52, 3), dtype=np.uint8)).numpy() for _ in range(2)]
    served = serve_in_fresh_process(path, jpegs, tmp_path)
    pixels = decode_images(tf.constant(jpegs), ensemble.image_size)
    for name, method in (("serving_default", "greedy"), ("beam_search", "beam")):
        assert served[name]["captions"] == ensemble.caption(pixels, method=method)


def test_members_that_cannot_combine_are_named(tokenizer, members):
    with pytest.raises(ValueError, match="at least 2 captioners"):
        build_captioner_ensemble(members[:1])
    with pytest.raises(ValueError, match="Member 0 is an ensemble already"):
        build_captioner_ensemble([build_captioner_ensemble(members), members[0]])
    with pytest.raises(ValueError, match="Member 1 is a Dense"):
        build_captioner_ensemble([members[0], keras.layers.Dense(2)])
    other_vocabulary = seeded(build_tokenizer(learn_vocabulary(["a dog runs on grass"] * 50, 100)), 2)
    with pytest.raises(ValueError, match="share one vocabulary.*member 1"):
        build_captioner_ensemble([members[0], other_vocabulary])
    with pytest.raises(ValueError, match="same sequence_length"):
        build_captioner_ensemble([members[0], seeded(tokenizer, 3, sequence_length=10)])
    encoders = [m.image_encoder for m in members]
    for sources in ([1, 1], [0], [0, 2]):  # a later source, too few, out of range
        with pytest.raises(ValueError, match="feature_sources"):
            EnsembleImageEncoder(encoders, feature_sources=sources)
    for weights, message in (((1.0,), "one weight per member"), ((1.0, -1.0), ">= 0"), ((0.0, 0.0), "not all 0")):
        with pytest.raises(ValueError, match=message):
            build_captioner_ensemble(members, weights=weights)
