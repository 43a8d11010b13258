"""Training recipes for the bundled QaTa model, compared under stated budgets (issue 16).

Every recipe is `configs/default-qata.yaml` plus a few overrides (RECIPES below), trained with
`tevia train` into runs/recipes/<name> and measured with `tevia evaluate` on all of QaTa
val.csv (1429 X-rays, masks at 224 x 224, the model card's setting) with the image's own
description (`given`) and with an empty prompt (`empty`: what the text is worth). The
`e9` row is the bundled model itself (the same recipe, 9 epochs, seed 0): evaluation only.

Each step is its own process (OMP_NUM_THREADS and train.threads 2); its CPU minutes (user +
system of the children) and wall minutes are recorded. Results go to bench/recipes.json after
every step; a step already there is skipped (delete its entry to redo it). A run folder that
already holds a model (trained outside this script, e.g. resumed across sessions) is measured
as it is, its training cost taken from the run's log timestamps when the script did not time it.

Usage (from the repository root):
    nohup python bench/bench_recipes.py --recipes e30 e9-fidelity > runs/recipes.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from datetime import datetime
from pathlib import Path

from bench_ct_finetune import ROOT, _run

log = logging.getLogger("bench_recipes")

CONFIG = "configs/default-qata.yaml"
QATA = "../shared/data/qata-cov19"
BUNDLED = "TeViASegment/Resources/Models/default"
# The reference code's behaviour for every key where the project differs (docs/FIDELITY.md),
# except its 21-epoch prototype warm-up, which does not fit a 9-epoch budget (the config's 3 is kept).
FIDELITY = ["model.text_projection_gelu=true", "model.attention_output_norms=true", "model.text_key_positions=true",
            "model.position_codes=1d", "model.up_block=basic", "model.head_activation=none",
            "model.foreground_pooling=resize", "model.prototype_range_eps=add", "model.pixel_normalisation=per_image",
            "train.loss=dice", "train.alignment_skip_empty=false", "train.augmentation=zoom",
            "train.checkpoint_monitor=val_loss"]
LONG = ["train.max_epochs=30", "train.early_stopping_patience=30", "train.prototype_warmup_epochs=5"]
# name: (what it changes, overrides of configs/default-qata.yaml)
RECIPES: dict[str, tuple[str, list[str]]] = {
    "e9": ("the bundled model 0.2.0 (9 epochs, seed 0)", []),
    "e9-fidelity": ("9 epochs, every reference behaviour that fits the budget", FIDELITY),
    "e30": ("30 epochs (cosine to the end), warm-up 5, seed 0", LONG),
    "e9-s1": ("the bundled recipe with seed 1", ["train.seed=1"]),
    "e9-s2": ("the bundled recipe with seed 2", ["train.seed=2"]),
    "e30-s1": ("30 epochs, seed 1", LONG + ["train.seed=1"]),
    "e30-s2": ("30 epochs, seed 2", LONG + ["train.seed=2"]),
    "e9-ref-model": ("9 epochs, the reference's architecture keys only (model.*)",
                     [o for o in FIDELITY if o.startswith("model.")]),
    "e9-ema": ("9 epochs, EMA of the weights (decay 0.999)", ["train.ema_decay=0.999"]),
    "e9-lite0": ("9 epochs, EfficientNet-Lite0 in place of MobileNetV2", []),
    "e9-hflip": ("9 epochs, left-right flips with the side words swapped (train.horizontal_flip)",
                 ["train.horizontal_flip=true"]),
    "e9-224": ("9 epochs, input 224 x 224 in place of 128 x 128", ["model.image_size=[224,224]"]),
}
# Recipes that start from another config than CONFIG.
CONFIGS = {"e9-lite0": "configs/default-qata-lite0.yaml"}
THREADS = 2
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+ ")


def logged_minutes(log_file: Path) -> dict[str, float] | None:
    """Wall minutes between the first and the last timestamped line of a training log."""
    if not log_file.is_file():
        return None
    stamps = [datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")
              for m in map(STAMP.match, log_file.read_text(errors="replace").splitlines()) if m]
    return {"wall_minutes": round((stamps[-1] - stamps[0]).total_seconds() / 60, 1)} if len(stamps) > 1 else None


def evaluate(model: str, out: Path, text_mode: str) -> dict[str, float]:
    """`tevia evaluate` on all of QaTa val; the card's figures (HD95 only with the given text)."""
    _run([sys.executable, "-m", "tevia", "evaluate", "--model", model, "--data", QATA, "--split", "val",
          "--out", str(out), "--text-mode", text_mode, *(["--no-hd95"] if text_mode != "given" else [])], THREADS)
    metrics = json.loads((out / "metrics.json").read_text())
    keys = ["dice_global", "dice_mean", "iou_global", "iou_mean"] + (["hd95_mean"] if text_mode == "given" else [])
    return {key: round(metrics[key], 4) for key in keys} | {"n": metrics["n"]}


def model_facts(folder: Path) -> dict[str, object]:
    """Size on disk, number of stored values (weights and buffers) and the training metrics of model.json."""
    from safetensors.torch import load_file

    values = sum(tensor.numel() for tensor in load_file(str(folder / "model.safetensors")).values())
    trained = json.loads((folder / "model.json").read_text()).get("metrics", {})
    return {"model_mb": round((folder / "model.safetensors").stat().st_size / 2**20, 1), "stored_values": values,
            "epochs_run": trained.get("epochs"), "selected": trained.get("best_checkpoint") or trained.get("selected_epoch")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    parser.add_argument("--out", default="bench/recipes.json")
    parser.add_argument("--runs-dir", default="runs/recipes")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result_path, runs = ROOT / args.out, ROOT / args.runs_dir
    results = json.loads(result_path.read_text()) if result_path.is_file() else {
        "what": __doc__.split("\n\n")[1].replace("\n", " "), "config": CONFIG, "recipes": {}}

    def save() -> None:
        result_path.write_text(json.dumps(results, indent=2) + "\n")

    for name in args.recipes:
        if name in results["recipes"]:
            continue
        what, overrides = RECIPES[name]
        out = runs / name
        case: dict[str, object] = {"what": what, "overrides": overrides}
        if name == "e9":
            model = ROOT / BUNDLED
        else:
            model = out / "model"
            config = CONFIGS.get(name, CONFIG)
            command = [sys.executable, "-m", "tevia", "train", "--config", config, *overrides,
                       f"train.out_dir={out}", "train.threads=2"]
            case["command"] = "tevia train --config " + " ".join([config, *overrides])
            if (model / "model.json").is_file():
                case["train"] = logged_minutes(ROOT / "runs" / f"{name}.log") or logged_minutes(out.with_suffix(".log"))
            else:
                if (out / "checkpoints" / "last.ckpt").is_file():
                    command.append("--resume")
                case["train"] = _run(command, THREADS)
        case.update(model_facts(model))
        case["given"] = evaluate(str(model), out / "eval-given", "given")
        case["empty"] = evaluate(str(model), out / "eval-empty", "empty")
        case["text_gain_dice_global"] = round(case["given"]["dice_global"] - case["empty"]["dice_global"], 4)
        results["recipes"][name] = case
        save()
    log.info("wrote %s", result_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
