"""mmkeras: vision-language models for TensorFlow / Keras 3.

Sub-packages: `mmkeras.layers`, `mmkeras.models`, `mmkeras.data`, `mmkeras.metrics`.
"""

from mmkeras import data, layers, metrics, models
from mmkeras.layers import CrossModalAttention, ImageEncoder, TextDecoder, TextEncoder
from mmkeras.models import (
    ClassifierEnsemble,
    DualEncoder,
    FusionClassifier,
    ImageCaptioner,
    build_captioner_ensemble,
    build_dual_encoder,
    build_fusion_classifier,
    build_image_captioner,
)

__version__ = "0.1.0"

__all__ = [
    "ClassifierEnsemble",
    "CrossModalAttention",
    "DualEncoder",
    "FusionClassifier",
    "ImageCaptioner",
    "ImageEncoder",
    "TextDecoder",
    "TextEncoder",
    "build_captioner_ensemble",
    "build_dual_encoder",
    "build_fusion_classifier",
    "build_image_captioner",
    "data",
    "layers",
    "metrics",
    "models",
]
