"""TeViA: text-guided medical image segmentation (text-to-vision alignment + historic visual prototype)."""

__version__ = "0.1.0"
__all__ = ["__version__"]
