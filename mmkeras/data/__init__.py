"""mmkeras data: dataset formats, built-in synthetic data, tokenizer, tf.data."""

from mmkeras.data.caption_formats import load_caption_data
from mmkeras.data.caption_manifest import load_caption_manifest
from mmkeras.data.caption_pipeline import (
    caption_dataset,
    decode_image,
    decode_images,
    eval_image_dataset,
    image_dataset,
)
from mmkeras.data.classification_manifest import load_classification_manifest
from mmkeras.data.classification_pipeline import classification_dataset, label_ids
from mmkeras.data.classification_records import ClassificationData, ClassificationRecord
from mmkeras.data.coco_format import load_coco_captions
from mmkeras.data.data_spec import DATA_KINDS, DataSpec, parse_data_spec
from mmkeras.data.easy_vqa_format import load_easy_vqa
from mmkeras.data.flickr8k_format import load_flickr8k
from mmkeras.data.flickr8k_match import load_flickr8k_match
from mmkeras.data.records import BadExampleError, CaptionRecord, LoadReport
from mmkeras.data.synthetic_captions import SyntheticCaptions
from mmkeras.data.synthetic_vqa import load_synthetic_vqa
from mmkeras.data.text_preprocessor import (
    TextPreprocessor,
    text_preprocessor_from_preset,
    text_preprocessor_from_vocabulary,
)
from mmkeras.data.tfrecords import (
    caption_train_dataset,
    iter_caption_manifest,
    read_dataset_info,
    write_caption_shards,
)
from mmkeras.data.tokenizer import build_tokenizer, learn_vocabulary, special_token_ids

__all__ = [
    "BadExampleError",
    "CaptionRecord",
    "ClassificationData",
    "ClassificationRecord",
    "DATA_KINDS",
    "DataSpec",
    "LoadReport",
    "SyntheticCaptions",
    "TextPreprocessor",
    "build_tokenizer",
    "caption_dataset",
    "caption_train_dataset",
    "classification_dataset",
    "decode_image",
    "decode_images",
    "eval_image_dataset",
    "image_dataset",
    "iter_caption_manifest",
    "label_ids",
    "learn_vocabulary",
    "load_caption_data",
    "load_caption_manifest",
    "load_classification_manifest",
    "load_coco_captions",
    "load_easy_vqa",
    "load_flickr8k",
    "load_flickr8k_match",
    "load_synthetic_vqa",
    "parse_data_spec",
    "read_dataset_info",
    "special_token_ids",
    "text_preprocessor_from_preset",
    "text_preprocessor_from_vocabulary",
    "write_caption_shards",
]
