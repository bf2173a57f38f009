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
from mmkeras.data.tokenizer import build_tokenizer, learn_vocabulary, special_token_ids

__all__ = [
    "BadExampleError",
    "CaptionRecord",
    "LoadReport",
    "SyntheticCaptions",
    "build_tokenizer",
    "caption_dataset",
    "decode_image",
    "decode_images",
    "eval_image_dataset",
    "image_dataset",
    "learn_vocabulary",
    "load_caption_data",
    "load_caption_manifest",
    "load_coco_captions",
    "load_flickr8k",
    "special_token_ids",
]
