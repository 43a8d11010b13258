"""`tevia train --config FILE.yaml [key=value ...]`: train TeViA with PyTorch Lightning.

CPU, one GPU, or many GPUs and nodes (DDP) through Lightning's own flags in the `train`
section (accelerator, devices, num_nodes, strategy). Best checkpoint by validation Dice (or loss),
early stopping, `--resume`, `--init MODEL` to fine-tune, CSV + TensorBoard logs, a PNG of
the curves, and at the end the best weights exported as a model folder (tevia.checkpoint).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from tevia import __version__
from tevia.training.augment import mirrored_text
from tevia.config import Config, load_config, to_dict
from tevia.training.data.conventions import MODEL_CONVENTION
from tevia.inference.text_cache import text_table
from tevia.model.build import build_network, build_text_encoder
from tevia.model.text import weight_files_sha256
from tevia.prompts import build_vocabulary

__all__ = ["configure_parser", "main", "train", "export_model", "describe_training_images", "with_init_architecture"]

log = logging.getLogger(__name__)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML config (see configs/)")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.max_epochs=5")
    parser.add_argument("--resume", action="store_true", help="continue from <out_dir>/checkpoints/last.ckpt")
    parser.add_argument("--init", help="model folder or bundled name whose weights start the training (fine-tuning); "
                                       "with train.model_from_init, also its architecture")


def _split_dataset(config: Config, root: str, split: str, extra: bool = False):
    """One split of a CSV + folders data set, its descriptions read in the model's side convention
    (an extra training set's `Convention` column wins over data.side_convention)."""
    from tevia.training.data.conventions import csv_convention, set_convention
    from tevia.training.data.dataset import CSVSegmentationDataset

    d, m = config.data, config.model
    csv_path = Path(root) / f"{split}.csv"
    if extra and not csv_path.is_file():
        raise FileNotFoundError(f"data.extra_train: {csv_path} does not exist (export the training set first)")
    configured = "" if extra and csv_convention(csv_path) else d.side_convention
    convention = set_convention(csv_path, configured)
    if convention != MODEL_CONVENTION:
        log.warning("%s: descriptions name %s sides; read as %s sides (left and right swapped, the standard "
                    "chest radiograph display assumed)", split, convention, MODEL_CONVENTION)
    ds = CSVSegmentationDataset(root, split, image_size=tuple(m.image_size), channels=m.in_channels,
                                skip_bad=d.skip_bad, cache=d.cache, mirror_sides=convention != MODEL_CONVENTION)
    if ds.skipped:
        log.warning("%s: skipped %d bad rows", split, len(ds.skipped))
    return ds


def _datasets(config: Config):
    """(train, val): the train split (its fraction, every k-th row) and every `data.extra_train`
    set (each repeated), and the val split."""
    from torch.utils.data import ConcatDataset, Subset

    d = config.data
    train = _split_dataset(config, d.root, d.train_split)
    kept = max(1, int(len(train) * d.train_fraction)) if d.train_fraction < 1.0 else len(train)
    if kept < len(train) or d.train_every > 1:
        train = Subset(train, range(0, kept, d.train_every))
    parts = [train]
    for extra in d.extra_train:
        extra_ds = _split_dataset(config, extra.root, extra.split, extra=True)
        parts += [extra_ds] * extra.repeat
        log.info("training set %s/%s: %d images, drawn %d time(s) per epoch", extra.root, extra.split,
                 len(extra_ds), extra.repeat)
    val = _split_dataset(config, d.root, d.val_split)
    if d.val_fraction < 1.0:
        val = Subset(val, range(max(1, int(len(val) * d.val_fraction))))
    return (ConcatDataset(parts) if len(parts) > 1 else train), val


def _texts(ds) -> list[str]:
    from torch.utils.data import ConcatDataset

    if isinstance(ds, ConcatDataset):
        return [text for part in ds.datasets for text in _texts(part)]
    if hasattr(ds, "dataset"):
        texts = _texts(ds.dataset)
        return [texts[i] for i in ds.indices]
    return list(ds.texts)


def _collate(items: list[dict]) -> dict:
    return {
        "image": torch.stack([i["image"] for i in items]),
        "mask": torch.stack([i["mask"] for i in items]),
        "text": [i["text"] for i in items],
        "name": [i["name"] for i in items],
    }


def model_metadata(config: Config, text_folder: str, train_texts: list[str], metrics: dict[str, Any]) -> dict[str, Any]:
    """The descriptive part of model.json."""
    common = [t for t, _ in collections.Counter(train_texts).most_common(5)]
    return {
        "name": config.train.model_name,
        "version": config.train.model_version or __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "text_encoder": {"source": config.model.text.source, "sha256": weight_files_sha256(text_folder)},
        "vision_init": to_dict(config.model.vision),
        "preprocessing": {"image_size": list(config.model.image_size), "channels": config.model.in_channels,
                          "scale": "intensities to [0, 1] (8-bit images / 255), then the encoder's mean/std"},
        "training_data": {"root": config.data.root, "train_split": config.data.train_split,
                          "val_split": config.data.val_split, "train_fraction": config.data.train_fraction,
                          **({"train_every": config.data.train_every} if config.data.train_every > 1 else {}),
                          **({"extra_train": [dataclasses.asdict(e) for e in config.data.extra_train]}
                             if config.data.extra_train else {})},
        "metrics": metrics,
        "modality": config.train.modality,
        "licence": config.train.licence,
        "side_convention": MODEL_CONVENTION,
        "vocabulary": build_vocabulary(train_texts),
        "example_prompts": common,
        "threshold": 0.5,
        **({"test_time_vertical_flip": True} if config.train.test_time_vertical_flip else {}),
    }


def export_model(network, config: Config, folder: Path, metadata: dict[str, Any]) -> Path:
    from tevia.checkpoint import save_model

    return save_model(folder, network, config.model, metadata)


def describe_training_images(config: Config, folder: Path) -> None:
    """Add the domain profile of the training images to an exported model folder (tevia.inference.domain)."""
    from tevia.commands.domain import declaration_of, describe_model
    from tevia.inference.segmenter import Segmenter

    segmenter = Segmenter.load(folder, device="auto", check_domain=False)
    describe_model(segmenter, folder, config.data.root, config.data.train_split, config.data.val_split,
                   {"description": config.train.modality or "the training images", **declaration_of(config.train)},
                   extra_train=[(e.root, e.split) for e in config.data.extra_train], train_every=config.data.train_every)


def plot_curves(metrics_csv: Path, out_png: Path) -> None:
    """Loss and Dice curves from Lightning's CSV log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.read_csv(metrics_csv)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for col, ax in (("train_loss_epoch", ax1), ("val_loss", ax1), ("val_dice", ax2), ("val_dice_mean", ax2)):
        if col in df:
            s = df[["epoch", col]].dropna()
            ax.plot(s["epoch"], s[col], marker="o", label=col)
    ax1.set_xlabel("epoch"), ax1.set_title("loss"), ax1.legend()
    ax2.set_xlabel("epoch"), ax2.set_title("validation Dice"), ax2.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


def train(config: Config, resume: bool = False, init: str | None = None) -> Path:
    """Trains, then exports the best weights to <out_dir>/model; returns that folder."""
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from torch.utils.data import DataLoader

    from tevia.training.ema import WeightEMA
    from tevia.training.lightning_module import LitTeViA

    tc = config.train
    if tc.model_from_init:
        config = with_init_architecture(config, init)
    if tc.threads:
        torch.set_num_threads(tc.threads)
    L.seed_everything(tc.seed, workers=True)
    installed = _install_target(config)  # bad data or a taken version is refused before anything is written
    train_ds, val_ds = _datasets(config)
    text_encoder = build_text_encoder(config.model)
    texts = _texts(train_ds) + _texts(val_ds)
    if tc.augment and tc.horizontal_flip:  # the descriptions of the mirrored images (tevia.training.augment.flip_sides)
        texts += [mirrored_text(t) for t in _texts(train_ds)]
    table, index = text_table(text_encoder, texts)
    log.info("embedded %d distinct descriptions once: table %s", len(index), tuple(table.shape))
    network = build_network(config.model, text_encoder.hidden_size)
    if init:
        from tevia.checkpoint import load_network_weights, read_model_json
        from tevia.model_folders import resolve_model

        folder = resolve_model(init)
        _, info = read_model_json(folder)
        load_network_weights(network, folder, info, optional_modules=("clicks.",))
        network.train()
        log.info("initialised from %s", folder)
    out = Path(tc.out_dir)  # written only now: a corrupt or tampered --init model leaves nothing behind
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    lit = LitTeViA(network, table, index, tc)

    loader_args = dict(batch_size=tc.batch_size, num_workers=config.data.num_workers, collate_fn=_collate,
                       persistent_workers=config.data.num_workers > 0)
    train_loader = DataLoader(train_ds, shuffle=True, drop_last=len(train_ds) > tc.batch_size, **loader_args)
    val_loader = DataLoader(val_ds, shuffle=False, **loader_args)

    on_gpu = torch.cuda.is_available() and tc.accelerator in ("auto", "gpu", "cuda")
    precision = tc.precision if tc.precision != "auto" else ("bf16-mixed" if on_gpu else "32-true")
    monitor, mode = tc.checkpoint_monitor, ("min" if tc.checkpoint_monitor == "val_loss" else "max")
    selecting = monitor != "last"  # "last": the last epoch is kept, no early stopping
    ckpt = ModelCheckpoint(dirpath=out / "checkpoints", filename="best", monitor=monitor if selecting else None,
                           mode=mode, save_top_k=1)
    # last.ckpt after every validated epoch, for --resume (Lightning >= 2.6's save_last writes it only
    # when it writes a best checkpoint: a resume went back to the best epoch).
    every_epoch = ModelCheckpoint(dirpath=out / "checkpoints", filename="last", enable_version_counter=False)
    stopping = [EarlyStopping(monitor=monitor, mode=mode, patience=tc.early_stopping_patience)] if selecting else []
    callbacks = [ckpt, every_epoch, *stopping]
    if tc.ema_decay:
        callbacks.append(WeightEMA(tc.ema_decay))  # validated, kept and exported: the averaged weights
    trainer = L.Trainer(
        max_epochs=tc.max_epochs, accelerator=tc.accelerator, devices=tc.devices, num_nodes=tc.num_nodes,
        strategy=tc.strategy, precision=precision, default_root_dir=out, deterministic=False,
        callbacks=callbacks,
        logger=[CSVLogger(out, name="logs", version=""), TensorBoardLogger(out, name="tensorboard", version="")],
        check_val_every_n_epoch=tc.val_every_n_epochs, limit_train_batches=tc.limit_train_batches,
        log_every_n_steps=10, enable_progress_bar=True,
    )
    last = out / "checkpoints" / "last.ckpt"
    if resume and not last.is_file():
        raise FileNotFoundError(f"--resume: {last} does not exist; start without --resume")
    metrics_csv = out / "logs" / "metrics.csv"
    earlier = _set_aside(metrics_csv) if resume else None
    trainer.fit(lit, train_loader, val_loader, ckpt_path=str(last) if resume else None)
    if earlier is not None and trainer.global_rank == 0:
        _join_metrics(earlier, metrics_csv)

    if trainer.global_rank != 0:
        return out / "model"
    best = ckpt.best_model_path or str(last)
    state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    network.load_state_dict({k.removeprefix("network."): v for k, v in state.items() if k.startswith("network.")})
    score = ckpt.best_model_score if selecting else trainer.callback_metrics.get("val_dice")
    score = float(score) if score is not None else None
    metrics = {{"val_dice": "val_dice_global", "last": "val_dice_global"}.get(monitor, monitor): score,
               "epochs": trainer.current_epoch, "best_checkpoint": Path(best).name, "checkpoint_monitor": monitor,
               "ema_decay": tc.ema_decay}
    folder = export_model(network, config, out / "model",
                          model_metadata(config, text_encoder.folder, _texts(train_ds), metrics))
    if tc.model_card:
        shutil.copy2(tc.model_card, folder / "README.md")
    describe_training_images(config, folder)
    if metrics_csv.is_file():
        plot_curves(metrics_csv, out / "curves.png")
    log.info("model exported to %s", folder)
    if installed is not None:
        _install(folder, installed)
    return folder


def with_init_architecture(config: Config, init: str | None) -> Config:
    """The config with the `--init` model's architecture and its own `model.click_inputs`,
    `model.click_encoding` and `model.click_context` (train.model_from_init).

    Raises:
        ValueError: no `--init` model.
        FileNotFoundError: the model folder does not exist.
    """
    from tevia.checkpoint import read_model_json
    from tevia.model_folders import resolve_model

    if not init:
        raise ValueError("train.model_from_init builds the architecture of the initial model: give --init MODEL "
                         "(a model folder or bundled name), or set train.model_from_init=false")
    folder = resolve_model(init)
    model, _ = read_model_json(folder)
    clicks = {key: getattr(config.model, key) for key in ("click_inputs", "click_encoding", "click_context")}
    log.info("architecture of %s (train.model_from_init) with %s", folder, clicks)
    return dataclasses.replace(config, model=dataclasses.replace(model, **clicks))


def _install_target(config: Config) -> Path | None:
    """Where `train.install` puts the model (None when off); refuses a version already there."""
    if config.train.model_card and not Path(config.train.model_card).is_file():
        raise FileNotFoundError(f"train.model_card {config.train.model_card} does not exist")
    if not config.train.install:
        return None
    from tevia.user_models import user_models_dir

    target = user_models_dir() / f"{config.train.model_name}-{config.train.model_version or __version__}"
    if target.exists():
        raise ValueError(f"{target} already exists: remove it, or set train.model_version to a new version")
    return target


def _install(folder: Path, target: Path) -> None:
    """Copy a model folder to `target` (a temporary copy renamed into place: never half there)."""
    import tempfile

    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        shutil.copytree(folder, work / "model")
        os.replace(work / "model", target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("installed as %s: tevia predict --model %s", target, target.name)


def _set_aside(metrics_csv: Path) -> Path | None:
    """Lightning's CSVLogger deletes an earlier metrics.csv in its folder: on --resume, keep it
    as metrics-before-resume.csv (joined back by `_join_metrics` when training ends)."""
    if not metrics_csv.is_file():
        return None
    kept = metrics_csv.with_name("metrics-before-resume.csv")
    metrics_csv.replace(kept)
    return kept


def _join_metrics(earlier: Path, metrics_csv: Path) -> None:
    """metrics.csv = the earlier run's rows before the resumed epoch, then the resumed run's rows."""
    import pandas as pd

    before = pd.read_csv(earlier)
    if metrics_csv.is_file():
        after = pd.read_csv(metrics_csv)
        if "epoch" in after and "epoch" in before and after["epoch"].notna().any():
            before = before[before["epoch"] < after["epoch"].min()]
        before = pd.concat([before, after], ignore_index=True)
    before.to_csv(metrics_csv, index=False)
    earlier.unlink()


def main(args: argparse.Namespace) -> int:
    """`tevia train`: 0 on success, 2 with a logged message on bad input (config, data or --init model)."""
    from tevia.checkpoint import CheckpointError
    from tevia.commands.cli import report_error

    try:
        config = load_config(args.config, args.overrides)
        train(config, resume=args.resume, init=args.init)
    except (ValueError, FileNotFoundError, CheckpointError) as err:
        return report_error("train", err, log)
    return 0
