"""Caption-quality metrics (BLEU, ROUGE-L, CIDEr-D) in pure Python."""

from mmkeras.metrics.bleu import bleu
from mmkeras.metrics.caption_metrics import caption_metrics
from mmkeras.metrics.caption_metrics import normalize_caption
from mmkeras.metrics.cider import cider
from mmkeras.metrics.rouge_l import rouge_l

__all__ = [
    "bleu",
    "caption_metrics",
    "cider",
    "normalize_caption",
    "rouge_l",
]
