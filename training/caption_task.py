"""The captioning task: data, model, training, evaluation and export for one config."""

import json
import os

import keras
import tensorflow as tf
from absl import logging

from mmkeras.data import caption_pipeline
from mmkeras.data import tfrecords
from mmkeras.data.caption_formats import load_caption_data
from mmkeras.data.records import LoadReport
from mmkeras.data.synthetic_captions import SyntheticCaptions
from mmkeras.data.tokenizer import build_tokenizer, learn_vocabulary, special_token_ids
from mmkeras.metrics import caption_metrics
from mmkeras.models import build_image_captioner
from training import config as config_lib
from training import distribute
from training import loop


class DataError(ValueError):
    """The data named by `--data` cannot be used; the message says where and why."""


def tfrecord_dir(spec):
    """The folder of a `tfrecord:DIR` data spec, else None."""
    kind, _, rest = str(spec).partition(":")
    return rest if kind.strip().lower() == "tfrecord" and rest else None


def load_splits(data_cfg, seed, work_dir=None):
    """Returns `(splits, report, synthetic)`; `synthetic` is None for file data.

    For `tfrecord:DIR` data the training split holds image ids and captions
    only (training streams the shards), and the validation and test images
    are extracted into `work_dir/eval_images/` for evaluation.

    Raises:
        DataError: for unreadable or malformed data, naming the file and row.
    """
    try:
        return _load_splits(data_cfg, seed, work_dir)
    except (ValueError, OSError) as e:
        raise DataError(str(e)) from e


def _load_splits(data_cfg, seed, work_dir=None):
    directory = tfrecord_dir(data_cfg.spec)
    if directory is not None:
        info = tfrecords.read_dataset_info(directory)
        eval_dir = os.path.join(work_dir or ".", "eval_images")
        splits = {
            "train": list(tfrecords.iter_records(directory, "train", info)),
            "validation": tfrecords.extract_images(
                directory, "validation", os.path.join(eval_dir, "validation"), info=info
            ),
            "test": tfrecords.extract_images(directory, "test", os.path.join(eval_dir, "test"), info=info),
        }
        report = LoadReport()
        report.count(splits)
        report.skipped_bad_examples = info.get("skipped_bad_examples", 0)
        report.dropped_empty_captions = info.get("dropped_empty_captions", 0)
        for name in ("train", "test"):
            if not splits[name]:
                raise ValueError(f"Data {data_cfg.spec!r} has no {name} examples.")
        return splits, report, None
    if data_cfg.spec == "synthetic":
        synthetic = SyntheticCaptions(
            seed=seed,
            image_size=data_cfg.image_size,
            num_train=data_cfg.synthetic_num_train,
            num_validation=data_cfg.synthetic_num_validation,
            num_test=data_cfg.synthetic_num_test,
        )
        splits = {s: synthetic.records(s) for s in ("train", "validation", "test")}
        report = LoadReport()
        report.count(splits)
        return splits, report, synthetic
    splits, report = load_caption_data(data_cfg.spec, skip_bad_examples=data_cfg.skip_bad_examples)
    for name in ("train", "test"):
        if not splits.get(name):
            raise ValueError(f"Data {data_cfg.spec!r} has no {name} examples.")
    return splits, report, None


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


def build_model(cfg, tokenizer):
    """The one place a config becomes an `ImageCaptioner` (build inside a strategy scope)."""
    ids = special_token_ids(tokenizer)
    return build_image_captioner(
        vocabulary_size=tokenizer.vocabulary_size(),
        sequence_length=cfg.data.sequence_length,
        image_size=cfg.data.image_size,
        hidden_dim=cfg.model.hidden_dim,
        num_layers=cfg.model.num_layers,
        num_heads=cfg.model.num_heads,
        intermediate_dim=cfg.model.intermediate_dim,
        dropout=cfg.model.dropout,
        stem_filters=cfg.model.stem_filters,
        convs_per_stage=cfg.model.convs_per_stage,
        backbone_class=cfg.model.backbone_class,
        backbone_preset=cfg.model.backbone_preset,
        tokenizer=tokenizer,
        start_token_id=ids["start"],
        end_token_id=ids["end"],
        pad_token_id=ids["pad"],
    )


def build_optimizer(train_cfg):
    return keras.optimizers.AdamW(
        learning_rate=learning_rate_schedule(train_cfg),
        weight_decay=train_cfg.weight_decay,
        clipnorm=train_cfg.clipnorm,
    )


def generate_captions(model, records, image_size, batch_size, synthetic=None, method="greedy"):
    """Greedy captions of `records`' images, in order."""
    captions = []
    for images in caption_pipeline.eval_image_dataset(records, image_size, batch_size, synthetic):
        captions.extend(model.caption(images, method=method))
    return captions


def run(cfg, model_dir, export_dir, strategy, verbose=1, restore_dir=None):
    """Trains, evaluates and exports a captioner; returns a dict of results.

    Every worker of a multi-worker strategy runs this; those other than the
    chief pass temporary `model_dir` and `export_dir` (see
    `training.distribute.WorkerDirs`) and read checkpoints from `restore_dir`,
    the chief's checkpoint directory.
    """
    os.makedirs(model_dir, exist_ok=True)
    # Written before training starts, so a crashed run still says what it was.
    with open(os.path.join(model_dir, "config.json"), "w") as f:
        f.write(config_lib.to_json(cfg))
    keras.utils.set_random_seed(cfg.train.seed)
    data_cfg = cfg.data
    splits, report, synthetic = load_splits(data_cfg, cfg.train.seed, model_dir)
    logging.info("Data %s: %s", data_cfg.spec, report.summary())

    train_captions = [c for r in splits["train"] for c in r.captions]
    vocabulary = learn_vocabulary(train_captions, data_cfg.vocabulary_size)
    vocabulary_file = os.path.join(model_dir, "vocabulary.txt")
    with open(vocabulary_file, "w", encoding="utf-8") as f:
        f.write("\n".join(vocabulary) + "\n")
    tokenizer = build_tokenizer(vocabulary)

    stats = {s: caption_pipeline.caption_stats(r, tokenizer, data_cfg.sequence_length) for s, r in splits.items()}
    for split, s in stats.items():
        logging.info("%s: %s", split, s.summary())
    with open(os.path.join(model_dir, "data_report.json"), "w") as f:
        json.dump(
            {
                "spec": data_cfg.spec,
                "vocabulary_size": len(vocabulary),
                "images_per_split": {s: len(r) for s, r in splits.items()},
                "skipped_bad_examples": report.skipped_bad_examples,
                "dropped_empty_captions": report.dropped_empty_captions,
                "truncated_captions": {s: v.truncated_captions for s, v in stats.items()},
            },
            f,
            indent=2,
        )

    sharded_dir = tfrecord_dir(data_cfg.spec)
    train_ds = None if sharded_dir else caption_pipeline.caption_dataset(
        splits["train"], tokenizer, data_cfg.image_size, data_cfg.sequence_length,
        data_cfg.batch_size, training=True, seed=cfg.train.seed, synthetic=synthetic,
        augment=data_cfg.augment, cache=data_cfg.cache,
        skip_bad_examples=data_cfg.skip_bad_examples,
    )
    val_records = splits.get("validation") or []
    val_ds = None
    if val_records:
        val_ds = caption_pipeline.caption_dataset(
            val_records, tokenizer, data_cfg.image_size, data_cfg.sequence_length,
            data_cfg.batch_size, training=False, synthetic=synthetic,
        )

    # The policy applies to layers created while it is set; the model keeps it.
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(cfg.train.mixed_precision)
    try:
        with strategy.scope():
            model = build_model(cfg, tokenizer)
            # Under mixed_float16, compile wraps the optimizer in a LossScaleOptimizer.
            model.compile(optimizer=build_optimizer(cfg.train))
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    logging.info("Model parameters: %d", model.count_params())

    chief = distribute.is_chief(strategy)
    global_batch = data_cfg.batch_size
    distribute.per_replica_batch_size(global_batch, strategy)

    def make_dataset(examples_seen):
        # Both streams are fixed functions of the seed, so skipping what was
        # already trained puts a resumed run exactly where the checkpointed one
        # was (instead of checkpointing tf.data iterators, which would store
        # the in-memory image cache and shuffle buffers in every checkpoint).
        if sharded_dir:
            # Each worker reads its own shards (file-based sharding) at the
            # per-replica batch size; it skips serialized records, <= 1 epoch.
            def worker_dataset(context):
                return tfrecords.caption_train_dataset(
                    sharded_dir, tokenizer, data_cfg.image_size, data_cfg.sequence_length,
                    context.get_per_replica_batch_size(global_batch), seed=cfg.train.seed,
                    augment=data_cfg.augment, num_input_pipelines=context.num_input_pipelines,
                    input_pipeline_id=context.input_pipeline_id,
                    start_example=examples_seen // context.num_input_pipelines,
                )

            return strategy.distribute_datasets_from_function(worker_dataset)
        # In-memory data: every worker builds the global stream and keeps its
        # replicas' parts of each global batch (AutoShardPolicy.DATA).
        # Skipping re-reads cached images and re-tokenizes captions but trains
        # nothing: seconds for data that fits in memory.
        return distribute.distribute_dataset(strategy, train_ds.skip(examples_seen // global_batch))

    outcome = loop.train(
        model,
        strategy,
        make_dataset,
        total_steps=cfg.train.steps,
        global_batch_size=global_batch,
        checkpoint_dir=os.path.join(model_dir, "checkpoints"),
        restore_dir=restore_dir,
        checkpoint_every=cfg.train.checkpoint_every,
        log_every=cfg.train.log_every,
        steps_per_epoch=cfg.train.steps_per_epoch,
        max_minutes=cfg.train.max_minutes,
        log_dir=os.path.join(model_dir, "logs") if chief else None,
        jit_compile=cfg.train.jit_compile,
        verbose=verbose if chief else 0,
        chief=chief,
    )
    train_steps = outcome.steps
    train_seconds = outcome.seconds
    logging.info(
        "Trained to step %d in %.1f s (%.1f examples/s)%s; weights fingerprint %s "
        "(trainable %s)",
        train_steps, train_seconds, outcome.examples_per_second,
        " (time budget reached)" if outcome.stopped_early else "",
        outcome.weights_fingerprint, outcome.trainable_fingerprint,
    )
    if val_ds is not None:
        val_metrics = loop.evaluate(model, strategy, val_ds)
        logging.info("Validation: %s", ", ".join(f"{k} {v:.4f}" for k, v in val_metrics.items()))

    results = evaluate(model, cfg, splits["test"], tokenizer, synthetic, model_dir, strategy)
    results.update(train_steps=train_steps, train_seconds=round(train_seconds, 1))
    with open(os.path.join(model_dir, "eval_metrics.json"), "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)

    export_path = None
    if not chief:
        # Saving and exporting only read each variable's local copy (no
        # collectives), so other workers can stop here.
        return {"eval_metrics": results, "export_path": export_path, "model": model}
    model.save(os.path.join(model_dir, "model.keras"))
    if export_dir:
        from serving.export import export_captioner

        export_path = export_captioner(
            model, export_dir, cfg.export.model_name, cfg.export.version or None,
            vocabulary_file=vocabulary_file,
        )
        logging.info("Exported to %s", export_path)
    return {"eval_metrics": results, "export_path": export_path, "model": model}


def evaluate(model, cfg, test_records, tokenizer, synthetic, model_dir, strategy=None):
    """Caption metrics of greedy captions plus teacher-forced token accuracy."""
    data_cfg = cfg.data
    if cfg.eval.max_images:
        test_records = test_records[: cfg.eval.max_images]
    test_ds = caption_pipeline.caption_dataset(
        test_records, tokenizer, data_cfg.image_size, data_cfg.sequence_length,
        cfg.eval.batch_size, training=False, synthetic=synthetic,
    )
    # Not `model.evaluate`: like `fit`, it fails under MultiWorkerMirroredStrategy.
    strategy = strategy or tf.distribute.get_strategy()
    token_metrics = loop.evaluate(model, strategy, test_ds)
    if not distribute.is_chief(strategy):
        # Token accuracy needed every worker (its metrics are all-reduced);
        # generating captions only reads local variables, so the chief does it.
        return {"token_accuracy": round(float(token_metrics["token_accuracy"]), 6)}
    predictions = generate_captions(
        model, test_records, data_cfg.image_size, cfg.eval.batch_size, synthetic
    )
    references = [list(r.captions) for r in test_records]
    results = caption_metrics(predictions, references)
    results["token_accuracy"] = float(token_metrics["token_accuracy"])
    results["num_test_images"] = len(test_records)
    samples = [
        {"image": r.image, "generated": p, "references": list(r.captions)}
        for r, p in list(zip(test_records, predictions))[: max(cfg.eval.num_samples, 0)]
    ]
    with open(os.path.join(model_dir, "samples.json"), "w") as f:
        json.dump(samples, f, indent=2)
    for s in samples[:5]:
        logging.info("%s -> %r (ref %r)", s["image"], s["generated"], s["references"][0])
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in results.items()}
