"""mmkeras models: captioner, fusion classifier, ensembles, contrastive dual encoder."""

from mmkeras.models.captioner_ensemble import (
    EnsembleImageEncoder,
    EnsembleTextDecoder,
    build_captioner_ensemble,
)
from mmkeras.models.classifier_ensemble import ENSEMBLE_METHODS, ClassifierEnsemble
from mmkeras.models.dual_encoder import DualEncoder, build_dual_encoder
from mmkeras.models.fusion_classifier import FusionClassifier, build_fusion_classifier
from mmkeras.models.image_captioner import ImageCaptioner, build_image_captioner

__all__ = [
    "ENSEMBLE_METHODS",
    "ClassifierEnsemble",
    "DualEncoder",
    "EnsembleImageEncoder",
    "EnsembleTextDecoder",
    "FusionClassifier",
    "ImageCaptioner",
    "build_captioner_ensemble",
    "build_dual_encoder",
    "build_fusion_classifier",
    "build_image_captioner",
]
