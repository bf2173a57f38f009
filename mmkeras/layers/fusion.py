"""The fusion layers by name, for classifiers and command-line flags."""

from mmkeras.layers.add_fusion import AddFusion
from mmkeras.layers.bilinear_fusion import BilinearFusion
from mmkeras.layers.concat_fusion import ConcatFusion
from mmkeras.layers.cross_attention_fusion import CrossAttentionFusion
from mmkeras.layers.gated_fusion import GatedFusion
from mmkeras.layers.gcn_fusion import GCNFusion
from mmkeras.layers.late_fusion import LateFusion
from mmkeras.layers.weighted_sum_fusion import WeightedSumFusion

FUSION_LAYERS = {
    "concat": ConcatFusion,
    "add": AddFusion,
    "weighted_sum": WeightedSumFusion,
    "gated": GatedFusion,
    "cross_attention": CrossAttentionFusion,
    "bilinear": BilinearFusion,
    "gcn": GCNFusion,
    "late": LateFusion,
}

FUSION_DESCRIPTIONS = {
    "concat": "early fusion: concatenate pooled image and text vectors, then a dense projection",
    "add": "sum of separately projected pooled image and text vectors",
    "weighted_sum": "weighted sum of projected pooled vectors, weights fixed or learned (softmax)",
    "gated": "a per-dimension sigmoid gate mixes the projected image and text vectors",
    "cross_attention": "text tokens attend to image tokens (optionally both ways), masked mean readout",
    "bilinear": "question-guided attention glimpses, then a low-rank bilinear (Hadamard) product (MLB)",
    "gcn": "graph convolutions over image grid and text tokens with cross-modal edges",
    "late": "one classifier head per modality, logits averaged with fixed or learned weights",
}


def get_fusion(fusion, /, **kwargs):
    """Returns a new fusion layer `FUSION_LAYERS[fusion](**kwargs)`.

    Args:
        fusion: str, a key of `FUSION_LAYERS` (positional, so that `name=`
            in `kwargs` names the layer).
        **kwargs: constructor arguments of that layer (`LateFusion` also needs
            `num_classes`).

    Example:
    >>> get_fusion("gated", hidden_dim=8).hidden_dim
    8
    """
    if fusion not in FUSION_LAYERS:
        raise ValueError(
            f"Unknown fusion {fusion!r}. Known: {', '.join(FUSION_LAYERS)}. "
            f"Received: fusion={fusion!r}"
        )
    return FUSION_LAYERS[fusion](**kwargs)
