"""Crash and preemption safety: kill -9, SIGTERM, rerun the same command.

One command is run three times against the same model directory:

1. killed with SIGKILL mid-training, some steps after a checkpoint;
2. rerun: it logs `Resumed from step N` (N the last checkpoint), retrains
   the steps after N with *exactly* the losses of run 1 (same weights,
   optimizer state, dropout seeds and data position: no batch skipped, none
   seen twice), and is stopped with SIGTERM, which saves a checkpoint at the
   current step and exits with status 143;
3. rerun: resumes from that step and completes the planned number of steps.
"""

import json
import os
import signal
import time

import pytest

from tests import training_fixtures as tfx

STEPS = 60
EVERY = 10


def wait_for_step(model_dir, step, process, timeout=120):
    """Waits until the run has logged `step` (after any resume)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before reaching step %d" % step
        logged = tfx.train_log(model_dir)
        if logged and logged[-1]["step"] >= step:
            return
        time.sleep(0.02)
    raise AssertionError(f"step {step} not reached in {timeout} s")


@pytest.mark.slow
def test_kill_resume_preempt_complete(tmp_path):
    model_dir = str(tmp_path / "run")
    command = tfx.train_command(
        model_dir, "--export_dir=", f"--max_steps={STEPS}",
        f"--set=train.checkpoint_every={EVERY}", "--set=train.log_every=1",
    )
    logs = [str(tmp_path / f"run{i}.log") for i in (1, 2, 3)]

    # 1. SIGKILL a few steps past the second checkpoint.
    first = tfx.start(command, log_path=logs[0])
    wait_for_step(model_dir, 2 * EVERY + 3, first)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    killed = tfx.losses(model_dir)
    last_killed = max(killed)
    checkpoint = tfx.latest_checkpoint_step(model_dir)
    assert checkpoint % EVERY == 0 and 0 < checkpoint <= last_killed < STEPS
    # Nothing before the checkpoint interval is lost.
    assert last_killed - checkpoint <= EVERY

    # 2. Rerun: resumes from the checkpoint and retrains the lost steps
    # identically; then SIGTERM (a preemption notice).
    second = tfx.start(command, log_path=logs[1])
    wait_for_step(model_dir, last_killed + 5, second)
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=60) == 143, open(logs[1]).read()[-3000:]
    text = open(logs[1]).read()
    assert f"Resumed from step {checkpoint}" in text
    with open(os.path.join(model_dir, "logs", "train_log.jsonl")) as f:
        records = [json.loads(line) for line in f]
    resumed_at = records.index({"event": "resumed", "step": checkpoint})
    retrained = {r["step"]: r["loss"] for r in records[resumed_at + 1:] if "loss" in r}
    assert min(retrained) == checkpoint + 1
    for step in range(checkpoint + 1, last_killed + 1):
        assert retrained[step] == pytest.approx(killed[step], rel=1e-5), step
    preempted_at = max(retrained)
    # The preemption checkpoint is the last step trained: nothing is lost.
    assert tfx.latest_checkpoint_step(model_dir) == preempted_at
    assert preempted_at < STEPS

    # 3. Rerun: resumes from the preemption checkpoint and completes.
    third = tfx.start(command, log_path=logs[2])
    assert third.wait(timeout=180) == 0, open(logs[2]).read()[-3000:]
    assert f"Resumed from step {preempted_at}" in open(logs[2]).read()
    with open(os.path.join(model_dir, "eval_metrics.json")) as f:
        assert json.load(f)["train_steps"] == STEPS
    assert tfx.latest_checkpoint_step(model_dir) == STEPS
    final = tfx.train_log(model_dir)
    assert final[-1]["step"] == STEPS
    # After the last resume, every step is trained exactly once.
    steps_after = [r["step"] for r in final if r["step"] > preempted_at]
    assert steps_after == list(range(preempted_at + 1, STEPS + 1))


def _tiny_captioner(policy):
    import keras

    from mmkeras.models import build_image_captioner

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(1)
        model = build_image_captioner(
            vocabulary_size=40, sequence_length=6, image_size=32, hidden_dim=16, num_layers=1,
            num_heads=2, intermediate_dim=32, stem_filters=(8,), dropout=0.1,
        )
        model.compile(optimizer=keras.optimizers.AdamW())
    finally:
        keras.mixed_precision.set_global_policy(previous)
    model.optimizer.build(model.trainable_variables)
    return model


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
def test_checkpoint_holds_all_training_state(tmp_path, policy):
    """Weights, batch-norm statistics, dropout seeds, optimizer state (the
    loss scale under mixed_float16) and the counters all round-trip; Keras 3
    layers' variables are invisible to object-graph checkpoint tracking."""
    import numpy as np

    from training import loop

    source = _tiny_captioner(policy)
    state = source.variables + source.optimizer.variables
    assert any("moving_mean" in v.path for v in state) and any("seed_generator" in v.path for v in state)
    if policy == "mixed_float16":
        assert any("dynamic_scale" in v.path for v in state)
    for i, variable in enumerate(state):
        variable.assign(np.full(variable.shape, i % 7 + 1, variable.dtype))
    checkpoint, step, examples = loop.make_checkpoint(source)
    step.assign(12)
    examples.assign(192)
    path = checkpoint.save(str(tmp_path / "ckpt"))

    target = _tiny_captioner(policy)
    restored, step, examples = loop.make_checkpoint(target)
    restored.restore(path).assert_existing_objects_matched()
    assert (int(step.numpy()), int(examples.numpy())) == (12, 192)
    for want, got in zip(state, target.variables + target.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(got.numpy()), np.asarray(want.numpy()))
