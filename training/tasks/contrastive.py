"""The contrastive task: `DualEncoder` on image-caption pairs, retrieval and zero-shot metrics.

Reads the captioning data kinds (synthetic, flickr8k, coco, csv/jsonl,
tfrecord). Writes `vocabulary.txt` (WordPiece over the training captions,
unless the text tower brings a preset tokenizer), `data_report.json`,
`retrieval_samples.json` (text queries with their top-5 test images) and
`zero_shot.json`; exports the `embed_images` and `embed_texts` signatures.
"""

import dataclasses
import os
import weakref

import numpy as np
import tensorflow as tf
from absl import logging

from mmkeras.data import caption_pipeline
from mmkeras.data.contrastive_pipeline import contrastive_dataset
from mmkeras.data.contrastive_pipeline import contrastive_inputs
from mmkeras.data.contrastive_pipeline import text_dataset
from mmkeras.data.data_spec import parse_data_spec
from mmkeras.data.text_preprocessor import text_preprocessor_from_preset
from mmkeras.data.text_preprocessor import text_preprocessor_from_vocabulary
from mmkeras.data.tokenizer import learn_vocabulary
from mmkeras.metrics import retrieval
from mmkeras.metrics.bootstrap import DEFAULT_CONFIDENCE
from mmkeras.models.dual_encoder import build_dual_encoder
from training import distribute
from training import finetune
from training import loop
from training import transfer
from training import zero_shot
from training.presets import resolve_preset
from training.tasks.base import Task
from training.tasks.base import image_encoder_kwargs
from training.tasks.base import text_encoder_kwargs
from training.tasks.caption import CaptionTask
from training.tasks.caption import load_splits
from training.tasks.caption import sharded_train_dataset


def first_caption(record):
    """`record` with only its first caption (one positive text per image)."""
    return dataclasses.replace(record, captions=record.captions[:1])


# model -> {purpose: tf.function}; evaluation, zero-shot and search embed
# many batches and sets with one trace each.
_FUNCTIONS = weakref.WeakKeyDictionary()


def _compiled(model, name, fn):
    """The `tf.function` of `fn` for (model, name), traced once."""
    functions = _FUNCTIONS.setdefault(model, {})
    if name not in functions:
        functions[name] = tf.function(fn, reduce_retracing=True, autograph=False)
    return functions[name]


def embed_images(model, records, image_size, batch_size, synthetic=None):
    """Unit-norm embeddings `(len(records), dim)` of `records`' images, in order."""
    fn = _compiled(model, "images", lambda images: model.image_embeddings({"images": images}, training=False))
    batches = caption_pipeline.eval_image_dataset(records, image_size, batch_size, synthetic)
    return np.concatenate([fn(images).numpy() for images in batches], axis=0)


def embed_texts(model, texts, text_preprocessor, batch_size):
    """Unit-norm embeddings `(len(texts), dim)` of `texts`, in order."""
    fn = _compiled(model, "texts",
                   lambda x: model.text_embeddings(x["token_ids"], x["padding_mask"], training=False))
    return np.concatenate([fn(x).numpy() for x in text_dataset(texts, text_preprocessor, batch_size)], axis=0)


class ContrastiveTask(Task):
    """CLIP-style image-text contrastive training (`mmkeras.models.DualEncoder`)."""

    name = "contrastive"
    data_kinds = CaptionTask.data_kinds
    model_name = "dual_encoder"
    early_stopping_metric = "val_loss"

    # Data.
    def load_data(self):
        cfg, data_cfg = self.cfg, self.cfg.data
        self.splits, report, self.synthetic = load_splits(data_cfg, cfg.train.seed, self.model_dir)
        logging.info("Data %s: %s", data_cfg.spec, report.summary())
        preset = resolve_preset(cfg.model.text_encoder.backbone_preset)
        self.vocabulary_file = None
        if preset:
            # A pretrained text tower keeps the tokenizer its embeddings were trained with.
            self.text_preprocessor = text_preprocessor_from_preset(preset, data_cfg.sequence_length)
        else:
            captions = [c for r in self.splits["train"] for c in r.captions]
            # A transferred text tower keeps the vocabulary it was trained with.
            vocabulary = transfer.source_vocabulary(cfg.model.init_from) or learn_vocabulary(
                captions, data_cfg.vocabulary_size)
            self.vocabulary_file = os.path.join(self.model_dir, "vocabulary.txt")
            with open(self.vocabulary_file, "w", encoding="utf-8") as f:
                f.write("\n".join(vocabulary) + "\n")
            self.text_preprocessor = text_preprocessor_from_vocabulary(vocabulary, data_cfg.sequence_length)
        self.write_json("data_report.json", {
            "spec": data_cfg.spec,
            "task": cfg.task,
            "images_per_split": {s: len(r) for s, r in self.splits.items()},
            "captions_per_split": {s: sum(len(x.captions) for x in r) for s, r in self.splits.items()},
            "skipped_bad_examples": report.skipped_bad_examples,
            "dropped_empty_captions": report.dropped_empty_captions,
        })
        spec = parse_data_spec(data_cfg.spec, self.data_kinds)
        self.sharded_dir = spec.path if spec.kind == "tfrecord" else None

    def _dataset(self, records, batch_size, training, feature_extractor=None, text_features=None):
        data_cfg = self.cfg.data
        return contrastive_dataset(
            records, self.text_preprocessor, data_cfg.image_size, batch_size, training=training,
            seed=self.cfg.train.seed, synthetic=self.synthetic, augment=data_cfg.augment and training,
            cache=data_cfg.cache or not training, skip_bad_examples=data_cfg.skip_bad_examples and training,
            feature_extractor=feature_extractor, text_features=text_features, feature_views=data_cfg.feature_views,
        )

    def _train_text_features(self):
        """The frozen text tower's cached features of every training caption, or None."""
        captions = [c for r in self.splits["train"] for c in r.captions]
        return finetune.text_feature_lookup(self.text_feature_extractor, captions, self.text_preprocessor,
                                            self.cfg.data)

    def global_train_dataset(self):
        return self._dataset(self.splits["train"], self.cfg.data.batch_size, training=True,
                             feature_extractor=self.image_feature_extractor,
                             text_features=self._train_text_features())

    def train_dataset(self, strategy, examples_seen):
        if not self.sharded_dir:
            return super().train_dataset(strategy, examples_seen)
        # Sharded input streams: its captions are not known before training.
        return sharded_train_dataset(self, strategy, examples_seen,
                                     model_inputs=contrastive_inputs(self.text_preprocessor))

    def validation_dataset(self):
        # One caption per image: evaluation batches hold every (image, caption)
        # pair in order, so an image's five captions would share a batch and
        # its copies would be each other's false negatives.
        records = [first_caption(r) for r in self.splits.get("validation") or []]
        return self._dataset(records, self.cfg.data.batch_size, training=False) if records else None

    # Model.
    def build_model(self):
        cfg, model_cfg = self.cfg, self.cfg.model
        image, text = model_cfg.image_encoder, model_cfg.text_encoder
        return build_dual_encoder(
            image_size=cfg.data.image_size,
            sequence_length=cfg.data.sequence_length,
            vocabulary_size=self.text_preprocessor.tokenizer.vocabulary_size(),
            hidden_dim=model_cfg.hidden_dim,
            num_heads=model_cfg.num_heads,
            intermediate_dim=model_cfg.intermediate_dim,
            dropout=model_cfg.dropout,
            projection_dim=cfg.contrastive.projection_dim,
            loss=cfg.contrastive.loss,
            logit_scale_init=cfg.contrastive.logit_scale_init or None,
            text_preprocessor=self.text_preprocessor,
            image_encoder_kwargs=image_encoder_kwargs(image),
            text_encoder_kwargs=text_encoder_kwargs(text),
        )

    def encoders(self, model):
        return {"image_encoder": model.image_encoder, "text_encoder": model.text_encoder}

    # Evaluation.
    def evaluate(self, model, strategy):
        """Retrieval over the test split (both directions), in-batch loss, zero-shot accuracy.

        Every test image against every test caption; a caption's positives
        are the images it describes (see `retrieval.caption_relevance`).
        Each recall@K comes with its 95% bootstrap interval over the queries.
        """
        cfg = self.cfg
        test_records = self.test_records()
        one_caption = [first_caption(r) for r in test_records]
        test_loss = loop.evaluate(model, strategy, self._dataset(one_caption, cfg.eval.batch_size, False))
        if not distribute.is_chief(strategy):
            return {"loss": round(test_loss["loss"], 6)}
        texts = [c for r in test_records for c in r.captions]
        image_embeddings = embed_images(model, test_records, cfg.data.image_size, cfg.eval.batch_size,
                                        self.synthetic)
        text_embeddings = embed_texts(model, texts, self.text_preprocessor, cfg.eval.batch_size)
        relevance = retrieval.caption_relevance([r.captions for r in test_records], texts)
        results = retrieval.retrieval_metrics(image_embeddings, text_embeddings, relevance,
                                              confidence=DEFAULT_CONFIDENCE)
        results.update(
            loss=test_loss["loss"], in_batch_accuracy=test_loss["accuracy"],
            num_test_images=len(test_records), num_test_texts=len(texts),
            logit_scale=float(model.logit_scale.numpy()),
        )
        self._write_samples(test_records, texts, image_embeddings, text_embeddings, relevance)
        if cfg.contrastive.zero_shot:
            zero_shot_results = zero_shot.evaluate(model, self, cfg)
            self.write_json("zero_shot.json", zero_shot_results)
            for name, entry in zero_shot_results.items():
                results[f"zero_shot_{name}_accuracy"] = entry["accuracy"]
        logging.info("Retrieval: %s", ", ".join(f"{k} {v:.3f}" for k, v in results.items()
                                               if "recall" in k))
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in results.items()}

    def _write_samples(self, records, texts, image_embeddings, text_embeddings, relevance):
        """The first queries with their top-5 images (`retrieval_samples.json`, read by the report)."""
        scores = text_embeddings @ image_embeddings.T
        samples = []
        caption_image = [i for i, r in enumerate(records) for _ in r.captions]
        # One query per image (its first caption), spread over the test split.
        starts = np.cumsum([0] + [len(r.captions) for r in records])[:-1]
        count = min(self.cfg.contrastive.num_retrieval_samples, len(records))
        for i in np.linspace(0, len(records) - 1, count).astype(int) if count else []:
            t = int(starts[i])
            top = np.argsort(-scores[t])[:5]
            samples.append({
                "query": texts[t],
                "correct_image": records[caption_image[t]].image,
                "top_images": [records[j].image for j in top],
                "scores": [round(float(scores[t, j]), 4) for j in top],
                "correct": [bool(relevance[t, j]) for j in top],
            })
        self.write_json("retrieval_samples.json", samples)

    # Export.
    def export(self, model, export_dir):
        from serving.export import export_dual_encoder

        return export_dual_encoder(
            model, export_dir, self.export_name, self.cfg.export.version or None, assets=self.assets(),
            max_pixels=self.cfg.export.max_pixels)

    def assets(self):
        return [self.vocabulary_file] if self.vocabulary_file else []
