"""mmkeras layers: encoders, decoder, cross-modal attention and fusion."""

from mmkeras.layers.cross_modal_attention import CrossModalAttention
from mmkeras.layers.image_encoder import ImageEncoder
from mmkeras.layers.text_decoder import TextDecoder
from mmkeras.layers.text_decoder_block import TextDecoderBlock

__all__ = [
    "CrossModalAttention",
    "ImageEncoder",
    "TextDecoder",
    "TextDecoderBlock",
]
