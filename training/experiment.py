"""Runs one experiment for any task: the driver behind `python -m training.train`.

    results = experiment.run(cfg, model_dir, export_dir, strategy)

The same steps for every task (`training.tasks`): write `config.json`, seed,
load the data, build the model under the dtype policy and `strategy.scope()`,
load transferred towers (`model.init_from`), apply the encoders' `trainable`
settings and LoRA adapters (`model.lora_rank`), compile with AdamW (warmup + cosine
decay), train with `training.loop.train` (checkpoints, resume, SIGTERM, time
budget, early stopping with the best weights restored), evaluate into
`eval_metrics.json`, save `model.keras` and export.
"""

import json
import os

import keras
import tensorflow as tf
from absl import logging

from training import config as config_lib
from training import distribute
from training import finetune
from training import loop
from training import transfer
from training.early_stopping import EarlyStopping
from training.tasks import get_task
from training.tasks.base import ConfigError


def learning_rate_schedule(train_cfg):
    """Linear warmup then cosine decay to 10% over `train.steps`."""
    warmup = min(train_cfg.warmup_steps, max(train_cfg.steps - 1, 0))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else train_cfg.learning_rate,
        decay_steps=max(train_cfg.steps - warmup, 1),
        alpha=0.1,
        warmup_target=train_cfg.learning_rate if warmup else None,
        warmup_steps=warmup,
    )


def build_optimizer(train_cfg):
    """AdamW with weight decay, warmup + cosine decay and gradient clipping."""
    return keras.optimizers.AdamW(
        learning_rate=learning_rate_schedule(train_cfg),
        weight_decay=train_cfg.weight_decay,
        clipnorm=train_cfg.clipnorm,
    )


def cv_config(cfg, steps):
    """`cfg` for a short inner training run (cross-validation): `steps` steps, no budget,
    no early stopping, checkpoints only at the end."""
    return config_lib.override(cfg, [
        f"train.steps={steps}", "train.max_minutes=0", "train.early_stopping_patience=0",
        "train.eval_every=0", "train.checkpoint_every=0", f"train.steps_per_epoch={steps}",
        f"train.warmup_steps={min(cfg.train.warmup_steps, max(steps // 10, 1))}",
    ])


def build_compiled_model(task, cfg, strategy, build=None, quiet=False):
    """The task's model, with `trainable` settings applied, compiled in `strategy.scope()`.

    `build` replaces `task.build_model` (e.g. to vary a hyperparameter).
    """
    # The policy applies to layers created while it is set; the model keeps it.
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(cfg.train.mixed_precision)
    try:
        with strategy.scope():
            try:
                model = (build or task.build_model)()
                encoders = task.encoders(model)
                if cfg.model.init_from:
                    transfer.load_encoders(model, encoders, cfg.model.init_from)
                for name, encoder in encoders.items():
                    setting = getattr(cfg.model, name).trainable
                    frozen = finetune.apply_trainable(encoder, setting, f"model.{name}.trainable")
                    if frozen:
                        logging.info("%s: %s, %d blocks frozen", name, setting, frozen)
                if cfg.model.lora_rank:
                    adapted = transfer.enable_lora(encoders.values(), cfg.model.lora_rank)
                    logging.info("LoRA rank %d on %d layers of %s", cfg.model.lora_rank, adapted,
                                 ", ".join(encoders))
            except ValueError as e:
                # Layers validate their arguments; the config is where the user fixes them.
                raise ConfigError(f"The model config is invalid: {e}") from e
            # Under mixed_float16, compile wraps the optimizer in a LossScaleOptimizer.
            model.compile(optimizer=build_optimizer(cfg.train))
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    trainable = finetune.count_params(model.trainable_weights)
    logging.info("Model parameters: %d (%d trainable)", model.count_params(), trainable)
    if not quiet:
        print(f"Trainable parameters: {trainable:,} of {model.count_params():,}", flush=True)
    return model


def train_model(task, model, cfg, model_dir, strategy, verbose=1, restore_dir=None, validation=True):
    """Trains `model` with the task's data; returns `(loop.LoopResult, best step or None)`.

    `validation=False` skips the validation split entirely (inner runs).
    """
    chief = distribute.is_chief(strategy)
    train_cfg = cfg.train
    distribute.per_replica_batch_size(cfg.data.batch_size, strategy)
    checkpoint_dir = os.path.join(model_dir, "checkpoints")
    restore_dir = restore_dir or checkpoint_dir

    task.image_feature_extractor = finetune.image_feature_extractor(
        task.encoders(model).get("image_encoder"), cfg.data
    )
    if task.image_feature_extractor is not None:
        logging.info("Image encoder frozen: training on cached image features.")
    task.text_feature_extractor = finetune.text_feature_extractor(
        task.encoders(model).get("text_encoder"), cfg.data
    )
    if task.text_feature_extractor is not None:
        logging.info("Text encoder frozen: training on cached text features.")
    val_ds = task.validation_dataset() if validation else None
    evaluator = loop.Evaluator(model, strategy)
    validate, early_stopping = None, None
    eval_every = train_cfg.eval_every or train_cfg.steps_per_epoch or train_cfg.steps
    if train_cfg.early_stopping_patience > 0 or train_cfg.eval_every > 0:
        if val_ds is None:
            raise ValueError(
                "train.eval_every / train.early_stopping_patience need a validation split; "
                f"data {cfg.data.spec!r} has none."
            )

        def validate():
            return {f"val_{k}": v for k, v in evaluator(val_ds).items()}

    if train_cfg.early_stopping_patience > 0:
        early_stopping = EarlyStopping(
            train_cfg.early_stopping_metric or task.early_stopping_metric,
            train_cfg.early_stopping_patience,
            read_dir=os.path.dirname(os.path.normpath(restore_dir)),
            write_dir=model_dir if chief else None,
        )

    outcome = loop.train(
        model,
        strategy,
        lambda examples_seen: task.train_dataset(strategy, examples_seen),
        total_steps=train_cfg.steps,
        global_batch_size=cfg.data.batch_size,
        checkpoint_dir=checkpoint_dir,
        restore_dir=restore_dir,
        checkpoint_every=train_cfg.checkpoint_every,
        log_every=train_cfg.log_every,
        steps_per_epoch=train_cfg.steps_per_epoch,
        max_minutes=train_cfg.max_minutes,
        log_dir=os.path.join(model_dir, "logs") if chief else None,
        jit_compile=train_cfg.jit_compile,
        verbose=verbose if chief else 0,
        chief=chief,
        validate=validate,
        eval_every=eval_every,
        early_stopping=early_stopping,
    )
    logging.info(
        "Trained to step %d in %.1f s (%.1f examples/s)%s; weights fingerprint %s "
        "(trainable %s)",
        outcome.steps, outcome.seconds, outcome.examples_per_second,
        " (stopped early)" if outcome.stopped_early else "",
        outcome.weights_fingerprint, outcome.trainable_fingerprint,
    )
    best_step = early_stopping.restore_best(model) if early_stopping is not None else None
    if val_ds is not None:
        val_metrics = evaluator(val_ds)
        logging.info("Validation: %s", ", ".join(f"{k} {v:.4f}" for k, v in val_metrics.items()))
    return outcome, best_step


# Files under this size at the top of a model directory (config, vocabulary,
# labels, data and cross-validation reports) are what a run writes before it
# resumes its checkpoint; weights and logs are larger or come later.
_SMALL_FILE_BYTES = 4 << 20


def _small_file_names(model_dir):
    """Names of the small files at the top of `model_dir`."""
    return [name for name in os.listdir(model_dir)
            if os.path.isfile(os.path.join(model_dir, name))
            and os.path.getsize(os.path.join(model_dir, name)) < _SMALL_FILE_BYTES]


def _small_files(model_dir):
    """`{name: bytes}` of the small files at the top of `model_dir`."""
    files = {}
    for name in _small_file_names(model_dir):
        with open(os.path.join(model_dir, name), "rb") as f:
            files[name] = f.read()
    return files


def _put_back(model_dir, files):
    """Leaves `model_dir`'s small files as `_small_files` found them."""
    for name in set(_small_file_names(model_dir)) - set(files):
        os.remove(os.path.join(model_dir, name))
    for name, content in files.items():
        with open(os.path.join(model_dir, name), "wb") as f:
            f.write(content)


def _resume_error(error, cfg, config_path, previous_config):
    """`error` (a checkpoint this run cannot resume), saying which settings this command changed."""
    message = f"{error}."
    try:
        changed = config_lib.differences(json.loads(previous_config), json.loads(config_lib.to_json(cfg)))
    except (TypeError, ValueError):  # no config.json, or not JSON
        changed = None
    if changed:
        shown = "; ".join(changed[:10]) + ("; ..." if len(changed) > 10 else "")
        message += f" This command's settings differ from the ones in {config_path}: {shown}."
    elif changed is not None:
        message += f" The settings are those of {config_path}: the checkpoint was written by other code."
    return loop.CheckpointMismatch(
        message + " Rerun with the settings the run was trained with to resume it, or give a new "
        "--model_dir to start another run (the run in this directory is left as it was)."
    )


def run(cfg, model_dir, export_dir, strategy, verbose=1, restore_dir=None):
    """Trains, evaluates and exports `cfg.task`; returns a dict of results.

    Every worker of a multi-worker strategy runs this; those other than the
    chief pass temporary `model_dir` and `export_dir` (see
    `training.distribute.WorkerDirs`) and read checkpoints from `restore_dir`,
    the chief's checkpoint directory.

    Returns:
        `{"eval_metrics": dict, "export_path": str or None, "model": keras.Model,
        "task": Task}`.
    """
    os.makedirs(model_dir, exist_ok=True)
    config_path = os.path.join(model_dir, "config.json")
    checkpoint_dir = os.path.join(model_dir, "checkpoints")
    # A run to resume: its config, vocabulary and reports describe its
    # checkpoints. If this command fails before it writes a checkpoint of its
    # own (bad data or preset, a model that does not fit them), they are put back.
    last_checkpoint = tf.train.latest_checkpoint(checkpoint_dir)
    resumed_files = _small_files(model_dir) if last_checkpoint else None
    try:
        # Written before training starts, so a crashed run still says what it was.
        with open(config_path, "w") as f:
            f.write(config_lib.to_json(cfg))
        keras.utils.set_random_seed(cfg.train.seed)
        task = get_task(cfg.task)(cfg, model_dir)
        task.load_data()
        task.prepare(strategy)
        model = build_compiled_model(task, cfg, strategy)
        outcome, best_step = train_model(task, model, cfg, model_dir, strategy, verbose, restore_dir)
    except BaseException as e:
        if resumed_files is None or tf.train.latest_checkpoint(checkpoint_dir) != last_checkpoint:
            raise
        _put_back(model_dir, resumed_files)
        if isinstance(e, loop.CheckpointMismatch):
            raise _resume_error(e, cfg, config_path, resumed_files.get("config.json")) from e
        raise

    results = task.evaluate(model, strategy)
    results.update(train_steps=outcome.steps, train_seconds=round(outcome.seconds, 1))
    if best_step is not None:
        results["best_step"] = best_step
    task.write_json("eval_metrics.json", results)

    export_path = None
    if not distribute.is_chief(strategy):
        # Saving and exporting only read each variable's local copy (no
        # collectives), so other workers can stop here.
        return {"eval_metrics": results, "export_path": None, "model": model, "task": task}
    model.save(os.path.join(model_dir, "model.keras"))
    if export_dir:
        export_path = task.export(model, export_dir)
        logging.info("Exported to %s", export_path)
    return {"eval_metrics": results, "export_path": export_path, "model": model, "task": task}
