"""Metrics in pure Python / numpy: caption quality (BLEU, ROUGE-L, CIDEr-D, METEOR),
classification, and image-text retrieval (recall@K, ranks, zero-shot), and bootstrap
confidence intervals of any of them that is a mean over test items."""

from mmkeras.metrics.bleu import bleu
from mmkeras.metrics.bootstrap import bootstrap_interval
from mmkeras.metrics.caption_metrics import caption_metrics
from mmkeras.metrics.caption_metrics import normalize_caption
from mmkeras.metrics.cider import CIDErScorer
from mmkeras.metrics.cider import cider
from mmkeras.metrics.classification import best_thresholds
from mmkeras.metrics.classification import classification_report
from mmkeras.metrics.classification import confusion_matrix
from mmkeras.metrics.classification import correct_examples
from mmkeras.metrics.classification import format_report
from mmkeras.metrics.classification import multilabel_report
from mmkeras.metrics.classification import top_confusions
from mmkeras.metrics.meteor import meteor
from mmkeras.metrics.meteor import meteor_score
from mmkeras.metrics.retrieval import caption_relevance
from mmkeras.metrics.retrieval import retrieval_metrics
from mmkeras.metrics.retrieval import zero_shot_accuracy
from mmkeras.metrics.retrieval import zero_shot_classifier
from mmkeras.metrics.rouge_l import rouge_l

__all__ = [
    "CIDErScorer",
    "best_thresholds",
    "bleu",
    "bootstrap_interval",
    "caption_metrics",
    "caption_relevance",
    "cider",
    "classification_report",
    "confusion_matrix",
    "correct_examples",
    "format_report",
    "meteor",
    "meteor_score",
    "multilabel_report",
    "normalize_caption",
    "retrieval_metrics",
    "rouge_l",
    "top_confusions",
    "zero_shot_accuracy",
    "zero_shot_classifier",
]
