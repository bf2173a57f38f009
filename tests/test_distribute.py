"""Strategies on real processes: default vs mirrored vs two workers on loopback.

The same global batch and seed must give the same training whatever the
devices: `mirrored` over 2 logical CPUs splits each global batch of 16 into two
of 8 and all-reduces the gradients, and 2 `multi_worker` processes (TF_CONFIG on
127.0.0.1) do the same across processes. Dropout is off in these runs: its
masks are drawn per replica, so they differ between device layouts by design.

Tolerance: per-step losses must agree within 3e-3 (relative) at every step and
1e-3 on average. What may differ is float summation order and, by the model's
definition of the loss, its normalization: `ImageCaptioner.compute_loss`
averages over the real tokens of each replica and then over replicas, while
one device averages over all tokens of the batch. Measured: at most 8e-4 and
about 3e-4 on average over the 20 steps. Wrong data fails both bounds: a
stream one global batch off gave 7.5e-3 / 2e-3, replicas each given a whole
global batch 7.7e-3 / 3e-3.
"""

import json
import os

import pytest
import tensorflow as tf

from tests import training_fixtures as tfx
from training import distribute

STEPS = 20
COMMON = (f"--max_steps={STEPS}", "--set=model.dropout=0", "--set=train.log_every=1")
MAX_RTOL, MEAN_RTOL = 3e-3, 1e-3


@pytest.fixture(scope="module")
def default_and_mirrored(tmp_path_factory):
    """Runs default and mirrored (2 logical CPUs) side by side."""
    root = tmp_path_factory.mktemp("strategies")
    runs = {}
    for name, flags in (("default", ()), ("mirrored", ("--strategy=mirrored", "--cpu_replicas=2"))):
        model_dir = str(root / name)
        command = tfx.train_command(model_dir, "--export_dir=", *COMMON, *flags)
        runs[name] = (model_dir, tfx.start(command, log_path=str(root / f"{name}.log")))
    for name, (model_dir, process) in runs.items():
        assert process.wait(timeout=240) == 0, open(str(root / f"{name}.log")).read()[-4000:]
    return {name: model_dir for name, (model_dir, _) in runs.items()}, root


@pytest.mark.slow
def test_mirrored_matches_default(default_and_mirrored):
    dirs, root = default_and_mirrored
    default, mirrored = tfx.losses(dirs["default"]), tfx.losses(dirs["mirrored"])
    assert sorted(default) == list(range(1, STEPS + 1))
    tfx.assert_same_trajectory(default, mirrored, MAX_RTOL, MEAN_RTOL, "mirrored vs default")
    assert "2 replicas" in open(str(root / "mirrored.log")).read()
    for model_dir in dirs.values():
        with open(os.path.join(model_dir, "eval_metrics.json")) as f:
            assert json.load(f)["train_steps"] == STEPS


@pytest.mark.slow
def test_two_workers_on_loopback(default_and_mirrored, tmp_path):
    dirs, _ = default_and_mirrored
    ports = [tfx.free_port(), tfx.free_port()]
    model_dir, export_dir = str(tmp_path / "run"), str(tmp_path / "saved_models")
    processes, logs, temps = [], [], []
    for index in range(2):
        temp = tmp_path / f"tmp{index}"
        temp.mkdir()
        # Each worker's temporary files go to its own TMPDIR, checked below.
        env = tfx.train_env(TF_CONFIG=tfx.tf_config(ports, index), TMPDIR=str(temp))
        command = tfx.train_command(model_dir, f"--export_dir={export_dir}", "--strategy=multi_worker", *COMMON)
        logs.append(str(tmp_path / f"worker{index}.log"))
        temps.append(temp)
        processes.append(tfx.start(command, env=env, log_path=logs[-1]))
    for process, log in zip(processes, logs):
        assert process.wait(timeout=300) == 0, open(log).read()[-4000:]
    texts = [open(log).read() for log in logs]

    # One global batch per step over both workers: the single-device trajectory.
    assert "worker 0 of 2 workers" in texts[0] and "worker 1 of 2 workers" in texts[1]
    tfx.assert_same_trajectory(
        tfx.losses(dirs["default"]), tfx.losses(model_dir), MAX_RTOL, MEAN_RTOL, "2 workers vs default"
    )
    # The weights agree bit for bit on both workers: the trainable ones by the
    # all-reduce, batch-norm statistics because the layers synchronize their
    # batch moments across replicas (`BatchNormalization(synchronized=True)`;
    # unsynchronized, each worker would keep statistics of its own half).
    (all_0, trainable_0), (all_1, trainable_1) = tfx.fingerprints(texts[0]), tfx.fingerprints(texts[1])
    assert trainable_0 == trainable_1
    assert all_0 == all_1, "non-trainable weights (batch-norm moving statistics?) differ between workers"

    # Only the chief exported, logged and checkpointed; worker 1 left nothing.
    assert os.listdir(os.path.join(export_dir, "captioner")) == ["1"]
    assert "Exported SavedModel" in texts[0] and "Exported SavedModel" not in texts[1]
    with open(os.path.join(model_dir, "eval_metrics.json")) as f:
        assert json.load(f)["train_steps"] == STEPS
    assert tfx.latest_checkpoint_step(model_dir) == STEPS
    for temp in temps:
        assert not [p for p in temp.iterdir() if p.name.startswith("mmkeras-")], list(temp.iterdir())


def test_per_replica_batch_size():
    strategy = tf.distribute.get_strategy()
    assert distribute.per_replica_batch_size(16, strategy) == 16

    class Two:
        num_replicas_in_sync = 2

    assert distribute.per_replica_batch_size(16, Two()) == 8
    with pytest.raises(ValueError, match="divisible"):
        distribute.per_replica_batch_size(15, Two())


def test_tf_config_validation(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distribute.read_tf_config() == {}
    with pytest.raises(ValueError, match="TF_CONFIG"):
        distribute.make_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1"], "ps": ["127.0.0.1:2"]},
                                                "task": {"type": "worker", "index": 0}}))
    with pytest.raises(ValueError, match="parameter-server"):
        distribute.read_tf_config()
    with pytest.raises(ValueError, match="cpu_replicas"):
        distribute.make_strategy("default", cpu_replicas=2)


def test_default_strategy_is_chief():
    strategy = tf.distribute.get_strategy()
    assert distribute.is_chief(strategy)
    assert distribute.task_info(strategy) == (None, 0, 1)
