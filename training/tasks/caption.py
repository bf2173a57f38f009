"""The captioning task: caption data, `ImageCaptioner`, caption metrics, export."""

import json
import os

from absl import logging

from mmkeras.data import caption_pipeline
from mmkeras.data import tfrecords
from mmkeras.data.caption_formats import CAPTION_FILE_KINDS
from mmkeras.data.caption_formats import load_caption_data
from mmkeras.data.data_spec import parse_data_spec
from mmkeras.data.records import LoadReport
from mmkeras.data.splits import SPLITS
from mmkeras.data.synthetic_captions import SyntheticCaptions
from mmkeras.data.tokenizer import build_tokenizer, learn_vocabulary, special_token_ids, split_words
from mmkeras.metrics import caption_metrics
from mmkeras.metrics.bootstrap import DEFAULT_CONFIDENCE
from mmkeras.metrics.caption_metrics import caption_words
from mmkeras.metrics.caption_metrics import novel_word_rate
from mmkeras.models import build_image_captioner
from mmkeras.models.self_critical import CIDErReward
from training import distribute
from training import loop
from training.tasks.base import ConfigError
from training.tasks.base import DataError
from training.tasks.base import Task
from training.tasks.base import image_encoder_kwargs


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
    spec = parse_data_spec(data_cfg.spec, CaptionTask.data_kinds)
    if spec.kind == "tfrecord":
        directory = spec.path
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
        synthetic = None
    elif spec.kind == "synthetic":
        synthetic = SyntheticCaptions(
            seed=seed,
            image_size=data_cfg.image_size,
            num_train=data_cfg.synthetic_num_train,
            num_validation=data_cfg.synthetic_num_validation,
            num_test=data_cfg.synthetic_num_test,
        )
        splits = {s: synthetic.records(s) for s in SPLITS}
        report = LoadReport()
        report.count(splits)
    else:
        splits, report = load_caption_data(spec, skip_bad_examples=data_cfg.skip_bad_examples)
        synthetic = None
    for name in ("train", "test"):
        if not splits.get(name):
            raise ValueError(f"Data {data_cfg.spec!r} has no {name} examples.")
    return splits, report, synthetic


def build_model(cfg, tokenizer):
    """The one place a config becomes an `ImageCaptioner` (build inside a strategy scope)."""
    ids = special_token_ids(tokenizer)
    image_kwargs = image_encoder_kwargs(cfg.model.image_encoder)
    image_kwargs["image_dropout"] = image_kwargs.pop("dropout")
    return build_image_captioner(
        vocabulary_size=tokenizer.vocabulary_size(),
        sequence_length=cfg.data.sequence_length,
        image_size=cfg.data.image_size,
        hidden_dim=cfg.model.hidden_dim,
        num_layers=cfg.model.num_layers,
        num_heads=cfg.model.num_heads,
        intermediate_dim=cfg.model.intermediate_dim,
        dropout=cfg.model.dropout,
        **image_kwargs,
        tokenizer=tokenizer,
        start_token_id=ids["start"],
        end_token_id=ids["end"],
        pad_token_id=ids["pad"],
    )


def generate_captions(model, records, image_size, batch_size, synthetic=None, method="greedy",
                      **generate_kwargs):
    """Captions of `records`' images, in order; `generate_kwargs` go to `model.caption`."""
    captions = []
    for images in caption_pipeline.eval_image_dataset(records, image_size, batch_size, synthetic):
        captions.extend(model.caption(images, method=method, **generate_kwargs))
    return captions


def sharded_train_dataset(task, strategy, examples_seen, tokenizer=None, sequence_length=None,
                          model_inputs=None):
    """The distributed training stream of a `tfrecord:DIR` caption data set (any caption-data task).

    Each worker reads its own shards (file-based sharding) at the per-replica
    batch size; it skips serialized records, <= 1 epoch. `tokenizer` and
    `sequence_length` make the captioner's teacher-forcing inputs,
    `model_inputs` any other (see `tfrecords.caption_train_dataset`).
    """
    data_cfg, global_batch = task.cfg.data, task.cfg.data.batch_size

    def worker_dataset(context):
        return tfrecords.caption_train_dataset(
            task.sharded_dir, tokenizer, data_cfg.image_size, sequence_length,
            context.get_per_replica_batch_size(global_batch), seed=task.cfg.train.seed,
            augment=data_cfg.augment, num_input_pipelines=context.num_input_pipelines,
            input_pipeline_id=context.input_pipeline_id,
            start_example=examples_seen // context.num_input_pipelines, model_inputs=model_inputs,
        )

    return strategy.distribute_datasets_from_function(worker_dataset)


class CaptionTask(Task):
    """Image captioning: `ImageCaptioner` on caption data, BLEU/ROUGE-L/CIDEr-D.

    Writes `vocabulary.txt` (whole words or WordPiece pieces, learned from the
    training captions: `caption.vocabulary`),
    `data_report.json`, `samples.json` (the first `eval.num_samples` test
    images) and `predictions.jsonl` (greedy and beam captions and references
    of every evaluated test image); exports `serving_default` (greedy)
    and `beam_search`.
    """

    name = "caption"
    data_kinds = ("synthetic",) + CAPTION_FILE_KINDS + ("tfrecord",)
    model_name = "captioner"
    early_stopping_metric = "val_token_accuracy"

    def load_data(self):
        data_cfg = self.cfg.data
        self.splits, report, self.synthetic = load_splits(data_cfg, self.cfg.train.seed, self.model_dir)
        logging.info("Data %s: %s", data_cfg.spec, report.summary())

        train_captions = [c for r in self.splits["train"] for c in r.captions]
        vocabulary = learn_vocabulary(
            train_captions, data_cfg.vocabulary_size, level=self.cfg.caption.vocabulary,
            min_count=self.cfg.caption.min_word_count,
        )
        self.vocabulary_file = os.path.join(self.model_dir, "vocabulary.txt")
        with open(self.vocabulary_file, "w", encoding="utf-8") as f:
            f.write("\n".join(vocabulary) + "\n")
        self.tokenizer = build_tokenizer(vocabulary)

        stats = {
            s: caption_pipeline.caption_stats(r, self.tokenizer, data_cfg.sequence_length)
            for s, r in self.splits.items()
        }
        for split, s in stats.items():
            logging.info("%s: %s", split, s.summary())
        self.write_json(
            "data_report.json",
            {
                "spec": data_cfg.spec,
                "vocabulary_size": len(vocabulary),
                "images_per_split": {s: len(r) for s, r in self.splits.items()},
                "skipped_bad_examples": report.skipped_bad_examples,
                "dropped_empty_captions": report.dropped_empty_captions,
                "truncated_captions": {s: v.truncated_captions for s, v in stats.items()},
            },
        )
        spec = parse_data_spec(data_cfg.spec, self.data_kinds)
        self.sharded_dir = spec.path if spec.kind == "tfrecord" else None

    def _dataset(self, records, batch_size, training, feature_extractor=None):
        data_cfg = self.cfg.data
        return caption_pipeline.caption_dataset(
            records, self.tokenizer, data_cfg.image_size, data_cfg.sequence_length, batch_size,
            training=training, seed=self.cfg.train.seed, synthetic=self.synthetic,
            # Evaluation keeps the pipeline's defaults: every image once, cached.
            augment=data_cfg.augment and training, cache=data_cfg.cache or not training,
            skip_bad_examples=data_cfg.skip_bad_examples and training,
            feature_extractor=feature_extractor, feature_views=data_cfg.feature_views,
            # The self-critical reward finds each image's references by it.
            with_image_index=training and self.self_critical,
        )

    @property
    def self_critical(self):
        return self.cfg.caption.self_critical_from_step > 0

    def global_train_dataset(self):
        # Sharded TFRecords (train_dataset below) stream images: no feature cache.
        return self._dataset(self.splits["train"], self.cfg.data.batch_size, training=True,
                             feature_extractor=self.image_feature_extractor)

    def train_dataset(self, strategy, examples_seen):
        if not self.sharded_dir:
            return super().train_dataset(strategy, examples_seen)
        return sharded_train_dataset(self, strategy, examples_seen, tokenizer=self.tokenizer,
                                     sequence_length=self.cfg.data.sequence_length)

    def validation_dataset(self):
        records = self.splits.get("validation") or []
        return self._dataset(records, self.cfg.data.batch_size, training=False) if records else None

    def build_model(self):
        model = build_model(self.cfg, self.tokenizer)
        caption_cfg = self.cfg.caption
        if self.self_critical:
            self._check_self_critical()
            ids = special_token_ids(self.tokenizer)
            reward = CIDErReward(
                [list(r.captions) for r in self.splits["train"]], self.tokenizer.get_vocabulary(),
                end_token_id=ids["end"], pad_token_id=ids["pad"], start_token_id=ids["start"],
            )
            try:
                model.enable_self_critical(
                    reward, from_step=caption_cfg.self_critical_from_step,
                    num_samples=caption_cfg.self_critical_samples,
                )
            except ValueError as e:
                # from_step > 0 and the reward is callable here: the samples are what it refused.
                raise ConfigError(f"caption.self_critical_samples: {e}") from e
        return model

    def _check_self_critical(self):
        """Settings self-critical training cannot run with, as a `ConfigError` before training."""
        cfg, setting = self.cfg, "caption.self_critical_from_step"
        if self.sharded_dir:
            raise ConfigError(
                f"{setting}: self-critical training needs in-memory caption data (its reward looks up "
                f"each image's references); {cfg.data.spec!r} streams TFRecord shards. Use the source "
                "data (e.g. flickr8k:DIR) or set it to 0."
            )
        if cfg.train.jit_compile:
            raise ConfigError(
                f"{setting} with train.jit_compile: the self-critical step computes its CIDEr-D reward "
                "in Python (tf.numpy_function), which XLA cannot compile."
            )
        if cfg.train.early_stopping_patience > 0:
            raise ConfigError(
                f"{setting} with train.early_stopping_patience: early stopping watches teacher-forced "
                "validation metrics, which self-critical training does not optimise (it would restore "
                "the weights from before it). Set train.early_stopping_patience=0."
            )

    def encoders(self, model):
        return {"image_encoder": model.image_encoder}

    def evaluate(self, model, strategy):
        """Caption metrics of greedy captions plus teacher-forced token accuracy.

        With `caption.eval_beam`, the same metrics of beam-search captions
        (`caption.num_beams`, `caption.length_penalty`) come under `beam_`
        keys (`beam_bleu_4`, `beam_cider`, ...) and in samples as `"beam"`.
        Both decode with `caption.no_repeat_ngram_size`, as the export does.
        `novel_word_rate`: the fraction of generated words that occur in no
        training caption (0 with `caption.vocabulary=word`).
        `cider_ci_low` / `cider_ci_high`: the 95% bootstrap interval of CIDEr-D
        over the test images (`mmkeras.metrics.bootstrap_interval`).
        """
        cfg = self.cfg
        test_records = self.test_records()
        test_ds = self._dataset(test_records, cfg.eval.batch_size, training=False)
        # Not `model.evaluate`: like `fit`, it fails under MultiWorkerMirroredStrategy.
        token_metrics = loop.evaluate(model, strategy, test_ds)
        if not distribute.is_chief(strategy):
            # Token accuracy needed every worker (its metrics are all-reduced);
            # generating captions only reads local variables, so the chief does it.
            return {"token_accuracy": round(float(token_metrics["token_accuracy"]), 6)}
        caption_cfg = cfg.caption
        predictions = self.decode(model, test_records)
        references = [list(r.captions) for r in test_records]
        results = caption_metrics(predictions, references, confidence=DEFAULT_CONFIDENCE)
        # As the tokenizer splits them: generated captions are its tokens joined by spaces.
        train_words = caption_words((c for r in self.splits["train"] for c in r.captions), split_words)
        results["novel_word_rate"] = novel_word_rate(predictions, train_words)
        beam_predictions = None
        if caption_cfg.eval_beam:
            beam_predictions = self.decode(model, test_records, method="beam")
            beam_metrics = caption_metrics(beam_predictions, references, confidence=DEFAULT_CONFIDENCE)
            beam_metrics["novel_word_rate"] = novel_word_rate(beam_predictions, train_words)
            results.update({f"beam_{k}": v for k, v in beam_metrics.items()})
        results["token_accuracy"] = float(token_metrics["token_accuracy"])
        results["num_test_images"] = len(test_records)
        samples = []
        for i, (r, p) in enumerate(list(zip(test_records, predictions))[: max(cfg.eval.num_samples, 0)]):
            sample = {"image": r.image, "generated": p}
            if beam_predictions is not None:
                sample["beam"] = beam_predictions[i]
            samples.append({**sample, "references": list(r.captions)})
        self.write_json("samples.json", samples)
        # Every test image, for the report's best / median / worst gallery.
        with open(os.path.join(self.model_dir, "predictions.jsonl"), "w", encoding="utf-8") as f:
            for i, (r, p) in enumerate(zip(test_records, predictions)):
                row = {"image": r.image, "generated": p}
                if beam_predictions is not None:
                    row["beam"] = beam_predictions[i]
                f.write(json.dumps({**row, "references": list(r.captions)}) + "\n")
        for s in samples[:5]:
            logging.info("%s -> %r (ref %r)", s["image"], s["generated"], s["references"][0])
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in results.items()}

    def decoding_options(self, method="greedy"):
        """`model.caption` arguments of `method` as evaluation and the export decode.

        `"greedy"`, or `"beam"` with `caption.num_beams` and
        `caption.length_penalty`; both with `caption.no_repeat_ngram_size`.
        """
        caption_cfg = self.cfg.caption
        options = {"method": method, "no_repeat_ngram_size": caption_cfg.no_repeat_ngram_size}
        if method == "beam":
            options.update(num_beams=caption_cfg.num_beams, length_penalty=caption_cfg.length_penalty)
        return options

    def decode(self, model, records, method="greedy"):
        """Captions of `records`' images, decoded with `decoding_options(method)`."""
        cfg = self.cfg
        return generate_captions(model, records, cfg.data.image_size, cfg.eval.batch_size, self.synthetic,
                                 **self.decoding_options(method))

    def export(self, model, export_dir):
        from serving.export import export_captioner

        return export_captioner(
            model, export_dir, self.export_name, self.cfg.export.version or None,
            vocabulary_file=self.vocabulary_file, num_beams=self.cfg.caption.num_beams,
            no_repeat_ngram_size=self.cfg.caption.no_repeat_ngram_size,
            length_penalty=self.cfg.caption.length_penalty, max_pixels=self.cfg.export.max_pixels,
        )

    def assets(self):
        return [self.vocabulary_file]
