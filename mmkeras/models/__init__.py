"""mmkeras models."""

from mmkeras.models.image_captioner import ImageCaptioner, build_image_captioner

__all__ = ["ImageCaptioner", "build_image_captioner"]
