"""bana: bounding boxes to semantic segmentation (BANA, CVPR 2021)."""

__version__ = "0.1.0"

from banacli.errors import BanaError  # noqa: E402

__all__ = ["BanaError", "__version__"]
