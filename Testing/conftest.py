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


CLICK_INJECTION = TESTDATA / "clicks" / "default-clicks-injection.safetensors"


def build_click_model(folder: Path, trained: bool = True) -> Path:
    """The bundled default model with click inputs, saved as a real model folder: its own
    weights plus the click injection, zero-initialised (trained=False: computes exactly what the
    default computes) or the one fine-tuned by configs/default-qata-clicks.yaml (which trains
    only the injection, so these parameters are all that model adds to the default)."""
    import dataclasses
    import shutil

    from safetensors.torch import load_file

    from tevia.checkpoint import load_network_weights, read_model_json, save_model
    from tevia.model_folders import resolve_model
    from tevia.model.build import build_network

    default = resolve_model("default")
    config, info = read_model_json(default)
    config = dataclasses.replace(config, click_inputs=True)
    network = build_network(config, text_dim=384, pretrained_vision=False)
    load_network_weights(network, default, info, new_modules=("clicks.",))
    if trained:
        network.load_state_dict(load_file(str(CLICK_INJECTION)), strict=False)
    metadata = {k: v for k, v in info.items() if k not in ("config", "weights_sha256", "format")}
    metadata["name"] = info["name"] + ("-clicks" if trained else "-clicks-untrained")
    save_model(folder, network, config, metadata)
    if "domain" in info:  # the image encoder is the default's: so is its domain profile
        shutil.copy(default / info["domain"]["file"], folder / info["domain"]["file"])
    return folder


@pytest.fixture(scope="session")
def click_model_dir(tmp_path_factory) -> Path:
    """Folder of the default model fine-tuned with click inputs (see build_click_model)."""
    return build_click_model(tmp_path_factory.mktemp("models") / "clicks")
