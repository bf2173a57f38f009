"""mmkeras data: dataset formats, built-in synthetic data, tokenizer, tf.data."""

from mmkeras.data.caption_formats import (
    load_caption_data,
    load_caption_manifest,
    load_coco_captions,
    load_flickr8k,
)
from mmkeras.data.caption_pipeline import (
    caption_dataset,
    decode_image,
    decode_images,
    eval_image_dataset,
    image_dataset,
)
from mmkeras.data.records import BadExampleError, CaptionRecord, LoadReport
from mmkeras.data.synthetic_captions import SyntheticCaptions
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
    "LoadReport",
    "SyntheticCaptions",
    "build_tokenizer",
    "caption_dataset",
    "caption_train_dataset",
    "decode_image",
    "decode_images",
    "eval_image_dataset",
    "image_dataset",
    "iter_caption_manifest",
    "learn_vocabulary",
    "load_caption_data",
    "load_caption_manifest",
    "load_coco_captions",
    "load_flickr8k",
    "read_dataset_info",
    "special_token_ids",
    "write_caption_shards",
]
