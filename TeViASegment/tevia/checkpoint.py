"""Model folders: `model.safetensors` (trainable weights + prototype buffers) and `model.json`.

model.json holds the architecture (the ModelConfig), the text encoder's source and the sha256
of its weight files, preprocessing, training data, validation metrics, licence, example
prompts, side convention and training vocabulary, and the sha256 of model.safetensors (and,
under "domain", of the optional domain.safetensors: see tevia.inference.domain).
Loading never unpickles anything: a truncated or tampered weights file is refused, and
weights load strictly (missing or unexpected keys are an error that names them). Which folder a
model's name means: tevia.model_folders.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tevia.config import ModelConfig, from_dict, to_dict
from tevia.files import atomic_path, atomic_write_text, sha256_file
from tevia.model.network import TeViANet

__all__ = ["CheckpointError", "FORMAT", "save_model", "read_model_json", "update_model_json", "load_checked_tensors",
           "load_network_weights"]

log = logging.getLogger(__name__)

FORMAT = "tevia-model/1"


class CheckpointError(RuntimeError):
    """A model folder that cannot be used: corrupt, tampered, or of another format."""


def save_model(folder: str | Path, network: TeViANet, config: ModelConfig, metadata: dict[str, Any]) -> Path:
    """Writes model.safetensors and model.json into `folder` atomically (temp files, then rename)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    with atomic_path(folder / "model.json") as tmp_json, atomic_path(folder / "model.safetensors") as tmp_weights:
        save_file(state, str(tmp_weights), metadata={"format": FORMAT})
        info = dict(metadata)
        info.update(format=FORMAT, config=to_dict(config), weights_sha256=sha256_file(tmp_weights))
        tmp_json.write_text(json.dumps(info, indent=2, sort_keys=False))
    return folder


def read_model_json(folder: str | Path) -> tuple[ModelConfig, dict[str, Any]]:
    """The ModelConfig and full metadata of a model folder."""
    path = Path(folder) / "model.json"
    try:
        info = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc
    if info.get("format") != FORMAT:
        raise CheckpointError(f"{path} has format {info.get('format')!r}; this TeViA reads {FORMAT!r}")
    try:
        config = from_dict({"model": info["config"]}).model
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: the architecture ('config') is invalid: {exc}") from exc
    return config, info


def update_model_json(folder: str | Path, **entries: Any) -> None:
    """Set top-level entries of a model folder's model.json atomically (temp file, then rename)."""
    path = Path(folder) / "model.json"
    read_model_json(folder)
    info = json.loads(path.read_text())
    info.update(entries)
    atomic_write_text(path, json.dumps(info, indent=2, sort_keys=False) + "\n")


def load_checked_tensors(path: Path, expected_sha256: str | None, remedy: str) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file of a model folder, after checking it against the sha256
    recorded in model.json (when one is); CheckpointError, ending with `remedy`, otherwise."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; {remedy}")
    if expected_sha256 and sha256_file(path) != expected_sha256:
        raise CheckpointError(f"{path} does not match the sha256 in model.json: the file is truncated or was "
                              f"modified; {remedy}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc}); {remedy}") from exc


def load_network_weights(network: TeViANet, folder: str | Path, info: dict[str, Any],
                         optional_modules: tuple[str, ...] = ()) -> None:
    """Loads model.safetensors into the network after checking its sha256; strict keys, except
    for parameters under the prefixes `optional_modules` (e.g. "clicks." when fine-tuning): those
    the file lacks keep their initial values (a text-only model fine-tuned into one with click
    inputs), those the network lacks or has in another shape are left out (a model with click
    inputs fine-tuned into a text-only one, or into one with another click injection)."""
    weights = Path(folder) / "model.safetensors"
    state = load_checked_tensors(weights, info.get("weights_sha256"), "download or copy the model again")
    own = network.state_dict()
    # an optional module is loaded whole or not at all: a file's injection of another shape
    # (e.g. without model.click_context) is left out entirely, not mixed with fresh weights
    unfit = {prefix for prefix in optional_modules
             if any(k.startswith(prefix) and (k not in own or own[k].shape != v.shape) for k, v in state.items())}
    dropped = sorted(k for k in state if k.startswith(tuple(unfit)))
    if dropped:
        log.info("%s: left out %d tensors this network does not have or has in another shape (%s...)",
                 weights, len(dropped), dropped[0])
        state = {k: v for k, v in state.items() if k not in dropped}
    missing = sorted(k for k in set(own) - set(state) if not k.startswith(optional_modules))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{weights} does not fit this architecture: missing keys {missing[:10]}, "
                              f"unexpected keys {unexpected[:10]}")
    bad = [k for k in state if own[k].shape != state[k].shape]
    if bad:
        raise CheckpointError(f"{weights}: shape mismatch for {bad[:10]}")
    network.load_state_dict({**own, **state}, strict=True)
    torch.nn.Module.eval(network)
