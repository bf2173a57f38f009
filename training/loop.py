"""The training loop of `training.train`: Keras' own `train_step` under `strategy.run`.

Keras 3 `model.fit` does not work under `MultiWorkerMirroredStrategy`
(keras-team/keras#20585), so training runs this loop for every strategy: a
`tf.function` around `strategy.run(model.train_step, ...)`. `train_step` is
the very method `fit` calls, so the loss (`model.compute_loss`), the metrics
(`model.compute_metrics`), loss scaling and the optimizer update have one
definition, used by `fit` in a user's script and by this loop alike.

Checkpoints (`tf.train.CheckpointManager`) hold the model's variables (weights,
batch-norm statistics, dropout seed states), the optimizer's variables
(moments, iteration count, loss scale) and the number of steps and examples
consumed. The data position is a function of that count: the caller's
`make_dataset(examples_seen)` returns the training stream already advanced
past the examples consumed. Rerunning the same command after a crash thus
continues from the checkpointed step with the very batch that followed it:
the steps since the checkpoint (at most `checkpoint_every`) are trained again,
from the same state and on the same batches, and no batch is skipped.
"""

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import threading
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

# Set by the SIGTERM handler; read after every step.
_PREEMPTED = threading.Event()


class Preempted(Exception):
    """Training stopped on SIGTERM after saving a checkpoint; rerun to resume."""


class Diverged(ValueError):
    """The training loss became NaN or infinite; no checkpoint of that state was written."""


class CheckpointMismatch(ValueError):
    """The checkpoint to resume from was written for another model or optimizer; the message names it."""


@dataclasses.dataclass
class LoopResult:
    """What `train` did.

    Args:
        steps: the step count at the end (counting steps of earlier runs that
            this one resumed from).
        resumed_from: the checkpoint step this run started from, or None.
        seconds: wall time of this run's training.
        stopped_early: True if the time budget or early stopping ended training.
        examples_per_second: global examples per second in this run.
        weights_fingerprint: SHA-256 of all model weights (batch-norm
            statistics included), to compare workers.
        trainable_fingerprint: SHA-256 of the trainable weights.
    """

    steps: int
    resumed_from: int | None
    seconds: float
    stopped_early: bool
    examples_per_second: float
    weights_fingerprint: str
    trainable_fingerprint: str


def weights_fingerprint(weights):
    """SHA-256 over the bytes of `weights` (e.g. `model.weights`), in order."""
    digest = hashlib.sha256()
    for weight in weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()


def _is_multi_worker(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    return resolver is not None and bool(resolver.cluster_spec().as_dict())


def _to_float(value):
    return float(np.asarray(keras.ops.convert_to_numpy(value)))


class _SigtermHandler:
    """Turns SIGTERM (a preemption notice) into a flag the loop reads."""

    def __enter__(self):
        _PREEMPTED.clear()
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, lambda *_: _PREEMPTED.set())
        return self

    def __exit__(self, *exc_info):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


class _Progress:
    """Keras progress bars, one per `steps_per_epoch` steps, like `fit`'s."""

    def __init__(self, total_steps, steps_per_epoch, verbose, metric_names):
        self.total_steps = total_steps
        self.epoch_steps = steps_per_epoch or total_steps
        self.verbose = verbose
        self.metric_names = list(metric_names) + ["learning_rate"]
        self.bar = None

    def begin_step(self, step):
        """Called before training step `step + 1`; starts an epoch's bar."""
        if not self.verbose or self.bar is not None:
            return
        epoch = step // self.epoch_steps
        self.offset = epoch * self.epoch_steps
        num_epochs = -(-self.total_steps // self.epoch_steps)
        if num_epochs > 1:
            print(f"Epoch {epoch + 1}/{num_epochs}", flush=True)
        self.bar = keras.utils.Progbar(
            min(self.epoch_steps, self.total_steps - self.offset),
            verbose=self.verbose,
            stateful_metrics=self.metric_names,
        )
        if step > self.offset:  # resumed mid-epoch
            self.bar.update(step - self.offset)

    def end_step(self, step, metrics=None):
        """Called after training step `step`, with metrics if they were read."""
        if self.bar is None:
            return
        self.bar.update(step - self.offset, values=list(metrics.items()) if metrics else None)
        if step - self.offset >= self.bar.target:
            self.bar = None


def make_checkpoint(model):
    """The `tf.train.Checkpoint` of a training run and its step counters.

    Variables are listed explicitly, in the model's and optimizer's own order:
    object-graph tracking does not see the variables of Keras 3 layers (only
    the optimizer's list of trainable variables would be saved, not
    batch-norm statistics or dropout seed states), and Keras variable paths
    are uniquified per process (`seed_generator_7`, `adam_w_1`), so they are
    no stable key. Returns `(checkpoint, step, examples_seen)`; the counters
    are int64 variables saved with the model and optimizer.
    """
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    examples_seen = tf.Variable(0, dtype=tf.int64, trainable=False, name="examples_seen")
    checkpoint = tf.train.Checkpoint(
        # Weights, batch-norm statistics and dropout seed states.
        model=[v.value for v in model.variables],
        # Moments, iteration count and, under mixed_float16, the loss scale.
        optimizer=[v.value for v in model.optimizer.variables],
        step=step,
        examples_seen=examples_seen,
    )
    return checkpoint, step, examples_seen


def _check_finite(metrics, step, checkpoint_dir):
    """Raises `Diverged` if a loss in `metrics` (read at `step`) is NaN or infinite."""
    bad = {k: v for k, v in metrics.items() if "loss" in k and not np.isfinite(v)}
    if bad:
        latest = tf.train.latest_checkpoint(checkpoint_dir)
        raise Diverged(
            f"training diverged: {', '.join(f'{k} {v}' for k, v in bad.items())} in the steps up to step {step}. "
            f"Nothing of it was saved; the last checkpoint is {latest or 'none'}. Lower train.learning_rate "
            "(or raise train.warmup_steps), and check the data and any preset weights (a NaN in them gives "
            "a NaN loss from the first step)."
        )


def train_step_function(model, strategy, jit_compile=False):
    """`iterator -> None`: one training step of `model` under `strategy`.

    A `tf.function` around `strategy.run(model.train_step, ...)` on the next
    batch of `iterator`; with `jit_compile`, each replica's step is compiled
    with XLA. What `train` runs every step (and `benchmarks/caption_speed.py`
    times).
    """

    def replica_step(data):
        model.train_step(data)

    if jit_compile:
        replica_step = tf.function(replica_step, jit_compile=True)

    @tf.function
    def train_step(iterator):
        strategy.run(replica_step, args=(next(iterator),))

    return train_step


def train(
    model,
    strategy,
    make_dataset,
    *,
    total_steps,
    global_batch_size,
    checkpoint_dir,
    restore_dir=None,
    checkpoint_every=0,
    log_every=50,
    steps_per_epoch=0,
    max_minutes=0.0,
    log_dir=None,
    jit_compile=False,
    verbose=1,
    chief=True,
    validate=None,
    eval_every=0,
    early_stopping=None,
):
    """Trains a compiled Keras model with `strategy`, resuming from a checkpoint.

    Args:
        model: a compiled `keras.Model` built in `strategy.scope()`.
        strategy: the `tf.distribute.Strategy`.
        make_dataset: `examples_seen -> tf.distribute.DistributedDataset`, the
            infinite training stream advanced past `examples_seen` examples.
        total_steps: the planned number of steps (global batches).
        global_batch_size: examples per step over all replicas and workers.
        checkpoint_dir: where this process writes checkpoints (a temporary
            directory on workers other than the chief, removed after each save).
        restore_dir: where the chief's checkpoints are read from; defaults to
            `checkpoint_dir`. Must be visible to every worker.
        checkpoint_every: steps between checkpoints (0: only at the end).
        log_every: steps between metric reads; metrics are averaged over the
            steps since the previous read, over all replicas and workers.
        steps_per_epoch: steps per progress bar (0: one bar for the run);
            metrics are also read at the end of each.
        max_minutes: stop (after a checkpoint) when this much time has passed.
        log_dir: TensorBoard log directory and `train_log.jsonl` location, or
            None. Only the chief should pass one.
        jit_compile: compile each replica's step with XLA.
        verbose: 0 silent, 1 progress bar, 2 one line per epoch.
        chief: whether this process is the chief (only used for logging).
        validate: optional `() -> dict` of validation metrics (`val_*`),
            called on every worker every `eval_every` steps and logged.
        eval_every: steps between validations (0: none).
        early_stopping: optional `training.early_stopping.EarlyStopping`,
            updated after each validation; it can end training early.

    Returns:
        A `LoopResult`.

    Raises:
        Preempted: on SIGTERM, after saving a checkpoint.
        Diverged: a logged loss is NaN or infinite (checked at every metric
            read); the checkpoints written before stay as they are.
        CheckpointMismatch: the checkpoint to resume does not fit the model.
    """
    if total_steps < 0:
        raise ValueError(f"`total_steps` must be >= 0. Received: total_steps={total_steps}")
    if log_every < 1:
        raise ValueError(f"`log_every` must be >= 1. Received: log_every={log_every}")
    restore_dir = restore_dir or checkpoint_dir
    if jit_compile and strategy.num_replicas_in_sync > 1 and not tf.config.list_logical_devices("GPU"):
        # XLA compiles one replica's step for one device; on logical CPU
        # devices the other replicas' variables live elsewhere and the
        # optimizer's cross-replica update needs merge_call, which XLA lacks.
        raise ValueError(
            "--jit_compile with several replicas needs GPUs (XLA cannot compile a "
            "replica step over logical CPU devices). Use --jit_compile with "
            "--strategy=default on CPU."
        )
    multi_worker = _is_multi_worker(strategy)
    with strategy.scope():
        # Build the optimizer now so that restoring fills its variables
        # directly instead of deferring until the first step.
        model.optimizer.build(model.trainable_variables)
        checkpoint, step_var, examples_var = make_checkpoint(model)

    resumed_from = None
    latest = tf.train.latest_checkpoint(restore_dir)
    if latest:
        try:
            checkpoint.restore(latest).assert_existing_objects_matched()
        except (AssertionError, ValueError) as e:
            # A variable of another shape, or one the model does not have:
            # the run in that directory had other settings (sizes, vocabulary,
            # trainable layers). Nothing has been written yet.
            detail = str(e).strip().splitlines()[0][:300].rstrip(".")
            raise CheckpointMismatch(f"cannot resume from {latest}: it was written for another model "
                                     f"or set of trainable weights ({detail})") from e
        resumed_from = int(step_var.numpy())
        logging.info("Resumed from step %d", resumed_from)
    step = int(step_var.numpy())
    examples_seen = int(examples_var.numpy())

    manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir, max_to_keep=3)
    if early_stopping is not None and resumed_from is not None:
        early_stopping.restore_state()
    if validate is not None and eval_every < 1:
        raise ValueError(f"`eval_every` must be >= 1 with `validate`. Received: eval_every={eval_every}")

    def save():
        step_var.assign(step)
        examples_var.assign(examples_seen)
        path = manager.save(checkpoint_number=step)
        if chief:
            logging.info("Saved checkpoint %s", path)
        elif os.path.isdir(checkpoint_dir):
            # Other workers join the save (it can involve collectives) but
            # keep nothing.
            shutil.rmtree(checkpoint_dir, ignore_errors=True)

    train_step = train_step_function(model, strategy, jit_compile)

    @tf.function
    def agree(flags):
        # `flags` = [preempted, out of time] on this worker; summed over all
        # replicas, so that every worker stops at the same step.
        per_replica = strategy.run(tf.identity, args=(flags,))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    @tf.function
    def read_metrics():
        # Outside `strategy.run`, metric variables (synchronized on read)
        # read as their sum over all replicas and workers.
        return model.get_metrics_result()

    writer = tf.summary.create_file_writer(log_dir) if log_dir else None
    log_file = open(os.path.join(log_dir, "train_log.jsonl"), "a") if log_dir else None
    if log_file and resumed_from is not None:
        log_file.write(json.dumps({"event": "resumed", "step": resumed_from}) + "\n")
        log_file.flush()
    progress = _Progress(total_steps, steps_per_epoch, verbose, [m.name for m in model.metrics])

    def log_metrics(rate):
        """Reads and resets the metrics; writes them to TensorBoard and the log."""
        metrics = {k: _to_float(v) for k, v in read_metrics().items()}
        model.reset_metrics()
        metrics["learning_rate"] = _to_float(model.optimizer.learning_rate)
        if writer is not None:
            with writer.as_default(step=step):
                for name, value in metrics.items():
                    tf.summary.scalar(name, value)
                tf.summary.scalar("steps_per_second", rate)
                tf.summary.scalar("examples_per_second", rate * global_batch_size)
        if log_file is not None:
            record = {"step": step, **metrics, "examples_per_second": rate * global_batch_size}
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
        return metrics

    def run_validation():
        """Validates, logs `val_*` metrics; True if early stopping says stop."""
        results = validate()
        if writer is not None:
            with writer.as_default(step=step):
                for name, value in results.items():
                    tf.summary.scalar(name, value)
        if log_file is not None:
            log_file.write(json.dumps({"step": step, **results}) + "\n")
            log_file.flush()
        logging.info("Step %d validation: %s", step, ", ".join(f"{k} {v:.4f}" for k, v in results.items()))
        return early_stopping is not None and early_stopping.update(step, results, model)

    def stop_flag():
        """2 on a preemption notice, 1 when out of time, else 0; the same on all workers."""
        preempted = _PREEMPTED.is_set()
        out_of_time = bool(max_minutes) and time.monotonic() - start > max_minutes * 60
        if multi_worker:
            preempted, out_of_time = agree(tf.constant([preempted, out_of_time], tf.int32)).numpy()
        return 2 if preempted else 1 if out_of_time else 0

    start = time.monotonic()
    start_step = step
    stopped_early = False
    try:
        if step >= total_steps:
            logging.info("Checkpoint step %d reaches the planned %d steps; nothing to train.", step, total_steps)
        elif early_stopping is not None and early_stopping.stopped:
            logging.info("Early stopping had ended this run at step %d; nothing to train.", step)
            stopped_early = True
        else:
            iterator = iter(make_dataset(examples_seen))
            model.reset_metrics()
            interval_start, interval_step = time.monotonic(), step
            with _SigtermHandler():
                while step < total_steps:
                    progress.begin_step(step)
                    train_step(iterator)
                    step += 1
                    examples_seen += global_batch_size
                    flag = stop_flag()

                    metrics = None
                    epoch_end = steps_per_epoch and step % steps_per_epoch == 0
                    if step % log_every == 0 or epoch_end or step == total_steps or flag:
                        now = time.monotonic()
                        metrics = log_metrics((step - interval_step) / max(now - interval_start, 1e-9))
                        interval_start, interval_step = now, step
                        _check_finite(metrics, step, restore_dir)
                    progress.end_step(step, metrics)
                    if validate is not None and step % eval_every == 0 and not flag:
                        # The decision comes from all-reduced metrics: the same on every worker.
                        if run_validation():
                            logging.info("Early stopping at step %d.", step)
                            stopped_early = True
                            flag = 3

                    if flag or step == total_steps or (checkpoint_every and step % checkpoint_every == 0):
                        save()
                        if writer is not None:
                            writer.flush()
                    if flag == 2:
                        raise Preempted(
                            f"Preempted (SIGTERM) at step {step}; checkpoint saved. "
                            "Rerun the same command to resume."
                        )
                    if flag == 3:
                        break
                    if flag == 1:
                        stopped_early = True
                        logging.info("Time budget of %s minutes reached at step %d.", max_minutes, step)
                        break
    finally:
        if log_file is not None:
            log_file.close()
        if writer is not None:
            writer.close()

    seconds = time.monotonic() - start
    return LoopResult(
        steps=step,
        resumed_from=resumed_from,
        seconds=seconds,
        stopped_early=stopped_early,
        examples_per_second=(step - start_step) * global_batch_size / max(seconds, 1e-9),
        weights_fingerprint=weights_fingerprint(model.weights),
        trainable_fingerprint=weights_fingerprint(model.trainable_weights),
    )


class Evaluator:
    """Runs `model.test_step` over finite datasets of global batches.

    The same loss and metrics as `model.evaluate`, under any strategy; results
    are aggregated over all replicas and workers. Every worker must call it.
    Its compiled functions are kept, so evaluating every few hundred steps
    traces once.
    """

    def __init__(self, model, strategy):
        self.model = model
        self.strategy = strategy

        @tf.function(reduce_retracing=True)
        def test_step(data):
            strategy.run(model.test_step, args=(data,))

        @tf.function
        def read_metrics():
            return model.get_metrics_result()

        self._test_step = test_step
        self._read_metrics = read_metrics

    def __call__(self, dataset):
        """Returns a dict of Python floats, e.g. `{"loss": ..., "token_accuracy": ...}`."""
        from training.distribute import distribute_dataset

        self.model.reset_metrics()
        for data in distribute_dataset(self.strategy, dataset):
            self._test_step(data)
        results = {k: _to_float(v) for k, v in self._read_metrics().items()}
        self.model.reset_metrics()
        return results


def evaluate(model, strategy, dataset):
    """One `Evaluator(model, strategy)(dataset)`: loss and metrics over `dataset`."""
    return Evaluator(model, strategy)(dataset)
