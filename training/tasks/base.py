"""What every task provides to the one training driver (`training.experiment`).

A task (TF Model Garden style) knows its data, its model and its metrics;
everything else (the config file, seeding, mixed precision, the strategy
scope, the optimizer, freezing, the distributed loop with checkpoints,
resume, SIGTERM and the time budget, early stopping, `model.keras` and the
export) is the driver's, and so the same for every task.

The driver calls, in order:

    task = TaskClass(cfg, model_dir)
    task.load_data()                      # reads files, writes data_report.json
    task.prepare(strategy)                # optional: e.g. cross-validation
    with strategy.scope():
        model = task.build_model()        # uncompiled
    task.train_dataset(strategy, examples_seen)   # the distributed stream
    task.validation_dataset()             # tf.data for loss/metrics, or None
    task.evaluate(model, strategy)        # test metrics (dict), sample files
    task.export(model, export_dir)        # SavedModel path
"""

import json
import os

from training import distribute
from training.presets import resolve_preset


def image_encoder_kwargs(image_cfg):
    """`ImageEncoder` arguments of an `ImageEncoderConfig` (presets resolved to folders)."""
    return {
        "stem_filters": image_cfg.stem_filters,
        "convs_per_stage": image_cfg.convs_per_stage,
        "stem_norm": image_cfg.stem_norm,
        "backbone_class": image_cfg.backbone_class,
        "backbone_kwargs": image_cfg.backbone_kwargs,
        "backbone_preset": resolve_preset(image_cfg.backbone_preset),
        "dropout": image_cfg.dropout,
    }


def text_encoder_kwargs(text_cfg):
    """`TextEncoder` arguments of a `TextEncoderConfig` (presets resolved to folders)."""
    return {
        "num_layers": text_cfg.num_layers,
        "pooling": text_cfg.pooling,
        "backbone_class": text_cfg.backbone_class,
        "backbone_kwargs": text_cfg.backbone_kwargs,
        "backbone_preset": resolve_preset(text_cfg.backbone_preset),
    }


class DataError(ValueError):
    """The data named by `--data` cannot be used; the message says where and why."""


class ConfigError(ValueError):
    """The config cannot build a model (e.g. an unknown fusion); the message says which field."""


class Task:
    """Base class of the tasks in `training.tasks`.

    Class attributes:
        name: the `--task` value.
        data_kinds: the `mmkeras.data.data_spec` kinds this task reads.
        model_name: default export name (`<export_dir>/<model_name>/<version>`).
        early_stopping_metric: the validation metric early stopping watches by
            default (`val_` + a metric of `model.test_step`).

    Args:
        cfg: the resolved `training.config.ExperimentConfig`.
        model_dir: where the run writes its files.
    """

    name = None
    data_kinds = ()
    model_name = None
    early_stopping_metric = "val_loss"
    # Set by the driver before training datasets are built: a frozen image
    # encoder's feature extractor (`finetune.image_feature_extractor`) whose
    # output the task's datasets may cache (training, and for classifiers
    # evaluation too), or None.
    image_feature_extractor = None
    # Likewise for a frozen text encoder (`finetune.text_feature_extractor`):
    # the tasks with a text tower (contrastive, classify/vqa) cache its
    # output per distinct text; the captioner has none (its decoder trains).
    text_feature_extractor = None

    def __init__(self, cfg, model_dir):
        self.cfg = cfg
        self.model_dir = model_dir

    # Data.
    def load_data(self):
        """Reads the data and learns what it needs from it (e.g. a vocabulary)."""
        raise NotImplementedError

    def global_train_dataset(self):
        """The infinite, shuffled stream of global batches (an in-memory source)."""
        raise NotImplementedError

    def train_dataset(self, strategy, examples_seen):
        """The distributed training stream, advanced past `examples_seen` examples.

        Both streams are fixed functions of the seed, so skipping what was
        already trained puts a resumed run exactly where the checkpointed one
        was (instead of checkpointing tf.data iterators, which would store the
        in-memory image cache and shuffle buffers in every checkpoint). Every
        worker builds the global stream and keeps its replicas' parts of each
        global batch (AutoShardPolicy.DATA). Tasks with sharded file sources
        override this to shard by file.
        """
        batch = self.cfg.data.batch_size
        return distribute.distribute_dataset(
            strategy, self.global_train_dataset().skip(examples_seen // batch)
        )

    def validation_dataset(self):
        """A finite tf.data of validation batches for `model.test_step`, or None."""
        return None

    def prepare(self, strategy):
        """Runs before the final model is built (e.g. cross-validating a setting)."""

    # Model.
    def build_model(self):
        """The uncompiled model; called inside `strategy.scope()` and the dtype policy."""
        raise NotImplementedError

    def encoders(self, model):
        """`{name: encoder layer}` that `model.<name>.trainable` settings apply to."""
        return {}

    # Results.
    def evaluate(self, model, strategy):
        """Test-split metrics (a flat dict); may write sample files into model_dir."""
        raise NotImplementedError

    def export(self, model, export_dir):
        """Exports the trained model; returns the SavedModel path."""
        raise NotImplementedError

    def assets(self):
        """Files of the run that travel with the export (e.g. the vocabulary)."""
        return []

    def test_records(self):
        """The test split as evaluation reads it: its first `eval.max_images` records, if set."""
        records = self.splits["test"]
        return records[: self.cfg.eval.max_images] if self.cfg.eval.max_images else records

    @property
    def export_name(self):
        return self.cfg.export.model_name or self.model_name

    def write_json(self, name, value):
        with open(os.path.join(self.model_dir, name), "w") as f:
            json.dump(value, f, indent=2, sort_keys=True)
