"""The TeViA network and its parts."""

from tevia.model.build import MODEL_PRESETS, build_network, build_text_encoder
from tevia.model.network import NetworkOutput, TeViANet
from tevia.model.text import TextEncoder

__all__ = ["MODEL_PRESETS", "build_network", "build_text_encoder", "NetworkOutput", "TeViANet", "TextEncoder"]
