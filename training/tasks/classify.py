"""Image+text classification and VQA: `FusionClassifier` with any fusion strategy.

`vqa` is the same task over an answer vocabulary (easy-vqa's 13 answers, the
synthetic shapes' answers). Writes `vocabulary.txt` (WordPiece over the
training texts, unless the text encoder brings a preset tokenizer),
`labels.txt`, `data_report.json`, `classification_report.txt` / `.json`,
`confusion_matrix.png` (single-label data), `predictions.jsonl` and, for
`model.fusion_weights=cv`, `cv_results.json`; exports the classifier
`serving_default` signature.
"""

import json
import os
import shutil

import numpy as np
import tensorflow as tf
from absl import logging

from mmkeras.data.classification_manifest import load_classification_manifest
from mmkeras.data.classification_pipeline import classification_dataset
from mmkeras.data.classification_pipeline import label_ids
from mmkeras.data.data_spec import parse_data_spec
from mmkeras.data.easy_vqa_format import load_easy_vqa
from mmkeras.data.flickr8k_match import load_flickr8k_match
from mmkeras.data.synthetic_vqa import load_synthetic_vqa
from mmkeras.data.text_preprocessor import text_preprocessor_from_preset
from mmkeras.data.text_preprocessor import text_preprocessor_from_vocabulary
from mmkeras.data.tokenizer import learn_vocabulary
from mmkeras.metrics import classification as classification_metrics
from mmkeras.metrics.bootstrap import bootstrap_interval
from mmkeras.metrics.plots import plot_confusion_matrix
from mmkeras.models.fusion_classifier import build_fusion_classifier
from training import distribute
from training import finetune
from training import loop
from training import transfer
from training.presets import resolve_preset
from training.tasks.base import ConfigError
from training.tasks.base import DataError
from training.tasks.base import Task
from training.tasks.base import image_encoder_kwargs
from training.tasks.base import text_encoder_kwargs

# Ablation: which modality each evaluation keeps.
ABLATIONS = {"image_only": (1.0, 0.0), "text_only": (0.0, 1.0)}


def load_classification_data(data_cfg, seed):
    """The `ClassificationData` named by `data_cfg.spec`.

    Raises:
        DataError: for unreadable or malformed data, naming the file and row.
    """
    try:
        spec = parse_data_spec(data_cfg.spec, ClassifyTask.data_kinds)
        if spec.kind == "synthetic":
            data = load_synthetic_vqa(
                seed=seed, image_size=data_cfg.image_size, num_train=data_cfg.synthetic_num_train,
                num_validation=data_cfg.synthetic_num_validation, num_test=data_cfg.synthetic_num_test,
                multi_label=data_cfg.synthetic_multi_label,
            )
        elif spec.kind == "easy_vqa":
            data = load_easy_vqa(seed=seed, skip_bad_examples=data_cfg.skip_bad_examples)
        elif spec.kind == "flickr8k_match":
            data = load_flickr8k_match(spec.path, seed=seed, skip_bad_examples=data_cfg.skip_bad_examples)
        else:
            data = load_classification_manifest(spec.path, skip_bad_examples=data_cfg.skip_bad_examples)
    except (ValueError, OSError) as e:
        raise DataError(str(e)) from e
    for name in ("train", "test"):
        if not data.splits.get(name):
            raise DataError(f"Data {data_cfg.spec!r} has no {name} examples.")
    return data


def parse_fusion_weights(text):
    """`learned` -> "learned", `0.7,0.3` -> (0.7, 0.3); `cv` is resolved by the task."""
    text = str(text).strip().lower()
    if text in ("learned", "cv"):
        return text
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 2:
        raise ConfigError(
            "model.fusion_weights must be `learned`, `cv` or two numbers `IMAGE,TEXT`. "
            f"Received: model.fusion_weights={text!r}"
        )
    return values


def image_folds(records, num_folds, seed):
    """Splits `records` into `num_folds` lists; all examples of an image share a fold."""
    images = sorted({r.image for r in records})
    order = np.random.default_rng(seed).permutation(len(images))
    fold_of = {images[i]: n % num_folds for n, i in enumerate(order)}
    return [[r for r in records if fold_of[r.image] == k] for k in range(num_folds)]


class ClassifyTask(Task):
    """Image+text classification with a fusion strategy (`--fusion`)."""

    name = "classify"
    data_kinds = ("synthetic", "easy_vqa", "flickr8k_match", "csv", "jsonl")
    model_name = "classifier"
    early_stopping_metric = "val_accuracy"

    def __init__(self, cfg, model_dir):
        super().__init__(cfg, model_dir)
        self._predict_functions = {}

    # Data.
    def load_data(self):
        cfg, data_cfg = self.cfg, self.cfg.data
        self.data = load_classification_data(data_cfg, cfg.train.seed)
        self.splits = self.data.splits
        self.label_names = list(self.data.label_names)
        logging.info("Data %s: %s", data_cfg.spec, self.data.report.summary())

        self.labels_file = os.path.join(self.model_dir, "labels.txt")
        with open(self.labels_file, "w", encoding="utf-8") as f:
            f.write("\n".join(self.label_names) + "\n")
        preset = resolve_preset(cfg.model.text_encoder.backbone_preset)
        self.vocabulary_file = None
        if preset:
            # The backbone was trained with its own tokenizer; a learned
            # vocabulary would not match its embeddings.
            self.text_preprocessor = text_preprocessor_from_preset(preset, data_cfg.sequence_length)
        else:
            # A transferred text tower keeps the vocabulary it was trained with.
            vocabulary = transfer.source_vocabulary(cfg.model.init_from) or learn_vocabulary(
                [r.text for r in self.splits["train"]], data_cfg.vocabulary_size)
            self.vocabulary_file = os.path.join(self.model_dir, "vocabulary.txt")
            with open(self.vocabulary_file, "w", encoding="utf-8") as f:
                f.write("\n".join(vocabulary) + "\n")
            self.text_preprocessor = text_preprocessor_from_vocabulary(vocabulary, data_cfg.sequence_length)

        counts = {}
        for split, records in self.splits.items():
            split_counts = dict.fromkeys(self.label_names, 0)
            for r in records:
                for label in r.labels:
                    split_counts[label] = split_counts.get(label, 0) + 1
            counts[split] = split_counts
        train_counts = counts["train"]
        self.write_json(
            "data_report.json",
            {
                "spec": data_cfg.spec,
                "task": cfg.task,
                "multi_label": self.data.multi_label,
                "num_labels": len(self.label_names),
                "examples_per_split": {s: len(r) for s, r in self.splits.items()},
                "images_per_split": {s: len({x.image for x in r}) for s, r in self.splits.items()},
                "label_counts": counts,
                "majority_class_rate_test": self._majority_rate(train_counts, self.splits["test"]),
                "skipped_bad_examples": self.data.report.skipped_bad_examples,
                "skipped_reasons": self.data.report.skipped_reasons[:20],
            },
        )

    def _majority_rate(self, train_counts, test_records):
        """Test accuracy of always answering the most frequent training label."""
        if self.data.multi_label or not test_records:
            return None
        majority = max(train_counts, key=train_counts.get)
        return round(sum(r.labels[0] == majority for r in test_records) / len(test_records), 6)

    def dataset(self, records, batch_size, training):
        """Batches of `records`; with frozen encoders, of their cached features.

        Evaluation uses the caches too: a frozen encoder gives the same
        features (inference mode), and each distinct image (text) is encoded
        once instead of once per question (easy-vqa: ~10 per image).
        """
        data_cfg = self.cfg.data
        return classification_dataset(
            records, self.label_names, self.text_preprocessor, data_cfg.image_size, batch_size,
            training=training, multi_label=self.data.multi_label, seed=self.cfg.train.seed,
            synthetic=self.data.synthetic, augment=data_cfg.augment and training,
            cache=data_cfg.cache or not training, skip_bad_examples=data_cfg.skip_bad_examples,
            feature_extractor=self.image_feature_extractor, feature_views=data_cfg.feature_views,
            text_features=finetune.text_feature_lookup(
                self.text_feature_extractor, [r.text for r in records], self.text_preprocessor, data_cfg),
        )

    def global_train_dataset(self):
        return self.dataset(self._train_records(), self.cfg.data.batch_size, training=True)

    def _train_records(self):
        return getattr(self, "_cv_train_records", None) or self.splits["train"]

    def validation_dataset(self):
        records = self.splits.get("validation") or []
        return self.dataset(records, self.cfg.eval.batch_size, training=False) if records else None

    # Model.
    def build_model(self, fusion_weights=None):
        cfg, model_cfg = self.cfg, self.cfg.model
        weights = fusion_weights or self.fusion_weights()
        image, text = model_cfg.image_encoder, model_cfg.text_encoder
        return build_fusion_classifier(
            num_classes=len(self.label_names),
            image_size=cfg.data.image_size,
            sequence_length=cfg.data.sequence_length,
            vocabulary_size=self.text_preprocessor.tokenizer.vocabulary_size(),
            hidden_dim=model_cfg.hidden_dim,
            num_heads=model_cfg.num_heads,
            intermediate_dim=model_cfg.intermediate_dim,
            dropout=model_cfg.dropout,
            fusion=model_cfg.fusion,
            fusion_weights=weights,
            fusion_num_layers=model_cfg.fusion_num_layers,
            fusion_bidirectional=model_cfg.fusion_bidirectional,
            gcn_cross_modal_edges=model_cfg.gcn_cross_modal_edges,
            modality_dropout=model_cfg.modality_dropout,
            head_hidden_dim=model_cfg.head_hidden_dim,
            label_names=self.label_names,
            multi_label=self.data.multi_label,
            text_preprocessor=self.text_preprocessor,
            image_encoder_kwargs=image_encoder_kwargs(image),
            text_encoder_kwargs=text_encoder_kwargs(text),
        )

    def encoders(self, model):
        return {"image_encoder": model.image_encoder, "text_encoder": model.text_encoder}

    def fusion_weights(self):
        weights = parse_fusion_weights(self.cfg.model.fusion_weights)
        if weights == "cv":
            chosen = getattr(self, "cv_weights", None)
            if chosen is None:
                raise ConfigError("model.fusion_weights=cv: the cross-validation has not run.")
            return chosen
        return weights

    def prepare(self, strategy):
        """Before the final model: k-fold CV of the fusion weights, when asked for."""
        if parse_fusion_weights(self.cfg.model.fusion_weights) != "cv":
            return
        if self.cfg.model.fusion not in ("weighted_sum", "late"):
            raise ConfigError(
                "model.fusion_weights=cv chooses the weights of `weighted_sum` or `late` fusion. "
                f"Received: model.fusion={self.cfg.model.fusion!r}"
            )
        self.cv_weights = self.cross_validate(strategy)

    def cross_validate(self, strategy):
        """k-fold CV over `classify.cv_grid`; returns the best `(image, text)` weights."""
        from training import experiment

        cfg = self.cfg
        folds = image_folds(self.splits["train"], cfg.classify.cv_folds, cfg.train.seed)
        if cfg.classify.cv_folds < 2 or min(len(f) for f in folds) == 0:
            raise ConfigError(
                f"classify.cv_folds must be >= 2 with every fold non-empty. Received: "
                f"classify.cv_folds={cfg.classify.cv_folds} over {len(self.splits['train'])} examples"
            )
        cv_cfg = experiment.cv_config(cfg, cfg.classify.cv_steps)
        scratch = os.path.join(self.model_dir, "cv")
        table = []
        for image_weight in cfg.classify.cv_grid:
            weights = (float(image_weight), round(1.0 - float(image_weight), 10))
            scores = []
            for k, held_out in enumerate(folds):
                self._cv_train_records = [r for j, f in enumerate(folds) if j != k for r in f]
                model = experiment.build_compiled_model(
                    self, cv_cfg, strategy, build=lambda w=weights: self.build_model(fusion_weights=w), quiet=True
                )
                experiment.train_model(
                    self, model, cv_cfg, os.path.join(scratch, f"w{image_weight}_fold{k}"), strategy,
                    verbose=0, validation=False,
                )
                held_out_ds = self.dataset(held_out, cfg.eval.batch_size, training=False)
                scores.append(loop.evaluate(model, strategy, held_out_ds)["accuracy"])
            self._cv_train_records = None
            table.append({"image_weight": weights[0], "text_weight": weights[1],
                          "fold_accuracy": scores, "mean_accuracy": float(np.mean(scores))})
            logging.info("CV fusion weights %s: mean held-out accuracy %.4f", weights, np.mean(scores))
        shutil.rmtree(scratch, ignore_errors=True)
        best = max(table, key=lambda row: row["mean_accuracy"])
        if distribute.is_chief(strategy):
            self.write_json("cv_results.json", {"folds": cfg.classify.cv_folds, "steps": cfg.classify.cv_steps,
                                                "grid": table, "chosen": best})
        print(f"Cross-validated fusion weights: image {best['image_weight']}, text {best['text_weight']} "
              f"(mean held-out accuracy {best['mean_accuracy']:.4f})", flush=True)
        return (best["image_weight"], best["text_weight"])

    # Evaluation.
    def predict(self, model, records, image_present=1.0, text_present=1.0):
        """Probabilities `(n, num_classes)` of `records`, in order (on this worker)."""
        dataset = self.dataset(records, self.cfg.eval.batch_size, training=False)

        def with_presence(x, y):
            # Always present (1.0 = kept), so every call has one input signature.
            batch = tf.shape(x["token_ids"])[0]
            x = dict(x, image_present=tf.fill([batch], image_present), text_present=tf.fill([batch], text_present))
            return x, y

        dataset = dataset.map(with_presence, num_parallel_calls=tf.data.AUTOTUNE)
        # One compiled function per model, reused by every evaluation pass.
        # (The model is kept with its function, so its id is never reused.)
        if id(model) not in self._predict_functions:
            self._predict_functions[id(model)] = (model, tf.function(
                lambda x: model.probabilities(model(x, training=False)["logits"]), reduce_retracing=True))
        probabilities = self._predict_functions[id(model)][1]
        return np.concatenate([probabilities(x).numpy() for x, _ in dataset], axis=0)

    def _report(self, targets, probabilities, model):
        decisions = np.asarray(model.decisions(probabilities))
        if self.data.multi_label:
            return classification_metrics.multilabel_report(targets, decisions, self.label_names), decisions
        return classification_metrics.classification_report(targets, decisions, self.label_names), decisions

    def tune_thresholds(self, model):
        """Per-label thresholds maximising validation F1 (multi-label data)."""
        records = self.splits.get("validation") or []
        if not (self.data.multi_label and self.cfg.classify.tune_thresholds and records):
            return None
        targets = label_ids(records, self.label_names, True)
        thresholds = classification_metrics.best_thresholds(targets, self.predict(model, records))
        model.thresholds.assign(np.asarray(thresholds, "float32"))
        logging.info("Tuned thresholds on validation: %s", np.round(thresholds, 2).tolist())
        return [round(float(t), 4) for t in thresholds]

    def evaluate(self, model, strategy):
        cfg = self.cfg
        test_records = self.test_records()
        test_loss = loop.evaluate(model, strategy, self.dataset(test_records, cfg.eval.batch_size, False))
        if not distribute.is_chief(strategy):
            return {"accuracy": round(test_loss["accuracy"], 6)}
        thresholds = self.tune_thresholds(model)
        targets = label_ids(test_records, self.label_names, self.data.multi_label)
        probabilities = self.predict(model, test_records)
        report, decisions = self._report(targets, probabilities, model)

        low, high = bootstrap_interval(classification_metrics.correct_examples(targets, decisions))
        results = {
            "accuracy": report["accuracy"],
            "accuracy_ci_low": low,
            "accuracy_ci_high": high,
            "macro_f1": report["macro_f1"],
            "weighted_f1": report["weighted_f1"],
            "loss": test_loss["loss"],
            "num_test_examples": len(test_records),
        }
        if thresholds is not None:
            results["thresholds"] = thresholds
        results.update(classification_metrics.flat_report_metrics(report))
        if cfg.classify.ablation:
            for name, (image_present, text_present) in ABLATIONS.items():
                ablated, _ = self._report(targets, self.predict(model, test_records, image_present, text_present),
                                          model)
                results[f"accuracy_{name}"] = ablated["accuracy"]
        rate = self._majority_rate(
            {n: sum(n in r.labels for r in self.splits["train"]) for n in self.label_names}, test_records)
        if rate is not None:
            results["majority_class_accuracy"] = rate

        text = classification_metrics.format_report(report)
        print(text, flush=True)
        with open(os.path.join(self.model_dir, "classification_report.txt"), "w") as f:
            f.write(text + "\n")
        self.write_json("classification_report.json", report)
        if not self.data.multi_label:
            plot_confusion_matrix(
                np.asarray(report["confusion_matrix"]), self.label_names,
                os.path.join(self.model_dir, "confusion_matrix.png"),
                title=f"{cfg.task} test confusion ({cfg.model.fusion} fusion)",
            )
        self._write_predictions(test_records, probabilities, decisions)
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in results.items()}

    def _write_predictions(self, records, probabilities, decisions):
        with open(os.path.join(self.model_dir, "predictions.jsonl"), "w") as f:
            for record, probs, decision in zip(records, probabilities, decisions):
                if self.data.multi_label:
                    predicted = [self.label_names[j] for j in np.flatnonzero(decision)]
                    confidence = float(np.max(probs))
                else:
                    predicted = [self.label_names[int(decision)]]
                    confidence = float(probs[int(decision)])
                row = {"image": record.image, "text": record.text, "labels": list(record.labels),
                       "predicted": predicted, "confidence": round(confidence, 6),
                       "correct": sorted(predicted) == sorted(record.labels)}
                f.write(json.dumps(row) + "\n")

    # Export.
    def export(self, model, export_dir):
        from serving.export import export_classifier

        return export_classifier(
            model, export_dir, self.export_name, self.cfg.export.version or None, assets=self.assets(),
            max_pixels=self.cfg.export.max_pixels,
        )

    def assets(self):
        return [p for p in (self.vocabulary_file, self.labels_file) if p]


class VQATask(ClassifyTask):
    """Visual question answering: classification over the answer vocabulary."""

    name = "vqa"
    model_name = "vqa"
