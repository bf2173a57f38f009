"""mmkeras: vision-language models for TensorFlow / Keras 3.

Sub-packages: `mmkeras.layers`, `mmkeras.models`, `mmkeras.data`, `mmkeras.metrics`.
"""

from mmkeras import data, layers, metrics, models
from mmkeras.layers import CrossModalAttention, ImageEncoder, TextDecoder
from mmkeras.models import ImageCaptioner, build_image_captioner

__version__ = "0.1.0"

__all__ = [
    "CrossModalAttention",
    "ImageCaptioner",
    "ImageEncoder",
    "TextDecoder",
    "build_image_captioner",
    "data",
    "layers",
    "metrics",
    "models",
]
