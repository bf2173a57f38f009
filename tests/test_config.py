"""Experiments, overrides and the JSON round trip of the config."""

import dataclasses
import json

import pytest

from training import config as config_lib
from training import named_experiments
from training.tasks import TASK_NAMES, get_task


@pytest.mark.parametrize("name", sorted(named_experiments.EXPERIMENTS))
def test_every_experiment_round_trips_through_json(name):
    cfg = named_experiments.get_experiment(name)
    assert cfg.task in TASK_NAMES
    restored = config_lib.from_dict(config_lib.ExperimentConfig, json.loads(config_lib.to_json(cfg)))
    assert restored == cfg
    # The experiment's data kind is one its task reads.
    kind = cfg.data.spec.partition(":")[0]
    assert kind in get_task(cfg.task).data_kinds


def test_default_experiments_match_their_tasks():
    for task, name in named_experiments.DEFAULT_EXPERIMENTS.items():
        assert named_experiments.get_experiment(name).task == task


def test_data_sets_with_their_own_experiment_pick_it():
    assert named_experiments.default_experiment("vqa", "easy_vqa") == "vqa_easy_vqa_pretrained"
    assert named_experiments.default_experiment("classify", "flickr8k_match:/d") == "classify_flickr8k_match"
    assert named_experiments.default_experiment("caption", "flickr8k:/d") == "caption_flickr8k"
    assert named_experiments.default_experiment("vqa", "csv:m.csv") == "vqa_synthetic"
    assert named_experiments.default_experiment("caption") == "caption_synthetic"
    for (task, _), name in named_experiments.DATA_EXPERIMENTS.items():
        assert named_experiments.get_experiment(name).task == task


def test_nested_dict_and_tuple_overrides():
    cfg = config_lib.override(
        named_experiments.get_experiment("classify_tiny"),
        [
            'model.text_encoder.backbone_kwargs={"num_layers": 1, "hidden_dim": 16}',
            "model.image_encoder.backbone_class=ResNetBackbone",
            "model.image_encoder.stem_filters=4,8",
            "classify.cv_grid=0.2,0.8",
            "model.fusion=gcn",
            "train.early_stopping_patience=3",
        ],
    )
    assert cfg.model.text_encoder.backbone_kwargs == {"num_layers": 1, "hidden_dim": 16}
    assert cfg.model.image_encoder.backbone_class == "ResNetBackbone"
    assert cfg.model.image_encoder.stem_filters == (4, 8)
    assert cfg.classify.cv_grid == (0.2, 0.8)
    assert (cfg.model.fusion, cfg.train.early_stopping_patience) == ("gcn", 3)
    # Overrides never mutate the experiment they started from.
    assert named_experiments.get_experiment("classify_tiny").model.text_encoder.backbone_kwargs == {}


@pytest.mark.parametrize(
    "assignment, message",
    [
        ("model.text_encoder.backbone_kwargs=[1]", "expected a JSON object"),
        ("model.image_encoder.stem_filters=a,b", "expected comma-separated ints"),
        ("model.text_encoder.nope=1", "has no field 'nope'"),
        ("model.image_encoder=3", "is a section"),
    ],
)
def test_bad_overrides_name_the_field(assignment, message):
    with pytest.raises(ValueError, match=message):
        config_lib.override(named_experiments.get_experiment("classify_tiny"), [assignment])


def test_vqa_experiments_are_classify_experiments_with_another_task():
    assert dataclasses.replace(named_experiments.get_experiment("vqa_tiny"), task="classify") == (
        named_experiments.get_experiment("classify_tiny")
    )


def test_differences_lists_changed_fields_by_path():
    cfg = named_experiments.get_experiment("caption_tiny")
    changed = config_lib.override(cfg, ["model.hidden_dim=48", "model.image_encoder.trainable=none"])
    old, new = json.loads(config_lib.to_json(cfg)), json.loads(config_lib.to_json(changed))
    assert config_lib.differences(old, new) == ['model.hidden_dim: 32 -> 48',
                                                'model.image_encoder.trainable: "all" -> "none"']
    assert config_lib.differences(old, old) == []
    del old["train"]["seed"]  # written by a version without the field
    assert config_lib.differences(old, new)[-1] == 'train.seed: (missing) -> 0'
