"""Give the bundled default model the click injection of a model trained from it with clicks.

    python Utilities/bundle_click_injection.py --source runs/X/model --version 0.3.0 \
        --note "..." [--config runs/X/config.yaml] [--out TeViASegment/Resources/Models/default]

`configs/default-qata-clicks.yaml` (train.train_only_clicks) trains only the click injection
(`clicks.*`) on top of the frozen default model, and a network with click inputs computes
exactly the text-only output when no clicks are given (TeViANet.decode skips the injection).
So the default model can carry the injection at no cost to text-only use: this script copies
the source's `clicks.*` tensors into the default folder's model.safetensors and sets in its
model.json `config.click_inputs` true, the source's `config.click_encoding`, the new version
and a "clicks" entry (source model name, its training config, the injection's size and sha256,
the note). Everything else of model.json (name, metrics, vocabulary, domain profile,
preprocessing, ...) and the folder's other files (model card, domain.safetensors,
evaluation/) stay as they are; update the model card's click table (bench/clicks.json) by hand.

It refuses, writing nothing, unless the source has click inputs, its architecture is the
default's (click settings aside) and every tensor outside `clicks.*` equals the default's bit
for bit. The two files are written atomically (tevia.checkpoint.save_model); running it again
with the same source and arguments writes the same bytes.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "TeViASegment"))

import torch  # noqa: E402
import yaml  # noqa: E402

from tevia.checkpoint import CheckpointError, load_checked_tensors, read_model_json, save_model  # noqa: E402
from tevia.config import ModelConfig, load_config, to_dict  # noqa: E402

log = logging.getLogger("bundle_click_injection")

DEFAULT_OUT = REPO / "TeViASegment" / "Resources" / "Models" / "default"
PREFIX = "clicks."
CLICK_SETTINGS = ("click_inputs", "click_encoding", "click_context")


class BundleError(ValueError):
    """A source that cannot be bundled into the default model; nothing was written."""


def _bits(tensor: torch.Tensor) -> bytes:
    """The tensor's dtype, shape and raw bytes: equal only when bit for bit equal."""
    raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    return f"{tensor.dtype}{tuple(tensor.shape)}".encode() + raw.numpy().tobytes()


def _architecture(config: ModelConfig) -> dict[str, Any]:
    return {k: v for k, v in to_dict(config).items() if k not in CLICK_SETTINGS}


def injection_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """One sha256 over the `clicks.*` tensors (names, dtypes, shapes, bytes), in name order."""
    digest = hashlib.sha256()
    for name in sorted(k for k in tensors if k.startswith(PREFIX)):
        digest.update(name.encode() + b"\0" + _bits(tensors[name]))
    return digest.hexdigest()


def check_source(source: Path, out: Path) -> tuple[ModelConfig, dict[str, Any], dict[str, torch.Tensor]]:
    """The source's config, model.json and tensors, after checking that it is the model in `out`
    plus a click injection; BundleError naming what differs otherwise."""
    source_config, source_info = read_model_json(source)
    out_config, out_info = read_model_json(out)
    if not source_config.click_inputs:
        raise BundleError(f"{source} has no click inputs (model.json config.click_inputs is false): give the "
                          f"model folder trained with configs/default-qata-clicks.yaml --init {out}")
    ours, theirs = _architecture(out_config), _architecture(source_config)
    if ours != theirs:
        differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
        raise BundleError(f"{source} has another architecture than {out} (config {differ}): it was not trained "
                          f"from this model")
    remedy = "copy or train the model again"
    source_tensors = load_checked_tensors(source / "model.safetensors", source_info.get("weights_sha256"), remedy)
    out_tensors = load_checked_tensors(out / "model.safetensors", out_info.get("weights_sha256"), remedy)
    base = {k for k in out_tensors if not k.startswith(PREFIX)}
    source_base = {k for k in source_tensors if not k.startswith(PREFIX)}
    if base != source_base:
        raise BundleError(f"{source} does not hold the tensors of {out}: missing {sorted(base - source_base)[:5]}, "
                          f"unexpected {sorted(source_base - base)[:5]}")
    changed = sorted(k for k in base if _bits(source_tensors[k]) != _bits(out_tensors[k]))
    if changed:
        raise BundleError(f"{len(changed)} tensors outside the click injection differ from {out}'s (first: "
                          f"{changed[:5]}): {source} was not trained with train.train_only_clicks from this model, "
                          f"so bundling its injection would change the text-only output")
    if not any(k.startswith(PREFIX) for k in source_tensors):
        raise BundleError(f"{source} holds no {PREFIX}* tensors")
    return source_config, source_info, source_tensors


def training_config(path: Path) -> dict[str, Any]:
    """The training config as recorded: its file (relative to the repository when inside it) and
    its sections other than `model` (the architecture is model.json's own `config`)."""
    load_config(path)  # refuses an invalid config
    raw = yaml.safe_load(path.read_text()) or {}
    resolved = path.resolve()
    name = resolved.relative_to(REPO).as_posix() if resolved.is_relative_to(REPO) else path.name
    return {"file": name, **{k: v for k, v in raw.items() if k != "model"}}


def bundle(source: Path, out: Path, version: str, note: str, config_file: Path) -> Path:
    """Writes `out`'s model.safetensors and model.json with `source`'s click injection (module docstring)."""
    from tevia.inference.segmenter import Segmenter

    if not version.strip() or not note.strip():
        raise BundleError("give a --version and a --note (what the injection is, for the model card)")
    if not config_file.is_file():
        raise BundleError(f"the training config {config_file} does not exist: give --config, the YAML the source "
                          f"model was trained with")
    source_config, source_info, source_tensors = check_source(source, out)
    recorded = training_config(config_file)
    out_config, out_info = read_model_json(out)
    network = Segmenter.load(source, device="cpu", check_domain=False).network
    clicks = {k: source_tensors[k] for k in source_tensors if k.startswith(PREFIX)}
    metadata = {k: v for k, v in out_info.items() if k not in ("format", "config", "weights_sha256")}
    metadata["version"] = version
    metadata["clicks"] = {
        "source_model": source_info.get("name", source.name),
        "training_config": recorded,
        "parameters": sum(t.numel() for t in clicks.values()),
        "injection_sha256": injection_sha256(clicks),
        "note": note,
    }
    config = dataclasses.replace(out_config, click_inputs=True, click_encoding=source_config.click_encoding,
                                 click_context=source_config.click_context)
    modes = {name: (out / name).stat().st_mode & 0o777 for name in ("model.json", "model.safetensors")}
    save_model(out, network, config, metadata)
    for name, mode in modes.items():  # the files keep their permissions (safetensors writes 0600)
        os.chmod(out / name, mode)
    log.info("%s is now version %s with the click injection of %s (%d parameters, %s encoding); update the "
             "model card's click table (bench/clicks.json)", out, version, metadata["clicks"]["source_model"],
             metadata["clicks"]["parameters"], config.click_encoding)
    return out


def main(argv: list[str] | None = None) -> int:
    """0 when bundled; 2 with a logged message when the source or the arguments are refused."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, type=Path, help="model folder trained with clicks from the default")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the default model folder (rewritten)")
    parser.add_argument("--version", required=True, help="the default model's new version, e.g. 0.3.0")
    parser.add_argument("--note", required=True, help="what the injection is (recorded in model.json)")
    parser.add_argument("--config", type=Path, help="the source's training config (default: config.yaml beside "
                                                     "the source folder, as `tevia train` writes it)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        bundle(args.source, args.out, args.version, args.note, args.config or args.source.parent / "config.yaml")
    except (BundleError, CheckpointError, FileNotFoundError, ValueError) as err:
        log.error("%s", err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
