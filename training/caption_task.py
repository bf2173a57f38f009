"""The captioning task: data, model, training, evaluation and export for one config."""

import json
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from mmkeras.data import caption_pipeline
from mmkeras.data.caption_formats import load_caption_data
from mmkeras.data.records import LoadReport
from mmkeras.data.synthetic_captions import SyntheticCaptions
from mmkeras.data.tokenizer import build_tokenizer, learn_vocabulary, special_token_ids
from mmkeras.metrics import caption_metrics
from mmkeras.models import build_image_captioner
from training import config as config_lib


def load_splits(data_cfg, seed):
    """Returns `(splits, report, synthetic)`; `synthetic` is None for file data."""
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


def build_optimizer(train_cfg):
    return keras.optimizers.AdamW(
        learning_rate=learning_rate_schedule(train_cfg),
        weight_decay=train_cfg.weight_decay,
        clipnorm=train_cfg.clipnorm,
    )


class TimeBudget(keras.callbacks.Callback):
    """Stops training once `max_minutes` of wall time have passed."""

    def __init__(self, max_minutes):
        super().__init__()
        self.max_seconds = max_minutes * 60.0
        self.start = None
        self.stopped_early = False

    def on_train_begin(self, logs=None):
        self.start = time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        if self.max_seconds and time.monotonic() - self.start > self.max_seconds:
            self.model.stop_training = True
            self.stopped_early = True


def generate_captions(model, records, image_size, batch_size, synthetic=None, method="greedy"):
    """Greedy captions of `records`' images, in order."""
    captions = []
    for images in caption_pipeline.eval_image_dataset(records, image_size, batch_size, synthetic):
        captions.extend(model.caption(images, method=method))
    return captions


def run(cfg, model_dir, export_dir, strategy, verbose=1):
    """Trains, evaluates and exports a captioner; returns a dict of results."""
    os.makedirs(model_dir, exist_ok=True)
    # Written before training starts, so a crashed run still says what it was.
    with open(os.path.join(model_dir, "config.json"), "w") as f:
        f.write(config_lib.to_json(cfg))
    keras.utils.set_random_seed(cfg.train.seed)
    data_cfg = cfg.data
    splits, report, synthetic = load_splits(data_cfg, cfg.train.seed)
    logging.info("Data %s: %s", data_cfg.spec, report.summary())

    train_captions = [c for r in splits["train"] for c in r.captions]
    vocabulary = learn_vocabulary(train_captions, data_cfg.vocabulary_size)
    vocabulary_file = os.path.join(model_dir, "vocabulary.txt")
    with open(vocabulary_file, "w", encoding="utf-8") as f:
        f.write("\n".join(vocabulary) + "\n")
    tokenizer = build_tokenizer(vocabulary)
    ids = special_token_ids(tokenizer)

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

    train_ds = caption_pipeline.caption_dataset(
        splits["train"], tokenizer, data_cfg.image_size, data_cfg.sequence_length,
        data_cfg.batch_size, training=True, seed=cfg.train.seed, synthetic=synthetic,
        augment=data_cfg.augment, cache=data_cfg.cache,
    )
    val_records = splits.get("validation") or []
    val_ds = None
    if val_records:
        val_ds = caption_pipeline.caption_dataset(
            val_records, tokenizer, data_cfg.image_size, data_cfg.sequence_length,
            data_cfg.batch_size, training=False, synthetic=synthetic,
        )

    with strategy.scope():
        model = build_image_captioner(
            vocabulary_size=len(vocabulary),
            sequence_length=data_cfg.sequence_length,
            image_size=data_cfg.image_size,
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
        model.compile(optimizer=build_optimizer(cfg.train))
    logging.info("Model parameters: %d", model.count_params())

    steps_per_epoch = min(cfg.train.steps_per_epoch, cfg.train.steps)
    epochs = math.ceil(cfg.train.steps / steps_per_epoch)
    budget = TimeBudget(cfg.train.max_minutes)
    callbacks = [
        budget,
        keras.callbacks.TensorBoard(os.path.join(model_dir, "logs"), update_freq=50),
        keras.callbacks.ModelCheckpoint(
            os.path.join(model_dir, "checkpoints", "latest.weights.h5"),
            save_weights_only=True,
        ),
    ]
    start = time.monotonic()
    model.fit(
        train_ds,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        validation_data=val_ds,
        validation_freq=epochs,
        callbacks=callbacks,
        verbose=verbose,
    )
    train_seconds = time.monotonic() - start
    train_steps = int(model.optimizer.iterations.numpy())
    logging.info("Trained %d steps in %.1f s%s", train_steps, train_seconds,
                 " (time budget reached)" if budget.stopped_early else "")

    results = evaluate(model, cfg, splits["test"], tokenizer, synthetic, model_dir)
    results.update(train_steps=train_steps, train_seconds=round(train_seconds, 1))
    with open(os.path.join(model_dir, "eval_metrics.json"), "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)

    model.save(os.path.join(model_dir, "model.keras"))
    export_path = None
    if export_dir:
        from serving.export import export_captioner

        export_path = export_captioner(
            model, export_dir, cfg.export.model_name, cfg.export.version or None,
            vocabulary_file=vocabulary_file,
        )
        logging.info("Exported to %s", export_path)
    return {"eval_metrics": results, "export_path": export_path, "model": model}


def evaluate(model, cfg, test_records, tokenizer, synthetic, model_dir):
    """Caption metrics of greedy captions plus teacher-forced token accuracy."""
    data_cfg = cfg.data
    if cfg.eval.max_images:
        test_records = test_records[: cfg.eval.max_images]
    test_ds = caption_pipeline.caption_dataset(
        test_records, tokenizer, data_cfg.image_size, data_cfg.sequence_length,
        cfg.eval.batch_size, training=False, synthetic=synthetic,
    )
    token_metrics = model.evaluate(test_ds, verbose=0, return_dict=True)
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
