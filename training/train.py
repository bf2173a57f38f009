"""Trains, evaluates and exports an mmkeras model, for any task.

    python -m training.train                       # captioner on synthetic data
    python -m training.train --data=flickr8k:../shared/data/flickr8k-1k \\
        --experiment=caption_flickr8k --max_minutes=10
    python -m training.train --task=vqa --data=easy_vqa --fusion=cross_attention
    python -m training.train --task=classify --data=csv:manifest.csv --fusion=gated
    python -m training.train --task=contrastive --data=flickr8k:../shared/data/flickr8k-1k
    python -m training.train --task=vqa --init_from=runs/contrastive --lora_rank=8
    python -m training.train --experiment=caption_flickr8k_pretrained \\
        --set train.steps=1000 --set caption.self_critical_from_step=400   # CIDEr-D reward

Writes into --model_dir: config.json (the resolved config), vocabulary.txt,
data_report.json, checkpoints/, logs/ (TensorBoard and train_log.jsonl),
eval_metrics.json, model.keras and the task's extras (samples.json and
predictions.jsonl for captions; classification_report.txt, confusion_matrix.png
and predictions.jsonl for classifiers); then exports a SavedModel to
<export_dir>/<model_name>/<version>/, and writes report.html (--report).

Rerunning the same command resumes from the last checkpoint in --model_dir
("Resumed from step N") and trains to the planned number of steps; a rerun
whose model does not fit the checkpoint (other sizes, vocabulary or trainable
layers) is refused with the settings that differ, and the run is left as it
was. Several devices or machines: --strategy=mirrored|multi_worker
(docs/multi_worker.md).
"""

import json
import os
import sys
import time

from absl import app, flags, logging

from mmkeras.data.data_spec import describe_kinds
from mmkeras.layers.fusion import FUSION_DESCRIPTIONS
from training import config as config_lib
from training import named_experiments
from training.tasks import TASK_NAMES

FLAGS = flags.FLAGS


def define_flags():
    # Defined only when run as a program, so that one process can import every CLI module.
    flags.DEFINE_enum(
        "task", "caption", list(TASK_NAMES),
        "What to train: `caption` (image captioning), `classify` (image+text "
        "classification with a fusion strategy), `vqa` (classification over the "
        "answer vocabulary) or `contrastive` (CLIP-style dual encoder for retrieval, "
        "zero-shot classification and pretraining towers for --init_from).",
    )
    flags.DEFINE_string(
        "experiment",
        None,
        "Named experiment to start from: " + ", ".join(named_experiments.EXPERIMENTS) + ". Defaults "
        "to the data set's experiment (" + ", ".join(
            f"--task={t} --data={d}: {e}" for (t, d), e in named_experiments.DATA_EXPERIMENTS.items())
        + "), else the task's synthetic one (" + ", ".join(
            f"{t}: {e}" for t, e in named_experiments.DEFAULT_EXPERIMENTS.items()) + ").",
    )
    flags.DEFINE_string(
        "data",
        None,
        "Data; overrides data.spec. caption: synthetic, flickr8k, coco, csv, jsonl, "
        "tfrecord; contrastive: the caption kinds; classify/vqa: synthetic (VQA questions about the shapes), easy_vqa, "
        "flickr8k_match, csv, jsonl (manifest columns image, text, label or labels). "
        "Forms:\n" + describe_kinds(),
    )
    flags.DEFINE_string(
        "fusion", None,
        "classify/vqa: how image and text are fused; overrides model.fusion. One of:\n"
        + "\n".join(f"  {name}: {text}" for name, text in FUSION_DESCRIPTIONS.items()),
    )
    flags.DEFINE_string("model_dir", None, "Where config, checkpoints, logs and metrics go (default runs/<task>).")
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
        "strategy", "default", ["default", "mirrored", "multi_worker"],
        "tf.distribute strategy: `default` (one device), `mirrored` (all local GPUs, "
        "or --cpu_replicas logical CPU devices) or `multi_worker` "
        "(MultiWorkerMirroredStrategy over the workers in the TF_CONFIG environment "
        "variable; see docs/multi_worker.md). data.batch_size is the global batch."
    )
    flags.DEFINE_integer("cpu_replicas", 0, "With --strategy=mirrored and no GPU: number of logical CPU devices.")
    flags.DEFINE_enum(
        "mixed_precision", None, ["float32", "mixed_float16", "mixed_bfloat16"],
        "Keras dtype policy; mixed_float16 adds dynamic loss scaling. Overrides "
        "train.mixed_precision."
    )
    flags.DEFINE_bool("jit_compile", None, "XLA-compile the training step. Overrides train.jit_compile.")
    flags.DEFINE_string(
        "init_from", None, "A finished run's --model_dir (e.g. a --task=contrastive dual encoder): its "
        "image and text encoders initialise this model's (the captioner takes the image tower). "
        "Overrides model.init_from; the freezing options (model.image_encoder.trainable, ...) apply after."
    )
    flags.DEFINE_integer(
        "lora_rank", None, "With R > 0: train rank-R LoRA adapters of the towers' Dense/EinsumDense/"
        "Embedding layers instead of the towers (the rest of them frozen; heads, fusion and decoder "
        "train). Overrides model.lora_rank."
    )
    flags.DEFINE_integer("verbose", 1, "Keras progress output: 0 silent, 1 progress bar, 2 one line per epoch.")
    flags.DEFINE_bool(
        "report", True, "At the end of the run, write MODEL_DIR/report.html (python -m training.report): "
        "metrics, training curves, sample predictions, attention maps. A report error is logged and does "
        "not fail the run."
    )


def resolve_config():
    task_given = FLAGS["task"].present
    name = FLAGS.experiment or named_experiments.default_experiment(FLAGS.task, FLAGS.data)
    cfg = named_experiments.get_experiment(name)
    if task_given and cfg.task != FLAGS.task:
        raise app.UsageError(
            f"Experiment {name!r} is for task {cfg.task!r}, not --task={FLAGS.task}."
        )
    overrides = list(FLAGS.set)
    if FLAGS.fusion is not None:
        if cfg.task == "caption":
            raise app.UsageError("--fusion applies to --task=classify and --task=vqa, not caption.")
        overrides.append(f"model.fusion={FLAGS.fusion}")
    if FLAGS.data is not None:
        overrides.append(f"data.spec={FLAGS.data}")
    if FLAGS.max_minutes is not None:
        overrides.append(f"train.max_minutes={FLAGS.max_minutes}")
    if FLAGS.max_steps is not None:
        overrides.append(f"train.steps={FLAGS.max_steps}")
    if FLAGS.skip_bad_examples:
        overrides.append("data.skip_bad_examples=true")
    if FLAGS.mixed_precision is not None:
        overrides.append(f"train.mixed_precision={FLAGS.mixed_precision}")
    if FLAGS.jit_compile is not None:
        overrides.append(f"train.jit_compile={FLAGS.jit_compile}")
    if FLAGS.init_from is not None:
        overrides.append(f"model.init_from={FLAGS.init_from}")
    if FLAGS.lora_rank is not None:
        overrides.append(f"model.lora_rank={FLAGS.lora_rank}")
    return config_lib.override(cfg, overrides)


def main(argv):
    del argv
    try:
        cfg = resolve_config()
    except ValueError as e:
        raise app.UsageError(str(e))

    from training import distribute

    # First TensorFlow work of the process: logical devices and the collective
    # runtime can only be set up before TensorFlow initializes its devices.
    try:
        strategy = distribute.make_strategy(FLAGS.strategy, FLAGS.cpu_replicas)
    except ValueError as e:
        raise app.UsageError(str(e))
    task_type, task_id, num_workers = distribute.task_info(strategy)
    logging.info(
        "Strategy %s: %d replicas%s", FLAGS.strategy, strategy.num_replicas_in_sync,
        f", {task_type} {task_id} of {num_workers} workers" if task_type else "",
    )

    from mmkeras.layers import PresetError
    from training import experiment
    from training import loop
    from training.tasks.base import ConfigError
    from training.tasks.base import DataError

    model_dir = FLAGS.model_dir or f"runs/{cfg.task}"
    with distribute.WorkerDirs(strategy, model_dir, FLAGS.export_dir) as dirs:
        try:
            results = experiment.run(
                cfg, dirs.model_dir, dirs.export_dir, strategy, verbose=FLAGS.verbose,
                restore_dir=dirs.checkpoint_read_dir,
            )
        except (ConfigError, loop.CheckpointMismatch, PresetError) as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except (DataError, loop.Diverged) as e:
            # A data problem (or a diverged run) is the user's to fix: say what and where, no traceback.
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)
        except loop.Preempted as e:
            logging.warning("%s", e)
            # 128 + SIGTERM: what a launcher expects of a process ended by it.
            sys.exit(143)
    if dirs.chief:
        print(json.dumps(results["eval_metrics"], sort_keys=True))
        if results.get("export_path"):
            print(f"Exported SavedModel: {results['export_path']}")
        if FLAGS.report:
            write_run_report(model_dir, results.get("model"))


def write_run_report(model_dir, model):
    """Writes the run's report.html; an error is logged: the trained run stands either way."""
    started = time.time()
    try:
        from training import report

        path, _ = report.write_report(model_dir, model=model)
    except Exception:  # noqa: BLE001  (any failure: the report is a by-product)
        logging.exception("Could not write the run report (python -m training.report --model_dir=%s "
                          "retries); the run itself finished.", model_dir)
        return
    print(f"Report: {path} ({os.path.getsize(path) / 1e6:.2f} MB, {time.time() - started:.1f} s)", flush=True)


if __name__ == "__main__":
    define_flags()
    app.run(main)
