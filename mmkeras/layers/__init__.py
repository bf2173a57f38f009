"""mmkeras layers: encoders, decoder, cross-modal attention and fusion."""

from mmkeras.layers.add_fusion import AddFusion
from mmkeras.layers.backbone_utils import PresetError
from mmkeras.layers.concat_fusion import ConcatFusion
from mmkeras.layers.cross_attention_fusion import CrossAttentionFusion
from mmkeras.layers.cross_modal_attention import CrossModalAttention
from mmkeras.layers.fusion import FUSION_DESCRIPTIONS, FUSION_LAYERS, get_fusion
from mmkeras.layers.fusion_layer import FusionLayer
from mmkeras.layers.bilinear_fusion import BilinearFusion
from mmkeras.layers.gated_fusion import GatedFusion
from mmkeras.layers.gcn_fusion import GCNFusion
from mmkeras.layers.image_encoder import ImageEncoder
from mmkeras.layers.late_fusion import LateFusion
from mmkeras.layers.text_decoder import TextDecoder
from mmkeras.layers.text_decoder_block import TextDecoderBlock
from mmkeras.layers.text_encoder import TextEncoder
from mmkeras.layers.weighted_sum_fusion import WeightedSumFusion

__all__ = [
    "AddFusion",
    "ConcatFusion",
    "CrossAttentionFusion",
    "CrossModalAttention",
    "FUSION_DESCRIPTIONS",
    "FUSION_LAYERS",
    "FusionLayer",
    "GCNFusion",
    "BilinearFusion",
    "GatedFusion",
    "ImageEncoder",
    "LateFusion",
    "PresetError",
    "TextDecoder",
    "TextDecoderBlock",
    "TextEncoder",
    "WeightedSumFusion",
    "get_fusion",
]
