"""Trains, evaluates and exports an mmkeras model.

    python -m training.train                       # captioner on synthetic data
    python -m training.train --data=flickr8k:../shared/data/flickr8k-1k \\
        --experiment=caption_flickr8k --max_minutes=10

Writes into --model_dir: config.json (the resolved config), vocabulary.txt,
data_report.json, checkpoints/, logs/ (TensorBoard), samples.json,
eval_metrics.json and model.keras; then exports a SavedModel to
<export_dir>/<model_name>/<version>/.
"""

import json
import os
import sys
import time

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_enum(
    "task", "caption", ["caption"], "What to train: `caption` (image captioning)."
)
flags.DEFINE_string(
    "experiment",
    None,
    "Named experiment to start from (see training/config.py: caption_synthetic, "
    "caption_flickr8k, caption_tiny). Defaults to the task's synthetic experiment.",
)
flags.DEFINE_string(
    "data",
    None,
    "Data: `synthetic` (built in, default), `flickr8k:DIR`, "
    "`coco:CAPTIONS_JSON:IMAGE_DIR`, `csv:FILE` (CSV or JSONL manifest with image "
    "and caption columns). Overrides data.spec.",
)
flags.DEFINE_string("model_dir", "runs/caption", "Where config, checkpoints, logs and metrics go.")
flags.DEFINE_string(
    "export_dir", "saved_models", "SavedModels go to <export_dir>/<model_name>/<version>/. "
    "Empty string: do not export."
)
flags.DEFINE_float(
    "max_minutes", None, "Stop training after this many minutes (evaluation and "
    "export still run). Overrides train.max_minutes; 0 means no limit."
)
flags.DEFINE_integer("max_steps", None, "Number of optimizer steps. Overrides train.steps.")
flags.DEFINE_multi_string(
    "set", [], "Override a config field, e.g. --set=model.hidden_dim=64 --set=train.learning_rate=1e-3."
)
flags.DEFINE_bool(
    "skip_bad_examples", False, "Skip (and count) unreadable images and malformed rows "
    "instead of stopping with an error naming them."
)
flags.DEFINE_enum(
    "strategy", "default", ["default", "mirrored"],
    "tf.distribute strategy: `default` (one device) or `mirrored` (all local GPUs, "
    "or --cpu_replicas logical CPU devices)."
)
flags.DEFINE_integer("cpu_replicas", 0, "With --strategy=mirrored and no GPU: number of logical CPU devices.")
flags.DEFINE_integer("verbose", 1, "Keras progress output: 0 silent, 1 progress bar, 2 one line per epoch.")


def resolve_config():
    from training import config as config_lib

    name = FLAGS.experiment or {"caption": "caption_synthetic"}[FLAGS.task]
    cfg = config_lib.get_experiment(name)
    if cfg.task != FLAGS.task:
        raise app.UsageError(
            f"Experiment {name!r} is for task {cfg.task!r}, not --task={FLAGS.task}."
        )
    overrides = list(FLAGS.set)
    if FLAGS.data is not None:
        overrides.append(f"data.spec={FLAGS.data}")
    if FLAGS.max_minutes is not None:
        overrides.append(f"train.max_minutes={FLAGS.max_minutes}")
    if FLAGS.max_steps is not None:
        overrides.append(f"train.steps={FLAGS.max_steps}")
    if FLAGS.skip_bad_examples:
        overrides.append("data.skip_bad_examples=true")
    return config_lib.override(cfg, overrides)


def make_strategy():
    import tensorflow as tf

    if FLAGS.strategy == "default":
        return tf.distribute.get_strategy()
    if FLAGS.cpu_replicas and not tf.config.list_physical_devices("GPU"):
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * FLAGS.cpu_replicas
        )
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    return tf.distribute.MirroredStrategy()


def main(argv):
    del argv
    try:
        cfg = resolve_config()
    except ValueError as e:
        raise app.UsageError(str(e))
    os.makedirs(FLAGS.model_dir, exist_ok=True)

    from training import caption_task

    strategy = make_strategy()
    results = caption_task.run(cfg, FLAGS.model_dir, FLAGS.export_dir, strategy, verbose=FLAGS.verbose)
    print(json.dumps(results["eval_metrics"], sort_keys=True))
    if results.get("export_path"):
        print(f"Exported SavedModel: {results['export_path']}")


if __name__ == "__main__":
    app.run(main)
