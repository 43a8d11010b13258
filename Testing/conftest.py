"""Shared pytest set-up: import paths, the shared data folder, small fixtures."""
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "TeViASegment"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TESTDATA = REPO / "Testing" / "data"
SHARED_DATA = Path(os.environ.get("TEVIA_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test when that data is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs the shared data at {path} (not present on this machine)")
    return path


def build_tiny_model(folder: Path, image_size: int = 64, vocabulary: list[str] | None = None) -> Path:
    """A small random-weight TeViA model (MobileNetV2 layout + the real MiniLM text encoder),
    saved as a real model folder. Fast enough for worker, server and Slicer tests."""
    import torch

    from tevia.checkpoint import save_model
    from tevia.config import ModelConfig, TextConfig, VisionConfig
    from tevia.model.build import build_network
    from tevia.model.text import TextEncoder, weight_files_sha256

    torch.manual_seed(0)
    config = ModelConfig(vision=VisionConfig("mobilenet_v2", "", False), text=TextConfig(max_tokens=16),
                         image_size=(image_size, image_size), neck_channels=[16, 16, 32, 32], stage_tokens=[8, 4, 4])
    text_folder = TextEncoder(config.text.source, max_tokens=16).folder
    network = build_network(config, text_dim=384)
    metadata = {
        "name": "tiny-test",
        "version": "0",
        "text_encoder": {"source": config.text.source, "sha256": weight_files_sha256(text_folder)},
        "modality": "chest x-ray",
        "side_convention": "image",
        "vocabulary": vocabulary or [],
        "example_prompts": ["Unilateral pulmonary infection, one infected area, lower left lung."],
        "licence": "test model, random weights",
    }
    return save_model(folder, network, config, metadata)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """Folder of a tiny random-weight model (see build_tiny_model)."""
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


class GpuOutOfMemory:
    """A loaded Segmenter as if on a GPU that runs out of memory on batches above ``limit`` slices.

    There is no GPU here: the real model computes every batch it lets through, ``device`` says
    cuda, and a larger batch raises the error CUDA raises. ``sizes`` records every batch asked for.
    """

    def __init__(self, segmenter, limit: int = 0) -> None:
        import torch

        self.segmenter, self.limit, self.sizes = segmenter, limit, []
        self.spec, self.domain, self.folder = segmenter.spec, segmenter.domain, segmenter.folder
        self.precision, self.device = segmenter.precision, torch.device("cuda")

    def encode_text(self, prompts):
        return self.segmenter.encode_text(prompts)

    def encode_images(self, images):
        import torch

        self.sizes.append(len(images))
        if len(images) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.segmenter.encode_images(images)

    def decode(self, features, text, clicks=None):
        return self.segmenter.decode(features, text, clicks)


def _default_variant(folder: Path, click_inputs: bool, name_suffix: str) -> Path:
    """The bundled default model's weights in a network built with or without click inputs
    (with: the click injection freshly zero-initialised; without: the injection left out),
    saved as a real model folder with the default's model.json entries and domain profile."""
    import dataclasses
    import shutil

    from tevia.checkpoint import load_network_weights, read_model_json, save_model
    from tevia.model_folders import resolve_model
    from tevia.model.build import build_network

    default = resolve_model("default")
    config, info = read_model_json(default)
    config = dataclasses.replace(config, click_inputs=click_inputs)
    network = build_network(config, text_dim=384, pretrained_vision=False)
    fresh = {k: v.clone() for k, v in network.state_dict().items() if k.startswith("clicks.")}
    load_network_weights(network, default, info, optional_modules=("clicks.",))
    network.load_state_dict(fresh, strict=False)
    metadata = {k: v for k, v in info.items() if k not in ("config", "weights_sha256", "format", "clicks")}
    metadata["name"] = info["name"] + name_suffix
    save_model(folder, network, config, metadata)
    if "domain" in info:  # the image encoder is the default's: so is its domain profile
        shutil.copy(default / info["domain"]["file"], folder / info["domain"]["file"])
    return folder


def build_text_only_default(folder: Path) -> Path:
    """The bundled default without its click injection, in a network built without click inputs:
    a model that takes no clicks, and what the default computes from text alone."""
    return _default_variant(folder, click_inputs=False, name_suffix="-text-only")


def build_untrained_click_model(folder: Path) -> Path:
    """The bundled default with its click injection zero-initialised again: computes exactly what
    the default computes without clicks, with clicks or not (what click training starts from)."""
    return _default_variant(folder, click_inputs=True, name_suffix="-clicks-untrained")


@pytest.fixture(scope="session")
def click_model_dir() -> Path:
    """Folder of the bundled default model, which takes clicks since 0.3.0 (its click injection
    trained by configs/default-qata-clicks.yaml; Utilities/bundle_click_injection.py)."""
    from tevia.model_folders import resolve_model

    return resolve_model("default")


@pytest.fixture(scope="session")
def text_only_default_dir(tmp_path_factory) -> Path:
    """Folder of the bundled default without click inputs (see build_text_only_default)."""
    return build_text_only_default(tmp_path_factory.mktemp("models") / "text-only")
