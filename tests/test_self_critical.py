"""Self-critical sequence training: the CIDEr-D reward, the training step, the data and the task."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from mmkeras.data import caption_pipeline
from mmkeras.data.records import CaptionRecord
from mmkeras.data.tokenizer import build_tokenizer, learn_vocabulary, special_token_ids
from mmkeras.metrics import CIDErScorer, cider
from mmkeras.models import build_image_captioner
from mmkeras.models.self_critical import CIDErReward, self_critical_batch
from tests import training_fixtures as tfx
from training.tasks.base import ConfigError

CAPTIONS = ["a red circle", "a blue square", "two green triangles", "a big blue square"]
REFERENCES = [
    ["a dog runs on the grass", "a brown dog is running"],
    ["a cat sleeps on a bed", "the cat is asleep"],
    ["two men ride bikes", "men are riding bicycles"],
    ["a child plays in the water", "a kid splashes in a pool"],
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(learn_vocabulary(CAPTIONS * 50, 100))


def tiny_captioner(tokenizer, sequence_length=8, dropout=0.0):
    ids = special_token_ids(tokenizer)
    return build_image_captioner(
        vocabulary_size=tokenizer.vocabulary_size(), sequence_length=sequence_length, image_size=32,
        hidden_dim=32, num_layers=1, num_heads=2, intermediate_dim=48, stem_filters=(8, 16),
        dropout=dropout, tokenizer=tokenizer, start_token_id=ids["start"], end_token_id=ids["end"],
        pad_token_id=ids["pad"],
    )


def teacher_forcing_batch(tokenizer, n=8, sequence_length=8, seed=0):
    rng = np.random.default_rng(seed)
    packer_ids = special_token_ids(tokenizer)
    tokens = np.full((n, sequence_length + 1), packer_ids["pad"], "int32")
    for i in range(n):
        words = [tokenizer.token_to_id(w) for w in CAPTIONS[i % len(CAPTIONS)].split()]
        row = [packer_ids["start"], *words, packer_ids["end"]]
        tokens[i, : len(row)] = row
    mask = (tokens != packer_ids["pad"]).astype("int32")
    x = {
        "images": rng.uniform(0, 255, (n, 32, 32, 3)).astype("float32"),
        "token_ids": tokens[:, :-1],
        "padding_mask": mask[:, :-1],
        "image_index": np.arange(n, dtype="int64"),
    }
    return x, tokens[:, 1:], mask[:, 1:].astype("float32")


def test_cider_scorer_scores_each_prediction_against_its_image():
    predictions = ["a dog runs", "a cat on a bed", "men riding bikes", "a kid in water"]
    total, per_image = cider(predictions, REFERENCES, return_per_image=True)
    scorer = CIDErScorer(REFERENCES)
    np.testing.assert_allclose(scorer.score(predictions), per_image, rtol=0, atol=1e-12)
    # Any subset, in any order, scores against the whole corpus's idf.
    np.testing.assert_allclose(
        scorer.score([predictions[2], predictions[0]], image_indices=[2, 0]), per_image[[2, 0]], atol=1e-12
    )
    # The same caption scores by the image it is paired with.
    off, on = scorer.score(["a dog runs", "a dog runs"], image_indices=[1, 0])
    assert on > 1.0 and off < on / 10  # only "a" is shared with the cat's references
    with pytest.raises(ValueError, match="outside the corpus of 4 images"):
        scorer.score(["a dog"], image_indices=[4])
    with pytest.raises(ValueError, match="one image per prediction"):
        scorer.score(["a dog", "a cat"], image_indices=[0])


def test_cider_reward_reads_words_up_to_the_end_token():
    vocabulary = ["[PAD]", "[UNK]", "[START]", "[END]", "a", "dog", "runs", "cat", "sle", "##eps"]
    reward = CIDErReward(REFERENCES, vocabulary, end_token_id=3, pad_token_id=0, start_token_id=2)
    token_ids = np.array([
        [2, 4, 5, 6, 3, 7, 7],   # "a dog runs", then junk after the end token
        [2, 4, 7, 8, 9, 3, 0],   # "a cat sleeps" from WordPiece pieces
        [2, 4, 5, 6, 0, 0, 0],   # no end token: cut at padding
    ])
    assert reward.captions(token_ids) == ["a dog runs", "a cat sleeps", "a dog runs"]
    rewards = reward(np.array([0, 1, 3]), token_ids)
    assert rewards.dtype == np.float32
    expected = CIDErScorer(REFERENCES).score(["a dog runs", "a cat sleeps", "a dog runs"], [0, 1, 3])
    np.testing.assert_allclose(rewards, expected, rtol=1e-6)
    assert rewards[0] > 1.0 and rewards[1] > 1.0 and rewards[2] < rewards[0] / 10
    with pytest.raises(ValueError, match="at least 2 images"):
        CIDErReward(REFERENCES[:1], vocabulary, 3, 0, 2)


def test_self_critical_batch_weights_samples_by_their_advantage(tokenizer):
    model = tiny_captioner(tokenizer)
    x, _, _ = teacher_forcing_batch(tokenizer, n=8)
    model(x)
    calls = []

    def reward(image_index, token_ids):
        calls.append((image_index, token_ids))
        return np.arange(len(token_ids), dtype=np.float32)  # sample j of an image gets j (+ offset)

    inputs, targets, weights, counted, mean_reward = self_critical_batch(
        model, {k: v for k, v in x.items() if k != "image_index"}, tf.constant(x["image_index"]), reward,
        num_samples=4, step=tf.constant(7, tf.int64),
    )
    # 8 images // 4 samples = the first 2 images, 4 captions each.
    image_index, token_ids = calls[0]
    assert image_index.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert inputs["images"].shape == (8, 32, 32, 3) and targets.shape == (8, 8)
    np.testing.assert_array_equal(inputs["images"][4], x["images"][1])
    # Teacher-forcing layout of the samples: targets are the inputs shifted left.
    np.testing.assert_array_equal(np.asarray(inputs["token_ids"])[:, 1:], np.asarray(targets)[:, :-1])
    np.testing.assert_array_equal(np.asarray(inputs["token_ids"])[:, :8], np.asarray(token_ids))
    # Advantage = reward - mean of the image's other samples: 0..3 -> -2, -2/3, 2/3, 2.
    advantages = np.asarray(weights).sum(axis=1) / np.maximum(np.asarray(counted).sum(axis=1), 1)
    np.testing.assert_allclose(advantages, [-2, -2 / 3, 2 / 3, 2] * 2, rtol=1e-5)
    assert float(mean_reward) == pytest.approx(3.5)
    # Weights vanish exactly on padding targets.
    assert np.all((np.asarray(weights) == 0) | (np.asarray(counted) == 1))
    # Draws are a function of the step.
    again = self_critical_batch(
        model, {k: v for k, v in x.items() if k != "image_index"}, tf.constant(x["image_index"]), reward,
        num_samples=4, step=tf.constant(7, tf.int64),
    )
    np.testing.assert_array_equal(again[0]["token_ids"], inputs["token_ids"])


def test_self_critical_training_raises_the_reward(tokenizer):
    """From a random model, the policy gradient alone must learn what the reward wants."""
    keras.utils.set_random_seed(0)
    model = tiny_captioner(tokenizer)
    target = tokenizer.token_to_id("blue")

    def reward(image_index, token_ids):
        # The share of generated positions (up to 7) holding "blue".
        return (np.asarray(token_ids)[:, 1:] == target).mean(axis=1).astype(np.float32)

    model.enable_self_critical(reward, from_step=0, num_samples=4)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    x, y, w = teacher_forcing_batch(tokenizer, n=16)
    history = model.fit(x, y, sample_weight=w, batch_size=16, epochs=40, verbose=0).history
    assert history["reward"][0] < 0.2
    assert np.mean(history["reward"][-5:]) > 0.6, history["reward"]
    words = " ".join(model.caption(x["images"][:4])).split()
    assert words.count("blue") > 0.6 * len(words), words


def test_teacher_forcing_until_from_step(tokenizer):
    x, y, w = teacher_forcing_batch(tokenizer, n=8)

    def trained(enable, epochs):
        keras.utils.set_random_seed(1)
        model = tiny_captioner(tokenizer)
        if enable:
            model.enable_self_critical(lambda i, t: np.ones(len(t), np.float32) * 0.5, from_step=3, num_samples=2)
        model.compile(optimizer=keras.optimizers.Adam(1e-2))
        history = model.fit(x, y, sample_weight=w, batch_size=8, epochs=epochs, verbose=0, shuffle=False).history
        return model, history

    plain, _ = trained(False, 3)
    early, history = trained(True, 3)
    for a, b in zip(plain.trainable_weights, early.trainable_weights):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert history["reward"] == [0.0, 0.0, 0.0]
    assert "reward" not in plain.get_metrics_result()
    later, history = trained(True, 4)
    assert history["reward"][-1] == pytest.approx(0.5)
    # A constant reward has zero advantage: self-critical steps leave the
    # weights where teacher forcing left them (Adam's moments still decay).
    assert history["loss"][-1] == pytest.approx(0.0, abs=1e-6)


def test_self_critical_needs_image_index_and_valid_settings(tokenizer):
    model = tiny_captioner(tokenizer)
    model.enable_self_critical(lambda i, t: np.zeros(len(t), np.float32), num_samples=2)
    model.compile(optimizer="adam")
    x, y, w = teacher_forcing_batch(tokenizer, n=4)
    del x["image_index"]
    with pytest.raises(ValueError, match="image_index"):
        model.fit(x, y, sample_weight=w, batch_size=4, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="num_samples"):
        model.enable_self_critical(lambda i, t: i, num_samples=1)
    with pytest.raises(ValueError, match="from_step"):
        model.enable_self_critical(lambda i, t: i, from_step=-1)
    model.disable_self_critical()
    assert "reward" not in [m.name for m in model.metrics]


@pytest.mark.parametrize("cached", [False, True])
def test_caption_dataset_image_index_points_at_the_records_references(tokenizer, cached, tmp_path):
    rng = np.random.default_rng(0)
    records = []
    for i in range(6):
        path = str(tmp_path / f"img{i}.png")
        tf.io.write_file(path, tf.io.encode_png(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)))
        records.append(CaptionRecord(path, (CAPTIONS[i % 4], CAPTIONS[(i + 1) % 4]), f"row {i}"))

    extractor = None
    if cached:
        extractor = lambda batch: tf.reduce_mean(tf.cast(batch, tf.float32), axis=(1, 2))[:, None, :]
    ds = caption_pipeline.caption_dataset(
        records, tokenizer, 32, 8, 4, training=True, feature_extractor=extractor,
        with_image_index=True,
    )
    id_to_word = tokenizer.get_vocabulary()
    for x, y, _ in ds.take(6):
        for index, row in zip(x["image_index"].numpy(), y.numpy()):
            words = [id_to_word[t] for t in row if t > 3]
            assert " ".join(words) in records[index].captions
    plain = caption_pipeline.caption_dataset(records, tokenizer, 32, 8, 4, training=True)
    assert "image_index" not in next(iter(plain))[0]


def test_caption_task_trains_self_critically(tmp_path):
    overrides = ["train.steps=12", "caption.self_critical_from_step=8", "caption.self_critical_samples=2",
                 "train.log_every=1", "train.checkpoint_every=0"]
    task, model = tfx.train_in_process("caption_tiny", overrides, tmp_path)
    rows = [json.loads(line) for line in open(os.path.join(tmp_path, "logs", "train_log.jsonl"))]
    rows = [r for r in rows if "reward" in r]
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert all(r["reward"] == 0 for r in rows[:8]) and all(r["reward"] > 0 for r in rows[8:])
    assert all(r["token_accuracy"] > 0 for r in rows[:8]) and all(r["token_accuracy"] == 0 for r in rows[8:])


@pytest.mark.parametrize("setting, message", [
    ("train.jit_compile=true", "XLA"),
    ("train.early_stopping_patience=2", "early_stopping_patience=0"),
    ("caption.self_critical_samples=1", ">= 2"),
])
def test_self_critical_config_errors(tmp_path, setting, message):
    with pytest.raises(ConfigError, match=message):
        tfx.train_in_process("caption_tiny", ["train.steps=2", "caption.self_critical_from_step=1", setting], tmp_path)


def test_self_critical_refuses_streamed_tfrecords(tmp_path):
    from mmkeras.data import tfrecords
    from training import config as config_lib
    from training import named_experiments
    from training.tasks.caption import CaptionTask

    records = []
    for i in range(4):
        path = str(tmp_path / f"img{i}.png")
        tf.io.write_file(path, tf.io.encode_png(np.full((8, 8, 3), 40 * i, np.uint8)))
        records.append(CaptionRecord(path, (CAPTIONS[i],), f"row {i}"))
    shards = str(tmp_path / "shards")
    examples = [("train", r) for r in records] + [("validation", records[0]), ("test", records[1])]
    tfrecords.write_caption_shards(examples, shards, num_shards=1)
    cfg = config_lib.override(named_experiments.get_experiment("caption_tiny"), [
        f"data.spec=tfrecord:{shards}", "caption.self_critical_from_step=1"])
    task = CaptionTask(cfg, str(tmp_path / "run"))
    os.makedirs(task.model_dir)
    task.load_data()
    with pytest.raises(ConfigError, match="TFRecord shards"):
        task.build_model()


def test_training_curves_draw_the_reward_only_where_it_was_measured(tmp_path):
    from PIL import Image

    from mmkeras.metrics.plots import plot_training_curves

    teacher = [{"step": s, "loss": 3.0 / s, "token_accuracy": 0.1 * s, "reward": 0.0, "learning_rate": 1e-3}
               for s in (1, 2, 3)]
    critical = [{"step": s, "loss": -0.05, "token_accuracy": 0.0, "reward": 0.3 + 0.01 * s, "learning_rate": 1e-4}
                for s in (4, 5)]
    widths = {}
    for name, records in (("teacher", teacher), ("both", teacher + critical)):
        path = plot_training_curves(records, str(tmp_path / f"{name}.png"))
        widths[name] = Image.open(path).size[0]
    # 4 inches a panel: loss, accuracy, learning rate, and the reward once it exists.
    assert widths["teacher"] == 1200 and widths["both"] == 1600
